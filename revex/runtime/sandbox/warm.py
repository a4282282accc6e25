"""The warm Python path: long-lived zygote interpreters inside nsjail that fork a child per run.

Each zygote is one nsjail sandbox built exactly like a cold run's (same namespaces, unprivileged
uid/gid 65534, read-only system binds, private size-capped /tmp, no network, environment from
scratch, cgroup v1 memory/pids/cpu limits for the jail where writable) with the cold seccomp
policy plus SysV IPC and POSIX message queues denied (the only kernel objects that outlive a
process inside a jail and cannot be enumerated and removed from inside it). Inside,
``_zygote.py`` (trusted code; it never runs user code) forks one fresh child per run, ahead
of the run's request (right after the jail was proven clean), so the fork is off the run's
path. The child, before any user code: starts a new session, chdirs to the empty /tmp, empties
its environment, then waits for the run; it gets fresh stdin/stdout/stderr pipes from the host
(passed over unix sockets), reads its request from a pipe of its own, closes every other fd,
sets rlimits (address space, CPU, file size, open files, processes, no core) and builds its
environment from scratch.

Why runs cannot see each other (a warm run starts from a state indistinguishable from a fresh
one): a zygote runs one child at a time and never holds a run's data (the child reads its code,
environment and limits itself from a pipe after the fork; stdin and output go over pipes
between the child and the host). After a run the zygote (pid 1 of the jail's pid namespace)
kills and reaps every other process in the jail (daemons too), a throwaway process empties /tmp
(any depth, any path length, any modes) and restores its mode, and the zygote checks that /tmp
holds no inode and no block and that its own inheritable attributes (nice, scheduler, CPU
affinity, I/O priority, rlimits), which a same-uid process could change, are as they were. If
it cannot prove that, the run's result still stands and the zygote is replaced. The run's
result is returned as soon as the zygote reported the run; its cleanup report is read before
that zygote serves another run (meanwhile the next run takes another idle zygote, the oldest
first). A child cannot change the zygote otherwise: it is not dumpable (no /proc/1/mem), ptrace
and process_vm_* are denied by seccomp, and init drops signals from inside its namespace (the
zygote installs no handler). A run that still ends or wedges its zygote only ends that zygote:
the host reports the run and starts a new zygote for the next one. Concurrent runs use
different zygotes (a pool). What stays shared is numbers, not content: pids count up across
runs, and the interpreter start-up state below.

Limits hold for the run as a whole where cgroup v1 is writable (root): the zygote lives in
per-run memory, pids and cpuacct cgroups (``_runcgroup.py``), so every child and every process
it creates starts in them; limits are set and counters reset before each run. ``memory_mb`` is
the run cgroup's limit (an OOM kill in it gives ``memory``; ``peak_memory_mb`` is the run's
peak), ``pids`` its process limit, and the host reads the run's CPU time while it runs and stops
it at ``cpu_s`` (``timeout``; read every 50 ms, so a run may overshoot by that much per core; a
spawned session has a watcher thread). RLIMIT_CPU, RLIMIT_FSIZE and RLIMIT_NOFILE also apply
per process as in a cold run; wall time is enforced by the zygote (SIGKILL of the child's group,
then of everything) with a host-side backstop that ends the whole jail. Without writable
cgroups, memory (RLIMIT_AS) holds per process only, pids still per run (RLIMIT_NPROC counts
the jail's one user), and the run's CPU time (all its processes) is checked after it ends; the
result's ``message`` says so. Statuses come only from facts the code cannot write: the wait
status the zygote reports over its own channel, cgroup counters and the host's timers, never
from the code's output.

Interpreter start-up state is the zygote's: the ``str`` hash seed is shared by all runs of a
zygote, ``PYTHON*`` variables in ``spec.env`` cannot take effect (such specs run cold), and
modules the zygote preloaded (json, re, typing, ...) are already imported (``random`` is
reseeded in every child).

Modules: this one (the pool and the backend), ``_warmzygote.py`` (one jailed zygote seen from
the host), ``_warmrun.py`` (supervising one run, its result), ``_runcgroup.py`` (its cgroups),
``_zygote.py`` (the program inside the jail).

Specs that are not plain Python code within the pool limits (argv, a workspace, input files,
network, ``PYTHON*`` env, limits above the pool's) run on the cold :class:`NsjailBackend`.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref

from revex.errors import SandboxError
from revex.runtime.sandbox import _common, _runcgroup
from revex.runtime.sandbox._warmrun import BACKSTOP_S, CPU_POLL_S, result_of, supervise
from revex.runtime.sandbox._warmzygote import Zygote, ZygoteGone, cpu_used
from revex.runtime.sandbox.base import ExecResult, ExecSpec, Limits
from revex.runtime.sandbox.nsjail import NsjailBackend

# memory_mb is a ceiling for the pool (each run gets its own memory_mb in its run cgroup, or its
# own address-space limit without cgroups): 2 GiB lets the common 1 GiB requests (verl sends
# memory_limit_MB=1024) run warm.
DEFAULT_POOL_LIMITS = Limits(memory_mb=2048, pids=64, fsize_mb=64, nofile=256, tmpfs_mb=64)


def remove_orphaned_cgroups() -> int:
    """Remove cgroups of warm pools whose owner (or zygote) died without closing them; return
    how many directories were removed. For start-up and ``revex gc``; never raises for a busy
    directory. Live pools are never touched."""
    return _runcgroup.remove_orphaned()


class WarmSpawned:
    """A warm run whose pipes the caller drives (see ``Spawned`` in base). The zygote ends it at
    ``wall_s``; a watcher thread ends it once all its processes used ``cpu_s`` (per-run cgroups
    only). :meth:`close` stops the run, waits until the zygote reports it clean, and gives the
    zygote back."""

    def __init__(self, backend: WarmPythonBackend, zygote: Zygote,
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
        while not self._ended.wait(CPU_POLL_S):
            if cpu_used(self._zygote) >= cpu_s:
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
            msg = self._zygote.recv(BACKSTOP_S + 3.0)
            healthy = "done" in msg
        except ZygoteGone:
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


def _close_zygotes(idle: list[Zygote]) -> None:
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
        self._idle: list[Zygote] = []
        self._busy: set[Zygote] = set()
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
            z = Zygote(self.cold, self.pool_limits)
            with self._lock:
                self._idle.append(z)

    def _acquire(self) -> Zygote:
        """A zygote proven clean for the next run: an idle one, the oldest first (it had the
        most time to get its next child ready); one whose cleanup report is still due is
        waited for (a run's result is returned before its zygote's cleanup is proven, see
        :meth:`_release`); a new one only when none is left."""
        while True:
            with self._lock:
                if self._closed:
                    raise SandboxError("the warm backend is closed")
                if not self._idle:
                    break
                z = self._idle.pop(0)
                self._busy.add(z)
            if z.alive() and z.proven_clean():
                return z
            self._release(z, False)
        z = Zygote(self.cold, self.pool_limits)
        with self._lock:
            self._busy.add(z)
        return z

    def _release(self, z: Zygote, healthy: bool) -> None:
        """Give ``z`` back after its run reported. Its cleanup report may still be due: it is
        awaited (and a zygote that cannot be proven clean replaced) before ``z`` serves
        another run, in :meth:`_acquire`."""
        with self._lock:
            self._busy.discard(z)
            keep = healthy and not self._closed and z.alive() and len(self._idle) < self.size
            if keep:
                self._idle.append(z)
        if not keep:
            z.close()

    def settle(self) -> None:
        """Wait until every idle zygote reported its cleanup; replace those that could not be
        proven clean (closing them). Runs do this themselves when they take a zygote."""
        with self._lock:
            idle = list(self._idle)
            self._idle.clear()
            self._busy.update(idle)  # checked out: no run reads their sockets meanwhile
        for z in idle:
            self._release(z, z.alive() and z.proven_clean())

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
        except ZygoteGone as exc:
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
            except ZygoteGone as exc:
                raise SandboxError(f"warm zygote failed: {exc}") from exc
            sup, done, cpu_stopped, usage = supervise(z, fds, spec)
            healthy = done.zygote_ok
        finally:
            self._release(z, healthy)
        return result_of(sup, done, spec, usage, cpu_stopped, self.name)
