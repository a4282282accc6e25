"""Cold runs' cgroups, kept by this process between runs and reused instead of made per run.

Making a run's cgroups (mkdir and limits in four hierarchies) and removing them afterwards costs
about twice what resetting a finished run's cgroups costs (measured: ~0.9 ms against ~0.45 ms
on 2 loaded cores), and a memory cgroup removed while page cache is charged to it lingers in
the kernel as a dying cgroup. A run's cgroups are reused only when nothing of the last run can
reach the next one:

* no task is left in any of them: checked when the cgroups are given back and again when they
  are taken (nothing enters an empty cgroup unless root moves it there or a task inside forks);
* the memory still charged there (page cache of files the last run read; its tmpfs went with
  its mount namespace) is at most :data:`REUSE_MAX_CHARGE_BYTES`; it is reclaimable, and it is
  subtracted from the next run's peak;
* every limit is written again (memory, memory+swap, pids, and the CPU bandwidth, whose write
  also refills the quota and lifts a throttle the last run earned), and every counter revex
  reads is reset (``memory.max_usage_in_bytes``, the memory and memory+swap ``failcnt``,
  ``cpuacct.usage``) or, for ``oom_control``'s ``oom_kill``, which cannot be reset, read as a
  difference.

Anything else (a write that fails, a task, too much charge) retires the cgroups: they are
removed (killing whatever is inside) and fresh ones are made. The idle ones are named like any
run's (after their owner), so :func:`~revex.runtime.sandbox.cleanup_leftovers` removes them once
their owner is dead, and they are removed when this process exits normally.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import threading

from revex.runtime.sandbox._cgroup import RunCgroup

#: Most memory a finished run may leave charged for its cgroups to be reused.
REUSE_MAX_CHARGE_BYTES = 4 << 20
#: Most idle cgroup sets kept per process (about the most runs it had in flight at once).
MAX_IDLE = 16

_lock = threading.Lock()
_idle: dict[int, list[RunCgroup]] = {}  # per pid: a forked child starts with none


def take(memory_bytes: int, pids: int, cpu_ms_per_sec: int | None) -> RunCgroup:
    """A run's cgroups with these limits and fresh counters: idle ones of this process reset
    for the run, else new ones.

    Raises ``OSError`` if new ones cannot be made.
    """
    while True:
        with _lock:
            idle = _idle.get(os.getpid())
            cg = idle.pop() if idle else None
        if cg is None:
            return RunCgroup.create(memory_bytes, pids, cpu_ms_per_sec)
        try:
            if cg.has_tasks():
                raise OSError("a task is left in the run's cgroups")
            cg.reset(memory_bytes, pids, cpu_ms_per_sec, max_charge=REUSE_MAX_CHARGE_BYTES)
        except OSError:
            _retire(cg)
            continue
        return cg


def give_back(cg: RunCgroup) -> None:
    """Keep a finished run's cgroups for the next run, or remove them when something of the
    run is left inside (killing it) or enough are idle. Never raises."""
    try:
        reusable = not cg.has_tasks()
    except OSError:
        reusable = False
    if reusable:
        with _lock:
            idle = _idle.get(os.getpid())
            if idle is None:
                idle = _idle[os.getpid()] = []
                atexit.register(_remove_idle, os.getpid())
            if len(idle) < MAX_IDLE:
                idle.append(cg)
                return
    _retire(cg)


def idle_names() -> list[str]:
    """Names of this process's idle run cgroups (for tests and ``revex doctor``)."""
    with _lock:
        return [cg.name for cg in _idle.get(os.getpid(), [])]


def _retire(cg: RunCgroup) -> None:
    with contextlib.suppress(OSError):
        cg.remove()  # what stays busy is removed with the owner (cleanup_leftovers)


def _remove_idle(pid: int) -> None:
    if pid != os.getpid():
        return  # a forked child inherited the exit hook, not the cgroups
    with _lock:
        idle = _idle.pop(pid, [])
    for cg in idle:
        _retire(cg)
