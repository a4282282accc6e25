"""The warm Python path: long-lived zygote interpreters inside nsjail that fork a child per run.

Each zygote is one nsjail sandbox built exactly like a cold run's (same namespaces, unprivileged
uid/gid 65534, read-only system binds, private size-capped /tmp, no network, environment from
scratch, cgroup v1 memory/pids/cpu limits for the jail where writable) with the cold seccomp
policy plus SysV IPC and POSIX message queues denied (the only kernel objects that outlive a
process inside a jail and cannot be enumerated and removed from inside it). Inside,
``_zygote.py`` (trusted code; it never runs user code) forks one fresh child per run. The
child, before any user code: starts a new session, gets fresh stdin/stdout/stderr pipes from
the host (passed over a unix socket), reads its request from a pipe of its own, closes every
other fd, sets rlimits (address space, CPU, file size, open files, processes, no core), chdirs
to the empty /tmp and builds its environment from scratch.

Why runs cannot see each other (a warm run starts from a state indistinguishable from a fresh
one): a zygote runs one child at a time and never holds a run's data (the child reads its code,
environment and limits itself from a pipe after the fork; stdin and output go over pipes between
the child and the host). After a run the zygote (pid 1 of the jail's pid namespace) kills and
reaps every other process in the jail (daemons too), a throwaway process empties /tmp (any
depth, any path length, any modes) and restores its mode, and the zygote checks that /tmp holds
no inode and no block and that its own inheritable attributes (nice, scheduler, CPU affinity,
I/O priority, rlimits), which a same-uid process could change, are as they were. If it cannot
prove that, the run's result still stands and the zygote is replaced. A child cannot change the
zygote otherwise: it is not dumpable (no /proc/1/mem), ptrace and process_vm_* are denied by
seccomp, and init drops signals from inside its namespace (the zygote installs no handler). A
run that still ends or wedges its zygote only ends that zygote: the host reports the run and
starts a new zygote for the next one. Concurrent runs use different zygotes (a pool). What
stays shared is numbers, not content: pids count up across runs, and the interpreter start-up
state below.

Limits hold for the run as a whole where cgroup v1 is writable (root): the zygote lives in
per-run memory, pids and cpuacct cgroups (``_runcgroup.py``), so every child and every process
it creates starts in them; limits are set and counters reset before each run. ``memory_mb`` is
the run cgroup's limit (an OOM kill in it gives ``memory``; ``peak_memory_mb`` is the run's
peak), ``pids`` its process limit, and the host reads the run's CPU time while it runs and stops
it at ``cpu_s`` (``timeout``; read every 50 ms, so a run may overshoot by that much per core; a
spawned session has a watcher thread). RLIMIT_CPU, RLIMIT_FSIZE and RLIMIT_NOFILE also apply
per process as in a cold run; wall time is enforced by the zygote (SIGKILL of the child's group,
then of everything) with a host-side backstop that ends the whole jail. Without writable
cgroups, memory (RLIMIT_AS) and pids (RLIMIT_NPROC) hold per process only and the run's CPU
time (all its processes) is checked after it ends; the result's ``message`` says so. Statuses
come only from facts the code cannot write: the wait status the zygote reports over its own
channel, cgroup counters and the host's timers, never from the code's output.

Interpreter start-up state is the zygote's: the ``str`` hash seed is shared by all runs of a
zygote, ``PYTHON*`` variables in ``spec.env`` cannot take effect (such specs run cold), and
modules the zygote preloaded (json, re, typing, ...) are already imported (``random`` is
reseeded in every child).

Specs that are not plain Python code within the pool limits (argv, a workspace, input files,
network, ``PYTHON*`` env, limits above the pool's) run on the cold :class:`NsjailBackend`.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import selectors
import signal
import socket
import struct
import subprocess
import threading
import time
import weakref
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from revex.errors import SandboxError
from revex.runtime.sandbox import _common, _runcgroup
from revex.runtime.sandbox._supervise import Supervised, feed
from revex.runtime.sandbox.base import ExecResult, ExecSpec, ExecStatus, Limits
from revex.runtime.sandbox.nsjail import SECCOMP_POLICY, NsjailBackend

ZYGOTE_SOURCE = (Path(__file__).parent / "_zygote.py").read_text()
#: The cold policy plus SysV IPC and POSIX message queues (objects that would outlive a run).
WARM_SECCOMP_POLICY = SECCOMP_POLICY.replace(
    "ERRNO(1) { ",
    "ERRNO(1) { shmget, shmat, shmdt, shmctl, msgget, msgsnd, msgrcv, msgctl, semget, semop, "
    "semctl, semtimedop, mq_open, mq_unlink, mq_timedsend, mq_timedreceive, mq_notify, "
    "mq_getsetattr, ", 1)
DEFAULT_POOL_LIMITS = Limits(memory_mb=512, pids=64, fsize_mb=64, nofile=256, tmpfs_mb=64)
_ZYGOTE_MEM_OVERHEAD_MB = 64
_START_TIMEOUT_S = 15.0
_BACKSTOP_S = 2.0
_DRAIN_S = 1.0
_CHUNK = 65536
_CPU_POLL_S = 0.05


class _ZygoteGone(Exception):
    """The zygote ended or broke the protocol."""


def _set_opt(argv: list[str], opt: str, value: str) -> None:
    i = argv.index(opt, 0, argv.index("--"))
    argv[i + 1] = value


class _Zygote:
    """One jailed zygote, its control socket and its per-run cgroups. One run at a time."""

    def __init__(self, cold: NsjailBackend, pool: Limits) -> None:
        self.mem_parent: str | None = None
        self.cg: _runcgroup.RunCgroups | None = None
        self.zygote_pid = 0
        jail = replace(pool, memory_mb=pool.memory_mb + _ZYGOTE_MEM_OVERHEAD_MB,
                       pids=pool.pids + 2, wall_s=10.0, cpu_s=10.0)  # + zygote and its cleaner
        if cold.cgroups:
            try:
                self.mem_parent = _runcgroup.new_memory_parent(jail.memory_mb << 20)
            except OSError as exc:
                raise SandboxError(f"cannot create the zygote's memory cgroup: {exc}") from exc
        spec = ExecSpec(code=ZYGOTE_SOURCE, limits=jail)
        argv = cold._argv(spec, _common.command(spec, cold.python, None),
                          _common.build_env(spec), "/tmp", [], self.mem_parent,
                          seccomp=WARM_SECCOMP_POLICY)
        _set_opt(argv, "-t", "0")  # lives until closed
        _set_opt(argv, "--rlimit_cpu", "inf")  # each child sets its own limits
        _set_opt(argv, "--rlimit_as", "inf")
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._buf = bytearray()
        try:
            self.proc = subprocess.Popen(argv, stdin=theirs.fileno(), stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, close_fds=True, env={})
        except OSError as exc:
            self.sock.close()
            self._remove_cgroups()
            raise SandboxError(f"cannot start nsjail: {exc}") from exc
        finally:
            theirs.close()
        try:
            hello = self.recv(_START_TIMEOUT_S)
            self.zygote_pid = _only_child(self.proc.pid)
            if self.mem_parent is not None:
                # The zygote lives in the run cgroups, so every child it forks starts in them
                # (no move per run); counters are reset before each run.
                self.cg = _runcgroup.RunCgroups(self.mem_parent, self.zygote_pid)
                self.cg.create()
                self.cg.adopt(self.zygote_pid)
        except (_ZygoteGone, OSError) as exc:
            err = self._stderr_tail()
            self.close()
            raise SandboxError(f"the warm zygote did not start: {exc}: {err}") from exc
        self.vsz = int(hello.get("vsz", 0))

    # -- control channel --------------------------------------------------------------------
    def recv(self, timeout: float | None) -> dict[str, Any]:
        """The next JSON message; raises :class:`_ZygoteGone` on EOF, garbage or timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise _ZygoteGone("no message in time")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(_CHUNK)
            except TimeoutError as exc:
                raise _ZygoteGone("no message in time") from exc
            except OSError as exc:
                raise _ZygoteGone(f"control socket: {exc}") from exc
            if not chunk:
                raise _ZygoteGone("the zygote exited")
            self._buf += chunk
        try:
            return _common.take_json_line(self._buf)
        except ValueError as exc:
            raise _ZygoteGone("malformed message") from exc

    def has_message(self) -> bool:
        return b"\n" in self._buf

    def start(self, spec: ExecSpec, vsz: int) -> tuple[int, int, int]:
        """Start ``spec``: set the run cgroups' limits, have the zygote fork a child, and hand
        the child its request (code, env, limits) over a pipe the zygote never reads. Return
        the host ends (stdin writer, stdout reader, stderr reader)."""
        lim = spec.limits
        assert spec.code is not None
        # With per-run cgroups the run's memory is the cgroup's to limit and to report (an
        # allocation past it is an OOM kill, a fact); no address-space limit (-1) then, which
        # would turn it into a MemoryError, a text the code could also print.
        body = json.dumps({
            "code": spec.code, "env": _common.build_env(spec),
            "cpu_s": max(1, int(-(-lim.cpu_s // 1))),
            "as_bytes": -1 if self.cg else vsz + (lim.memory_mb << 20),
            "fsize": lim.fsize_mb << 20, "nofile": lim.nofile, "nproc": lim.pids + 1,
        }).encode()
        try:
            if self.cg is not None:
                self.cg.prepare(lim.memory_mb << 20, lim.pids + 1)  # + the zygote
        except OSError as exc:
            raise _ZygoteGone(f"cannot set the run's cgroup limits: {exc}") from exc
        req_r, req_w = os.pipe()
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        mine = (in_w, out_r, err_r)
        try:
            try:
                self.sock.settimeout(None)
                socket.send_fds(self.sock, [b"R" + struct.pack(">d", lim.wall_s)],
                                [req_r, in_r, out_w, err_w])
            finally:
                for fd in (req_r, in_r, out_w, err_w):
                    os.close(fd)
            view = memoryview(body)
            while view:  # EPIPE if the zygote died before its child could read it
                view = view[os.write(req_w, view):]
        except OSError as exc:
            for fd in mine:
                os.close(fd)
            raise _ZygoteGone(f"cannot start the run: {exc}") from exc
        finally:
            os.close(req_w)
        return mine

    def stop_run(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.send(b"k")

    # -- lifecycle --------------------------------------------------------------------------
    def alive(self) -> bool:
        return self.proc.poll() is None

    def _stderr_tail(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        with contextlib.suppress(OSError):
            return self.proc.stderr.read()[-2000:].decode("utf-8", "replace")
        return ""

    def close(self) -> None:
        """End the jail (nsjail kills everything in it on SIGTERM) and remove its cgroups,
        also those nsjail could not remove (they are named after the zygote's pid)."""
        with contextlib.suppress(OSError):
            self.sock.close()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self._remove_cgroups()

    def _remove_cgroups(self) -> None:
        if self.mem_parent is not None or self.zygote_pid:
            _runcgroup.RunCgroups(self.mem_parent, self.zygote_pid).remove()
        self.mem_parent = None
        self.cg = None


def _only_child(pid: int) -> int:
    """The host pid of the one child of ``pid`` (nsjail's: the zygote). Raises ``OSError`` if
    there is not exactly one."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        kids = f.read().split()
    if len(kids) != 1:
        raise OSError(f"expected one child of pid {pid}, found {len(kids)}")
    return int(kids[0])


def remove_orphaned_cgroups() -> int:
    """Remove cgroups of warm pools whose owner (or zygote) died without closing them; return
    how many directories were removed. For start-up and ``revex gc``; never raises for a busy
    directory. Live pools are never touched."""
    return _runcgroup.remove_orphaned()


@dataclass
class _Done:
    status: int | None
    rusage: resource.struct_rusage | None
    timed_out: bool
    zygote_ok: bool  # the zygote reported the run
    clean: bool = False  # ... and proved the jail as fresh as before it


def _done_from(msg: dict[str, Any]) -> _Done:
    ru = resource.struct_rusage((float(msg["utime"]), float(msg["stime"]), int(msg["maxrss_kb"]),
                                 *([0] * 13)))
    return _Done(int(msg["done"]), ru, bool(msg.get("timed_out")), True, msg.get("clean") is True)


class WarmSpawned:
    """A warm run whose pipes the caller drives (see ``Spawned`` in base). The zygote ends it at
    ``wall_s``; a watcher thread ends it once all its processes used ``cpu_s`` (per-run cgroups
    only). :meth:`close` stops the run, waits until the zygote reports it clean, and gives the
    zygote back."""

    def __init__(self, backend: WarmPythonBackend, zygote: _Zygote,
                 fds: tuple[int, int, int], cpu_s: float) -> None:
        self._backend, self._zygote = backend, zygote
        self.stdin, self.stdout, self.stderr = fds
        self._lock = threading.Lock()
        self._closed = False
        self._ended = threading.Event()
        self._watcher: threading.Thread | None = None
        if zygote.cg is not None:
            self._watcher = threading.Thread(target=self._watch_cpu, args=(cpu_s,), daemon=True)
            self._watcher.start()

    def _watch_cpu(self, cpu_s: float) -> None:
        while not self._ended.wait(_CPU_POLL_S):
            if _cpu_used(self._zygote) >= cpu_s:
                self._zygote.stop_run()
                return

    def close(self) -> None:
        """Stop, clean up and release; idempotent and thread-safe."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._ended.set()
        if self._watcher is not None:
            self._watcher.join()  # it must not touch the zygote once it serves another run
        healthy = False
        try:
            self._zygote.stop_run()
            msg = self._zygote.recv(_BACKSTOP_S + 3.0)
            healthy = "done" in msg and msg.get("clean") is True
        except _ZygoteGone:
            healthy = False
        finally:
            for fd in (self.stdin, self.stdout, self.stderr):
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._backend._release(self._zygote, healthy)

    def __enter__(self) -> WarmSpawned:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close_zygotes(idle: list[_Zygote]) -> None:
    while idle:
        idle.pop().close()


class WarmPythonBackend:
    """Runs Python code in forked children of pre-started jailed zygotes (see the module doc).

    ``size``: how many idle zygotes to keep (0: one per CPU); more are started on demand when
    more runs are in flight, so concurrency is never capped by the pool. ``pool_limits``: the
    largest limits a warm run may ask for (and the zygote cgroup's size); other specs run cold
    on ``cold`` (a :class:`NsjailBackend`, made here when not given). Thread-safe. Call
    :meth:`close` (or use ``with``) to end the zygotes.
    Raises ``SandboxError`` if nsjail is unusable here.
    """

    name = "nsjail-warm"

    def __init__(self, *, size: int = 0, pool_limits: Limits = DEFAULT_POOL_LIMITS,
                 cold: NsjailBackend | None = None, use_cgroups: bool | None = None) -> None:
        self.cold = cold if cold is not None else NsjailBackend(use_cgroups=use_cgroups)
        self.size = size or os.cpu_count() or 1
        self.pool_limits = pool_limits
        self._idle: list[_Zygote] = []
        self._busy: set[_Zygote] = set()
        self._lock = threading.Lock()
        self._closed = False
        # a pool nobody closed still ends its jails when collected or at interpreter exit
        self._finalizer = weakref.finalize(self, _close_zygotes, self._idle)

    # -- pool -------------------------------------------------------------------------------
    def prestart(self, n: int = 0) -> None:
        """Start zygotes until ``n`` (0: ``size``) are idle. Raises ``SandboxError``."""
        want = n or self.size
        while True:
            with self._lock:
                if len(self._idle) >= want:
                    return
            z = _Zygote(self.cold, self.pool_limits)
            with self._lock:
                self._idle.append(z)

    def _acquire(self) -> _Zygote:
        with self._lock:
            if self._closed:
                raise SandboxError("the warm backend is closed")
            while self._idle:
                z = self._idle.pop()
                if z.alive():
                    self._busy.add(z)
                    return z
                z.close()
        z = _Zygote(self.cold, self.pool_limits)
        with self._lock:
            self._busy.add(z)
        return z

    def _release(self, z: _Zygote, healthy: bool) -> None:
        with self._lock:
            self._busy.discard(z)
            keep = healthy and not self._closed and z.alive() and len(self._idle) < self.size
            if keep:
                self._idle.append(z)
        if not keep:
            z.close()

    def close(self) -> None:
        """End every zygote (idle ones now, busy ones when their run returns). Idempotent."""
        with self._lock:
            self._closed = True
            idle = list(self._idle)
            self._idle.clear()
        for z in idle:
            z.close()

    def __enter__(self) -> WarmPythonBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def eligible(self, spec: ExecSpec) -> bool:
        """Whether ``spec`` can run warm (plain Python code within the pool's limits)."""
        lim, pool = spec.limits, self.pool_limits
        return (spec.code is not None and spec.argv is None
                and spec.language in ("python", "python3") and spec.workspace is None
                and not spec.files and not spec.network
                and not any(k.startswith("PYTHON") for k in spec.env)
                and lim.memory_mb <= pool.memory_mb and lim.pids <= pool.pids
                and lim.fsize_mb <= pool.fsize_mb and lim.nofile <= pool.nofile
                and lim.tmpfs_mb <= pool.tmpfs_mb)

    # -- runs -------------------------------------------------------------------------------
    def spawn(self, spec: ExecSpec) -> WarmSpawned | _common.SpawnedProcess:
        """Start ``spec`` and hand over its pipes (cold when not :meth:`eligible`).

        Raises ``ConfigError`` for a malformed spec and ``SandboxError`` if no zygote works.
        """
        if not self.eligible(spec):
            return self.cold.spawn(spec)
        _common.build_env(spec)  # validates the environment (ConfigError)
        z = self._acquire()
        try:
            fds = z.start(spec, z.vsz)
        except _ZygoteGone as exc:
            self._release(z, False)
            raise SandboxError(f"warm zygote failed: {exc}") from exc
        return WarmSpawned(self, z, fds, spec.limits.cpu_s)

    def run(self, spec: ExecSpec) -> ExecResult:
        """Run ``spec`` in a fresh forked child (cold when not :meth:`eligible`).

        Raises ``ConfigError`` for a malformed spec and ``SandboxError`` if no zygote works
        (the code's own failures are statuses).
        """
        if not self.eligible(spec):
            return self.cold.run(spec)
        _common.build_env(spec)
        z = self._acquire()
        healthy = False
        try:
            try:
                fds = z.start(spec, z.vsz)
            except _ZygoteGone as exc:
                raise SandboxError(f"warm zygote failed: {exc}") from exc
            sup, done, cpu_stopped = _supervise(z, fds, spec)
            healthy = done.zygote_ok and done.clean
            usage = _usage(z, done)
        finally:
            self._release(z, healthy)
        return _result(sup, done, spec, usage, cpu_stopped, self.name)


@dataclass
class _Usage:
    cpu_s: float
    peak_mb: float
    oom_kills: int
    per_run: bool  # measured (and limited) by the run's cgroups


def _usage(z: _Zygote, done: _Done) -> _Usage:
    """The run's CPU time, peak memory and OOM kills: from its cgroups (all its processes)
    when it has them, else from the zygote's accounting of every process it reaped."""
    ru = done.rusage
    fallback = _Usage((ru.ru_utime + ru.ru_stime) if ru else 0.0,
                      ru.ru_maxrss / 1024 if ru else 0.0, 0, False)
    if z.cg is None:
        return fallback
    try:
        peak, ooms = z.cg.memory()
        return _Usage(z.cg.cpu_s(), peak / (1 << 20), ooms, True)
    except OSError:
        return fallback


def _result(sup: Supervised, done: _Done, spec: ExecSpec, usage: _Usage, cpu_stopped: bool,
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
        notes.append("no per-run cgroups here: memory_mb and pids held per process, cpu_s "
                     "was checked for the whole run after it ended")
    if not done.zygote_ok and not sup.timed_out and status is not ExecStatus.OK:
        notes.append("the run ended its zygote; a fresh one serves the next run")
    res.message = "; ".join(notes)
    return res


def _read_done(z: _Zygote) -> _Done:
    try:
        msg = z.recv(1.0)
        if "done" not in msg:
            raise _ZygoteGone("protocol violation")
        return _done_from(msg)
    except (_ZygoteGone, KeyError, TypeError, ValueError):
        return _Done(None, None, False, False)


def _supervise(z: _Zygote, fds: tuple[int, int, int],
               spec: ExecSpec) -> tuple[Supervised, _Done, bool]:
    """Feed stdin, collect bounded output, stop the run when all its processes together used
    ``cpu_s`` (read from its cgroup), and wait for the zygote's report of the run. Returns the
    run, the report and whether the CPU limit stopped it."""
    in_w, out_r, err_r = fds
    lim = spec.limits
    start = time.monotonic()
    backstop = start + lim.wall_s + _BACKSTOP_S
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
    done: _Done | None = None
    output_limited = timed_out = cpu_stopped = False
    drain_until: float | None = None
    next_poll = start + _CPU_POLL_S if z.cg is not None else float("inf")
    try:
        while True:
            now = time.monotonic()
            if done is None and now >= next_poll:
                next_poll = now + _CPU_POLL_S
                if not cpu_stopped and z.cg is not None and _cpu_used(z) >= lim.cpu_s:
                    cpu_stopped = True
                    z.stop_run()
            if done is not None and (not (set(sel.get_map()) & set(bufs))
                                     or (drain_until is not None and now > drain_until)):
                break
            if done is None and z.has_message():
                done = _read_done(z)
                sel.unregister(z.sock)
                drain_until = time.monotonic() + _DRAIN_S
                continue
            if done is None and now > backstop:
                # The zygote did not end the run in time: end the whole jail.
                timed_out = True
                sel.unregister(z.sock)
                z.close()
                done = _Done(None, None, True, False)
                drain_until = time.monotonic() + _DRAIN_S
                continue
            timeout = (min(backstop, next_poll) - now if done is None
                       else max(0.0, (drain_until or now) - now))
            for key, _ in sel.select(timeout):
                fd = key.fd
                if key.fileobj is z.sock:
                    done = _read_done(z)
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
                try:
                    data = os.read(fd, _CHUNK)
                except BlockingIOError:
                    continue
                if not data:
                    sel.unregister(fd)
                    continue
                buf = bufs[fd]
                room = lim.output_bytes - len(buf)
                if len(data) > room:
                    buf += data[:max(room, 0)]
                    trunc[fd] = True
                    if not output_limited:
                        output_limited = True
                        z.stop_run()
                else:
                    buf += data
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
    return sup, done, cpu_stopped


def _cpu_used(z: _Zygote) -> float:
    cg = z.cg
    if cg is None:
        return 0.0
    try:
        return cg.cpu_s()
    except OSError:
        return 0.0
