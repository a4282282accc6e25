"""cgroup v1 bookkeeping for warm runs: one set of cgroups per run, so limits hold for the run.

A warm zygote's jail lives in cgroups nsjail makes, ``<ctl>/NSJAIL/NSJAIL.<zygote pid>`` (memory
under a parent revex makes, ``memory/NSJAIL/revex-w<owner pid>-<token>``, sized for the pool).
The zygote is moved once, when it starts, into ``run`` cgroups below its own: memory (set to the
run's ``memory_mb`` before each run), pids (the run's ``pids`` + 1, the zygote) and cpuacct (the
run's CPU time, read while it runs). Every child it forks, and every process that child creates,
starts in them, so memory, process count and CPU are limited and measured for the run as a
whole, without moving a process per run. Counters are reset before each run (usage the zygote
or page cache left is subtracted from the peak); OOM kills are counted as a difference. An OOM
kill may pick the zygote itself: the run is then reported ``memory`` and the zygote replaced.

Names carry the owning process's pid (the memory parent) or the zygote's pid (``NSJAIL.<pid>``,
nsjail's convention), so :func:`remove_orphaned` can remove what owners that died hard left.
"""

from __future__ import annotations

import contextlib
import os
import secrets

from revex.runtime.sandbox._cgroup import (
    CGROUP_ROOT,
    PARENT,
    _read_int,
    _write,
    make_memory_cgroup,
    remove_tree,
)
from revex.runtime.sandbox._lifetime import pid_alive

#: Controllers with a per-run cgroup below the zygote's, and where nsjail puts the zygote.
RUN_CONTROLLERS = ("memory", "pids", "cpuacct")
_OWNER_PREFIX = "revex-w"
_FORCE_EMPTY_ABOVE = 16 << 20


def _oom_kills(text: str) -> int:
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return 0


def new_memory_parent(limit_bytes: int) -> str:
    """Create ``memory/NSJAIL/revex-w<owner pid>-<token>`` limited to ``limit_bytes``; return
    its name relative to the memory root (for nsjail's ``--cgroup_mem_parent``).

    Raises ``OSError`` if it cannot be created or configured (nothing is left then).
    """
    name = f"{PARENT}/{_OWNER_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
    path = f"{CGROUP_ROOT}/memory/{name}"
    make_memory_cgroup(path, limit_bytes)
    return name


class RunCgroups:
    """The per-run cgroups below one zygote (see the module doc). Not thread-safe: a zygote
    serves one run at a time."""

    def __init__(self, mem_parent: str | None, zygote_pid: int) -> None:
        self.mem_parent = mem_parent
        self.zygote_pid = zygote_pid
        jail = f"NSJAIL.{zygote_pid}"
        self.paths = {
            "memory": f"{CGROUP_ROOT}/memory/{mem_parent or PARENT}/{jail}/run",
            "pids": f"{CGROUP_ROOT}/pids/{PARENT}/{jail}/run",
            "cpuacct": f"{CGROUP_ROOT}/cpuacct/{PARENT}/{jail}/run",
        }
        self._limit = 0
        self._ooms = 0
        self._baseline = 0
        self._has_sw = False
        # Files read or written for every run stay open (an open costs far more than a read).
        self._fds: dict[tuple[str, int], int] = {}

    def _fd(self, path: str, flags: int) -> int:
        fd = self._fds.get((path, flags))
        if fd is None:
            fd = self._fds[(path, flags)] = os.open(path, flags | os.O_CLOEXEC)
        return fd

    def _get(self, path: str) -> str:
        return os.pread(self._fd(path, os.O_RDONLY), 4096, 0).decode()

    def _read_int(self, path: str) -> int:
        return int(self._get(path).split()[0])

    def _write(self, path: str, value: int) -> None:
        os.pwrite(self._fd(path, os.O_WRONLY), str(value).encode(), 0)

    def close(self) -> None:
        """Close the files kept open (idempotent)."""
        while self._fds:
            os.close(self._fds.popitem()[1])

    def create(self) -> None:
        """Make the run cgroups. Raises ``OSError`` (the caller removes what was made)."""
        os.makedirs(os.path.dirname(self.paths["cpuacct"]), exist_ok=True)
        for path in self.paths.values():
            os.mkdir(path)
        self._limit = _read_int(f"{self.paths['memory']}/memory.limit_in_bytes")
        self._has_sw = os.path.exists(f"{self.paths['memory']}/memory.memsw.limit_in_bytes")

    def prepare(self, memory_bytes: int, pids: int) -> None:
        """Set the next run's limits and reset its counters. Raises ``OSError``."""
        mem = self.paths["memory"]
        # Page cache earlier runs left charged here (reclaimable, so it never takes memory from
        # this run) is subtracted from the peak; much of it is dropped first (the cgroup has no
        # task now), which costs a few hundred ms, so only when it is large.
        if self._read_int(f"{mem}/memory.usage_in_bytes") > _FORCE_EMPTY_ABOVE:
            with contextlib.suppress(OSError):
                _write(f"{mem}/memory.force_empty", 0)
        memsw = f"{mem}/memory.memsw.limit_in_bytes"
        has_sw = self._has_sw
        if memory_bytes != self._limit:
            # memsw must stay >= limit at every step: raise it first, lower it last
            order = ([memsw] if has_sw and memory_bytes > self._limit else []) + [
                f"{mem}/memory.limit_in_bytes"] + (
                [memsw] if has_sw and memory_bytes < self._limit else [])
            for path in order:
                self._write(path, memory_bytes)
            self._limit = memory_bytes
        self._write(f"{mem}/memory.max_usage_in_bytes", 0)
        self._baseline = self._read_int(f"{mem}/memory.usage_in_bytes")
        self._ooms = _oom_kills(self._get(f"{mem}/memory.oom_control"))
        self._write(f"{self.paths['pids']}/pids.max", pids)
        self._write(f"{self.paths['cpuacct']}/cpuacct.usage", 0)

    def adopt(self, pid: int) -> None:
        """Move ``pid`` (a host pid) into every run cgroup. Raises ``OSError``."""
        for path in self.paths.values():
            _write(f"{path}/cgroup.procs", pid)

    def cpu_s(self) -> float:
        """CPU seconds the run's processes used so far. Raises ``OSError``."""
        return self._read_int(f"{self.paths['cpuacct']}/cpuacct.usage") / 1e9

    def memory(self) -> tuple[int, int]:
        """(peak bytes of the run, OOM kills in the run). Raises ``OSError``."""
        mem = self.paths["memory"]
        peak = self._read_int(f"{mem}/memory.max_usage_in_bytes") - self._baseline
        return max(peak, 0), _oom_kills(self._get(f"{mem}/memory.oom_control")) - self._ooms

    def remove(self) -> None:
        """Remove the zygote's cgroups in every controller and the memory parent (killing
        anything left inside). Best effort: what stays is found by :func:`remove_orphaned`."""
        self.close()
        jail = f"NSJAIL.{self.zygote_pid}"
        for ctl in ("pids", "cpu", "cpuacct") if self.zygote_pid else ():
            with contextlib.suppress(OSError):
                remove_tree(f"{CGROUP_ROOT}/{ctl}/{PARENT}/{jail}")
        if self.mem_parent is not None:
            with contextlib.suppress(OSError):
                remove_tree(f"{CGROUP_ROOT}/memory/{self.mem_parent}")


def remove_orphaned(root: str = CGROUP_ROOT) -> int:
    """Remove warm-path cgroups whose process is gone; return how many directories went.

    That is ``memory/NSJAIL/revex-w<pid>-*`` of a dead owner, and ``<ctl>/NSJAIL/NSJAIL.<pid>``
    (pids, cpu, cpuacct) of a dead zygote, left when an owner or nsjail was killed hard (nsjail
    cannot remove a zygote's cgroup that still holds a run cgroup). A jail is the warm path's
    when it has a cpuacct cgroup (cold runs have none), so cold runs' cgroups are not touched,
    nor those of live owners or live zygotes. For start-up and ``revex gc``; never raises for a
    busy directory.
    """
    removed = 0
    base = f"{root}/memory/{PARENT}"
    for entry in _entries(base):
        owner = entry[len(_OWNER_PREFIX):].split("-", 1)[0]
        if entry.startswith(_OWNER_PREFIX) and owner.isdigit() and not pid_alive(int(owner)):
            removed += _remove(f"{base}/{entry}")
    for entry in _entries(f"{root}/cpuacct/{PARENT}"):
        pid = entry[len("NSJAIL."):]
        if not (entry.startswith("NSJAIL.") and pid.isdigit() and not pid_alive(int(pid))):
            continue
        for ctl in ("pids", "cpu", "cpuacct"):  # cpuacct last: it marks the jail as warm
            removed += _remove(f"{root}/{ctl}/{PARENT}/{entry}")
    return removed


def _entries(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _remove(path: str) -> int:
    if not os.path.isdir(path):
        return 0
    try:
        remove_tree(path)
    except OSError:
        return 0
    return 1
