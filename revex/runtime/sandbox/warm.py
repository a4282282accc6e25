"""The warm Python path: long-lived zygote interpreters inside nsjail that fork a child per run.

Each zygote is one nsjail sandbox built exactly like a cold run's (same namespaces, unprivileged
uid/gid 65534, read-only system binds, private size-capped /tmp, no network, environment from
scratch, cgroup v1 memory/pids/cpu limits where writable) with the cold seccomp policy plus SysV
IPC and POSIX message queues denied (the only kernel objects that outlive a process inside a
jail and cannot be enumerated and removed from inside it). Inside, ``_zygote.py`` (trusted code;
it never runs user code) forks one fresh child per run. The child, before any user code:
starts a new session, gets fresh stdin/stdout/stderr pipes from the host (passed over a unix
socket), closes every other fd, sets rlimits (address space, CPU, file size, open files,
processes, no core), chdirs to an empty /tmp and builds its environment from scratch.

Why runs cannot see each other: a zygote runs one child at a time; after it, the zygote (pid 1
of the jail's pid namespace) kills and reaps every other process in the jail (daemons too) and
empties /tmp, so the next child starts from the zygote's pristine memory (fork) and an empty
/tmp. A child cannot change the zygote: it is not dumpable (no /proc/1/mem), ptrace and
process_vm_* are denied by seccomp, init ignores SIGKILL/SIGSTOP from inside its namespace and
installs no handlers. A run that still manages to kill or wedge its zygote (e.g. by exhausting
the pool cgroup's memory) only ends that zygote: the host sees it, reports the run, and starts a
new zygote for the next one. Concurrent runs use different zygotes (a pool).

Limits, and how they differ from a cold run:
* memory: RLIMIT_AS per child (``memory_mb`` on top of the address space inherited from the
  zygote) plus the zygote's cgroup (``pool_limits.memory_mb`` + a small overhead) for the
  child's whole process tree; a cold run's cgroup is exactly ``memory_mb``.
* pids: RLIMIT_NPROC per child (``pids`` + 1, the zygote) and the pool's cgroup.
* cpu, fsize, nofile: rlimits per child, as in a cold run; wall time is enforced by the zygote
  (SIGKILL of the child's group, then of everything) with a host-side backstop that ends the
  whole jail.
* Interpreter start-up state is the zygote's: the ``str`` hash seed is shared by all runs of a
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
from revex.runtime.sandbox import _cgroup, _common
from revex.runtime.sandbox._supervise import Supervised, feed
from revex.runtime.sandbox.base import ExecResult, ExecSpec, ExecStatus, Limits
from revex.runtime.sandbox.nsjail import SECCOMP_POLICY, NsjailBackend, _strip_nsjail_log

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


class _ZygoteGone(Exception):
    """The zygote ended or broke the protocol."""


def _set_opt(argv: list[str], opt: str, value: str) -> None:
    i = argv.index(opt, 0, argv.index("--"))
    argv[i + 1] = value


class _Zygote:
    """One jailed zygote and its control socket. Used by one run at a time."""

    def __init__(self, cold: NsjailBackend, pool: Limits) -> None:
        self.mem: _cgroup.MemoryCgroup | None = None
        jail = replace(pool, memory_mb=pool.memory_mb + _ZYGOTE_MEM_OVERHEAD_MB,
                       pids=pool.pids + 1, wall_s=10.0, cpu_s=10.0)
        if cold.cgroups:
            try:
                self.mem = _cgroup.MemoryCgroup.create(jail.memory_mb << 20)
            except OSError as exc:
                raise SandboxError(f"cannot create the zygote's memory cgroup: {exc}") from exc
        spec = ExecSpec(code=ZYGOTE_SOURCE, limits=jail)
        argv = cold._argv(spec, _common.command(spec, cold.python, None),
                          _common.build_env(spec), "/tmp", [],
                          self.mem.name if self.mem else None, seccomp=WARM_SECCOMP_POLICY)
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
            self._remove_cgroup()
            raise SandboxError(f"cannot start nsjail: {exc}") from exc
        finally:
            theirs.close()
        try:
            hello = self.recv(_START_TIMEOUT_S)
        except _ZygoteGone as exc:
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
        """Send ``spec``; return the host ends (stdin writer, stdout reader, stderr reader)."""
        lim = spec.limits
        assert spec.code is not None
        req = {
            "code": spec.code, "env": _common.build_env(spec), "wall_s": lim.wall_s,
            "cpu_s": max(1, int(-(-lim.cpu_s // 1))), "as_bytes": vsz + (lim.memory_mb << 20),
            "fsize": lim.fsize_mb << 20, "nofile": lim.nofile, "nproc": lim.pids + 1,
        }
        body = json.dumps(req).encode()
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            self.sock.settimeout(None)
            socket.send_fds(self.sock, [b"R"], [in_r, out_w, err_w])
            self.sock.sendall(struct.pack(">I", len(body)) + body)
        except OSError as exc:
            for fd in (in_w, out_r, err_r):
                os.close(fd)
            raise _ZygoteGone(f"cannot start the run: {exc}") from exc
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        return in_w, out_r, err_r

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
        """End the jail (nsjail kills everything in it on SIGTERM) and remove its cgroup."""
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
        _cgroup.remove_leftovers(self.proc.pid)
        self._remove_cgroup()

    def _remove_cgroup(self) -> None:
        if self.mem is not None:
            self.mem.remove()
            self.mem = None


@dataclass
class _Done:
    status: int | None
    rusage: resource.struct_rusage | None
    timed_out: bool
    zygote_ok: bool


def _done_from(msg: dict[str, Any]) -> _Done:
    ru = resource.struct_rusage((float(msg["utime"]), float(msg["stime"]), int(msg["maxrss_kb"]),
                                 *([0] * 13)))
    return _Done(int(msg["done"]), ru, bool(msg.get("timed_out")), True)


class WarmSpawned:
    """A warm run whose pipes the caller drives (see ``Spawned`` in base). :meth:`close` stops
    the run, waits until the zygote reports it clean, and gives the zygote back."""

    def __init__(self, backend: WarmPythonBackend, zygote: _Zygote,
                 fds: tuple[int, int, int]) -> None:
        self._backend, self._zygote = backend, zygote
        self.stdin, self.stdout, self.stderr = fds
        self._lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        """Stop, clean up and release; idempotent and thread-safe."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        healthy = False
        try:
            self._zygote.stop_run()
            msg = self._zygote.recv(_BACKSTOP_S + 3.0)
            healthy = "done" in msg
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
        return WarmSpawned(self, z, fds)

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
        before = z.mem.read()[1] if z.mem else 0
        try:
            try:
                fds = z.start(spec, z.vsz)
            except _ZygoteGone as exc:
                raise SandboxError(f"warm zygote failed: {exc}") from exc
            sup, done = _supervise(z, fds, spec)
            healthy = done.zygote_ok
            ooms = (z.mem.read()[1] - before) if z.mem else 0
        finally:
            self._release(z, healthy)
        res = _common.to_result(
            sup, spec, self.name,
            oom=sup.returncode == -signal.SIGKILL and ooms > 0 and not sup.timed_out)
        if not done.zygote_ok and not sup.timed_out and res.status is not ExecStatus.OK:
            res.message = "the run ended its zygote; a fresh one serves the next run"
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
               spec: ExecSpec) -> tuple[Supervised, _Done]:
    """Feed stdin, collect bounded output and wait for the zygote's report of the run."""
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
    output_limited = timed_out = False
    drain_until: float | None = None
    try:
        while True:
            now = time.monotonic()
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
            timeout = (backstop - now) if done is None else max(0.0, (drain_until or now) - now)
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
        stderr=_strip_nsjail_log(bytes(bufs[err_r])),
        stdout_truncated=trunc[out_r], stderr_truncated=trunc[err_r],
        timed_out=timed_out or (done.timed_out and not output_limited),
        output_limited=output_limited, wall_s=time.monotonic() - start, rusage=done.rusage)
    return sup, done
