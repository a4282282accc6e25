"""Feed, watch and reap one child process: bounded output, prompt wall-time kill, rusage.

Shared by the nsjail and process backends. Output is read through pipes in 64 KiB chunks and
at most ``output_bytes`` per stream is kept; past that the run is stopped (status
``output_limit``), so a flood never grows our memory. The child is always reaped with
``wait4`` (which also gives the CPU time and peak RSS of the waited-for tree). Given a reader of
the whole run's CPU time (a cgroup counter), the run is also stopped once it used ``cpu_s``
across all of its processes (``cpu_limited``).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import resource
import selectors
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

_CHUNK = 65536
_TICK_S = 0.5  # upper bound between checks; exits wake us via the pidfd
_CPU_TICK_S = 0.05  # between reads of the run's CPU counter: bounds the overshoot
_DRAIN_S = 1.0


@dataclass
class Supervised:
    """What happened to a supervised child."""

    returncode: int
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    timed_out: bool
    output_limited: bool
    wall_s: float
    rusage: resource.struct_rusage | None
    cpu_limited: bool = False  # stopped because the whole run used up its CPU time


def feed(fd: int, pending: memoryview) -> memoryview:
    """Write the next chunk of ``pending`` to a non-blocking pipe; returns what is left
    (nothing once the reader has gone)."""
    try:
        return pending[os.write(fd, pending[:_CHUNK]):]
    except BlockingIOError:
        return pending
    except BrokenPipeError:
        return pending[:0]


def take(fd: int, buf: bytearray, limit: int) -> str:
    """Read one chunk of ``fd`` into ``buf``, keeping at most ``limit`` bytes there: ``"eof"``
    when the writer closed it, ``"over"`` when the chunk did not fit (its rest is dropped),
    else ``"ok"`` (also when nothing was ready)."""
    try:
        data = os.read(fd, _CHUNK)
    except BlockingIOError:
        return "ok"
    if not data:
        return "eof"
    room = limit - len(buf)
    if len(data) > room:
        buf += data[:max(room, 0)]
        return "over"
    buf += data
    return "ok"


def supervise(
    proc: subprocess.Popen[bytes],
    stdin: bytes,
    *,
    wall_s: float,
    output_bytes: int,
    stop: Callable[[], None],
    after_exit: Callable[[], None] | None = None,
    cpu_used: Callable[[], float | None] | None = None,
    cpu_s: float = math.inf,
) -> Supervised:
    """Run ``proc`` to completion under a wall-time, output and (with ``cpu_used``, a reader of
    the whole run's CPU seconds) a per-run CPU limit of ``cpu_s``.

    ``stop`` is called (possibly more than once) to kill the whole run on a timeout, output
    overflow or CPU overrun; ``after_exit`` is called once the main child exited, to end what
    it left behind.
    The child is always reaped before this returns. Raises ``OSError`` only for errors of our
    own pipes other than a closed reader.
    """
    start = time.monotonic()
    deadline = start + wall_s
    assert proc.stdout is not None and proc.stderr is not None and proc.stdin is not None
    sel = selectors.DefaultSelector()
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    bufs = {out_fd: bytearray(), err_fd: bytearray()}
    trunc = {fd: False for fd in bufs}
    for fd in bufs:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    # A pidfd becomes readable when the child exits: no polling latency.
    pidfd = os.pidfd_open(proc.pid)
    sel.register(pidfd, selectors.EVENT_READ)
    pending = memoryview(stdin)
    in_fd = proc.stdin.fileno()
    if pending:
        os.set_blocking(in_fd, False)
        sel.register(in_fd, selectors.EVENT_WRITE)
    else:
        proc.stdin.close()
    timed_out = output_limited = cpu_limited = False
    tick = _TICK_S if cpu_used is None else _CPU_TICK_S
    status: int | None = None
    rusage: resource.struct_rusage | None = None
    stop_at: float | None = None
    try:
        while True:
            now = time.monotonic()
            if status is None:
                pid, st, ru = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    status, rusage = st, ru
                    if after_exit is not None:
                        after_exit()
                    stop_at = stop_at or now + _DRAIN_S
            if status is None and now >= deadline and not timed_out:
                timed_out = True
                stop()
                stop_at = now + _DRAIN_S
            if (status is None and cpu_used is not None and stop_at is None
                    and (cpu_used() or 0.0) > cpu_s):
                cpu_limited = True
                stop()
                stop_at = now + _DRAIN_S
            if status is not None and pidfd in sel.get_map():
                sel.unregister(pidfd)
            if not sel.get_map() and status is not None:
                break
            if stop_at is not None and now > stop_at and status is not None:
                break
            timeout = tick if status is None else max(0.0, (stop_at or now) - now)
            if status is None:
                timeout = min(timeout, max(0.0, deadline - now))
            for key, _ in sel.select(timeout):
                fd = int(key.fd)
                if fd == pidfd:
                    continue  # the wait4 at the top of the loop reaps it
                if fd == in_fd:
                    pending = feed(fd, pending)
                    if not pending:
                        sel.unregister(fd)
                        proc.stdin.close()
                    continue
                got = take(fd, bufs[fd], output_bytes)
                if got == "eof":
                    sel.unregister(fd)
                elif got == "over":
                    trunc[fd] = True
                    if not output_limited and not timed_out and not cpu_limited:
                        output_limited = True
                        stop()
                        stop_at = time.monotonic() + _DRAIN_S
    finally:
        if status is None:
            stop()
            _, status, rusage = _wait_blocking(proc.pid)
        proc.returncode = os.waitstatus_to_exitcode(status)
        for f in (proc.stdin, proc.stdout, proc.stderr):
            with contextlib.suppress(BrokenPipeError):
                f.close()
        sel.close()
        os.close(pidfd)
    return Supervised(
        returncode=proc.returncode,
        stdout=bytes(bufs[out_fd]),
        stderr=bytes(bufs[err_fd]),
        stdout_truncated=trunc[out_fd],
        stderr_truncated=trunc[err_fd],
        timed_out=timed_out,
        output_limited=output_limited,
        wall_s=time.monotonic() - start,
        rusage=rusage,
        cpu_limited=cpu_limited,
    )


def _wait_blocking(pid: int) -> tuple[int, int, resource.struct_rusage]:
    while True:
        try:
            return os.wait4(pid, 0)
        except InterruptedError:
            continue
        except ChildProcessError as exc:  # already reaped elsewhere: should not happen
            raise OSError(errno.ECHILD, f"child {pid} vanished before it was reaped") from exc
