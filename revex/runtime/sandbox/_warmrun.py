"""Supervision of one warm run on the host, and its result (private to the warm backend).

The host feeds stdin, keeps bounded output, stops the run when all its processes together used
``cpu_s`` (read from the run's cgroup), waits for the zygote's report, and turns facts the code
cannot write (its wait status, cgroup counters, timers) into the run's status.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import time
from dataclasses import dataclass

from revex.runtime.sandbox import _common
from revex.runtime.sandbox._supervise import Supervised, feed, take
from revex.runtime.sandbox._warmzygote import Done, Zygote, cpu_used, read_done
from revex.runtime.sandbox.base import ExecResult, ExecSpec, ExecStatus

BACKSTOP_S = 2.0
CPU_POLL_S = 0.05
_DRAIN_S = 1.0
_CHUNK = 65536


@dataclass
class Usage:
    cpu_s: float
    peak_mb: float
    oom_kills: int
    per_run: bool  # measured (and limited) by the run's cgroups


def usage_of(z: Zygote, done: Done) -> Usage:
    """The run's CPU time, peak memory and OOM kills: from its cgroups (all its processes)
    when it has them, else from the zygote's accounting of every process it reaped."""
    ru = done.rusage
    fallback = Usage((ru.ru_utime + ru.ru_stime) if ru else 0.0,
                     ru.ru_maxrss / 1024 if ru else 0.0, 0, False)
    if z.cg is None:
        return fallback
    try:
        peak, ooms = z.cg.memory()
        return Usage(z.cg.cpu_s(), peak / (1 << 20), ooms, True)
    except OSError:
        return fallback


def result_of(sup: Supervised, done: Done, spec: ExecSpec, usage: Usage, cpu_stopped: bool,
              backend: str) -> ExecResult:
    """The run's result; its status from facts the code cannot write (its wait status as the
    zygote reported it, cgroup counters, the host's and the zygote's timers), never from its
    output."""
    code = sup.returncode
    if sup.timed_out:
        status = ExecStatus.TIMEOUT
    elif sup.output_limited:
        status = ExecStatus.OUTPUT_LIMIT
    elif usage.oom_kills > 0:
        status = ExecStatus.MEMORY
    elif cpu_stopped or usage.cpu_s >= spec.limits.cpu_s or code == -signal.SIGXCPU:
        status = ExecStatus.TIMEOUT
    elif code == 0:
        status = ExecStatus.OK
    elif code < 0:
        status = ExecStatus.KILLED
    else:
        status = ExecStatus.FAILED
    res = _common.to_result(sup, spec, backend, peak_mb=usage.peak_mb)
    res.status = status
    res.exit_code, res.signal = (code, None) if code >= 0 else (None, -code)
    res.cpu_s = usage.cpu_s
    notes = []
    if not usage.per_run:
        notes.append("no per-run cgroups here: memory_mb held per process, cpu_s was "
                     "checked for the whole run after it ended")
    if not done.zygote_ok and not sup.timed_out and status is not ExecStatus.OK:
        notes.append("the run ended its zygote; a fresh one serves the next run")
    res.message = "; ".join(notes)
    return res


def supervise(z: Zygote, fds: tuple[int, int, int],
              spec: ExecSpec) -> tuple[Supervised, Done, bool, Usage]:
    """Feed stdin, collect bounded output, stop the run when all its processes together used
    ``cpu_s`` (read from its cgroup), and wait for the zygote's report of the run. Returns the
    run, the report, whether the CPU limit stopped it, and its usage (read as the report
    arrives, before the zygote's cleanup adds to the counters)."""
    in_w, out_r, err_r = fds
    lim = spec.limits
    start = time.monotonic()
    backstop = start + lim.wall_s + BACKSTOP_S
    bufs = {out_r: bytearray(), err_r: bytearray()}
    trunc = {out_r: False, err_r: False}
    sel = selectors.DefaultSelector()
    for fd in (out_r, err_r):
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    sel.register(z.sock, selectors.EVENT_READ)
    pending = memoryview(spec.stdin)
    if pending:
        os.set_blocking(in_w, False)
        sel.register(in_w, selectors.EVENT_WRITE)
    else:
        os.close(in_w)
        in_w = -1
    done: Done | None = None
    usage: Usage | None = None
    output_limited = timed_out = cpu_stopped = False
    drain_until: float | None = None
    next_poll = start + CPU_POLL_S if z.cg is not None else float("inf")
    try:
        while True:
            now = time.monotonic()
            if done is None and now >= next_poll:
                next_poll = now + CPU_POLL_S
                if not cpu_stopped and z.cg is not None and cpu_used(z) >= lim.cpu_s:
                    cpu_stopped = True
                    z.stop_run()
            if done is not None and (not (set(sel.get_map()) & set(bufs))
                                     or (drain_until is not None and now > drain_until)):
                break
            if done is None and z.has_message():
                done = read_done(z)
                usage = usage_of(z, done)
                sel.unregister(z.sock)
                drain_until = time.monotonic() + _DRAIN_S
                continue
            if done is None and now > backstop:
                # The zygote did not end the run in time: end the whole jail.
                timed_out = True
                sel.unregister(z.sock)
                done = Done(None, None, True, False)
                usage = usage_of(z, done)  # before its cgroups go
                z.close()
                drain_until = time.monotonic() + _DRAIN_S
                continue
            timeout = (min(backstop, next_poll) - now if done is None
                       else max(0.0, (drain_until or now) - now))
            for key, _ in sel.select(timeout):
                fd = key.fd
                if key.fileobj is z.sock:
                    done = read_done(z)
                    usage = usage_of(z, done)
                    sel.unregister(z.sock)
                    drain_until = time.monotonic() + _DRAIN_S
                    continue
                if fd == in_w:
                    pending = feed(fd, pending)
                    if not pending:
                        sel.unregister(fd)
                        os.close(in_w)
                        in_w = -1
                    continue
                got = take(fd, bufs[fd], lim.output_bytes)
                if got == "eof":
                    sel.unregister(fd)
                elif got == "over":
                    trunc[fd] = True
                    if not output_limited:
                        output_limited = True
                        z.stop_run()
    finally:
        sel.close()
        for fd in (in_w, out_r, err_r):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
    code = -signal.SIGKILL if done.status is None else os.waitstatus_to_exitcode(done.status)
    sup = Supervised(
        returncode=code, stdout=bytes(bufs[out_r]),
        stderr=bytes(bufs[err_r]),  # the child's own pipe: nsjail's log never mixes in
        stdout_truncated=trunc[out_r], stderr_truncated=trunc[err_r],
        timed_out=timed_out or (done.timed_out and not output_limited),
        output_limited=output_limited, wall_s=time.monotonic() - start, rusage=done.rusage)
    return sup, done, cpu_stopped, usage if usage is not None else usage_of(z, done)
