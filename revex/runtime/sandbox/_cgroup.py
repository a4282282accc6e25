"""cgroup v1 bookkeeping for nsjail runs.

A cold run gets its own cgroups, ``NSJAIL/revex-<owner tag>-<token>`` in memory, pids and
cpuacct and ``revex-<owner tag>-<token>`` at the top of cpu (see ``_lifetime.owner_tag`` and
``_run_hierarchies``), and nsjail is started inside them (``RunCgroup``), so that

* memory is limited and measured for the whole run: every process of the run is charged there,
  and ``memory.max_usage_in_bytes`` is the run's peak while ``failcnt`` and ``oom_control``'s
  ``oom_kill`` say (as kernel facts the code cannot write) that the run hit its limit;
* CPU time is measured for the whole run (``cpuacct.usage``) and limited per second of wall time
  (the cpu controller's bandwidth);
* whatever a run leaves behind sits inside its cgroups and goes with them, and cgroups of
  owners that died are found by name and removed (:func:`cleanup_dead_owners`).

nsjail's own cgroup handling (``--cgroup_*``: a ``<controller>/<parent>/NSJAIL.<child pid>``
directory per jailed child, named after the child, removed when the child ends, left behind
when nsjail itself is killed hard) is used by the warm path's zygote; cold runs never ask for
it, because moving the child into those directories costs an RCU grace period per run.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import secrets
import signal
import time
from dataclasses import dataclass, field

from revex.runtime.sandbox._lifetime import own_cgroups, owner_tag, tag_owner_alive

CGROUP_ROOT = "/sys/fs/cgroup"
PARENT = "NSJAIL"
CONTROLLERS = ("memory", "pids", "cpu")
ACCOUNTING = "cpuacct"
_RUN_NAME = re.compile(r"revex-(\d+\.\d+\.\d+)-[0-9a-f]+")
_NSJAIL_CHILD = re.compile(r"NSJAIL\.(\d+)")
#: Tasks in a cold run's cgroups besides the jail's own: nsjail (see ``RunCgroup``).
SUPERVISOR_TASKS = 1
_CPU_PERIOD_US = 1_000_000  # nsjail's own choice for --cgroup_cpu_ms_per_sec


def v1_usable() -> tuple[bool, str]:
    """Whether cgroup v1 memory/pids/cpu can be used by this process, and why not.

    Creates the ``NSJAIL`` parent folders when possible (nsjail refuses to start without them),
    and the ``cpuacct`` one when that controller is mounted (per-run CPU accounting).
    """
    for ctl in CONTROLLERS:
        base = f"{CGROUP_ROOT}/{ctl}"
        if not os.path.isfile(f"{base}/tasks"):
            return False, f"cgroup v1 controller {ctl!r} is not mounted at {base}"
        parent = f"{base}/{PARENT}"
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            return False, f"cannot create {parent}: {exc.strerror}"
        if not os.access(parent, os.W_OK):
            return False, f"{parent} is not writable by uid {os.geteuid()}"
    acct = accounting_base()
    if acct is not None:
        with contextlib.suppress(OSError):
            os.makedirs(f"{acct}/{PARENT}", exist_ok=True)
    return True, "cgroup v1 memory, pids and cpu are writable"


def accounting_base() -> str | None:
    """The mounted cgroup v1 hierarchy holding ``cpuacct.usage`` (alone or with cpu)."""
    for ctl in (ACCOUNTING, "cpu"):
        base = f"{CGROUP_ROOT}/{ctl}"
        if os.path.isfile(f"{base}/cpuacct.usage"):
            return os.path.realpath(base)
    return None


def v2_present() -> bool:
    """Whether a cgroup v2 hierarchy is mounted (unified or hybrid)."""
    return os.path.isfile(f"{CGROUP_ROOT}/cgroup.controllers") or os.path.isfile(
        f"{CGROUP_ROOT}/unified/cgroup.controllers")


def _run_name() -> str:
    return f"{PARENT}/revex-{owner_tag()}-{secrets.token_hex(8)}"


def _read_memory(path: str) -> tuple[int, int]:
    """(peak bytes, limit hits and OOM kills) of a memory cgroup; zeros where unreadable.

    On some v1 kernels ``oom_kill`` stays 0 in the parent, so a non-zero ``failcnt`` (the
    parent's limit was hit) counts too.
    """
    peak = oom = 0
    try:
        with open(f"{path}/memory.max_usage_in_bytes") as f:
            peak = int(f.read())
        for name in ("memory.failcnt", "memory.memsw.failcnt"):
            if os.path.exists(f"{path}/{name}"):
                with open(f"{path}/{name}") as f:
                    oom += int(f.read())
        with open(f"{path}/memory.oom_control") as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    oom += int(value)
    except OSError:
        pass  # measurement is best-effort; the status falls back to the exit signal
    return peak, oom


def make_memory_cgroup(path: str, limit_bytes: int) -> None:
    """Create the memory cgroup ``path`` limited to ``limit_bytes``. Raises ``OSError`` if it
    cannot be created or configured (nothing is left then)."""
    os.mkdir(path)
    try:
        _limit_memory(path, limit_bytes)
    except OSError:
        remove_tree(path)
        raise


def _limit_memory(path: str, limit_bytes: int, previous: int | None = None) -> None:
    """Set the memory and (where accounted) memory+swap limits; ``previous``: the limit set
    before (``None``: none). memory+swap may never be below memory, so it is raised first and
    lowered last."""
    files = [f"{path}/memory.limit_in_bytes"]
    memsw = f"{path}/memory.memsw.limit_in_bytes"
    if os.path.exists(memsw):
        raising = previous is not None and limit_bytes > previous
        files = [memsw, *files] if raising else [*files, memsw]
    for name in files:
        _write(name, limit_bytes)


@dataclass
class MemoryCgroup:
    """A memory cgroup parent (relative name ``NSJAIL/revex-<owner tag>-<token>``)."""

    name: str
    path: str

    @classmethod
    def create(cls, limit_bytes: int) -> MemoryCgroup:
        """Create the parent with ``limit_bytes`` as its memory (and memory+swap) limit.

        Raises ``OSError`` if the cgroup cannot be created or configured.
        """
        name = _run_name()
        path = f"{CGROUP_ROOT}/memory/{name}"
        make_memory_cgroup(path, limit_bytes)
        return cls(name, path)

    def read(self) -> tuple[int, int]:
        """Return (peak bytes, OOM kills or limit hits); zeros where a file cannot be read."""
        return _read_memory(self.path)

    def remove(self) -> None:
        """Kill anything still inside and remove the cgroup tree. Raises ``OSError`` if it
        cannot be removed."""
        remove_tree(self.path)


@dataclass
class RunCgroup:
    """One run's cgroups: ``NSJAIL/revex-<owner tag>-<token>`` in memory, pids and (when
    mounted on its own) cpuacct, the same name at the top of cpu, with the run's limits.

    nsjail gets no cgroup options: the launcher thread steps into these cgroups while it starts
    nsjail (:attr:`join`), so nsjail and everything it starts are born in them and no process
    is ever moved into them (a move of another task costs the kernel an RCU grace period).
    nsjail itself is therefore one task of the run (``pids.max`` is ``pids`` +
    :data:`SUPERVISOR_TASKS`) and its own memory, about a megabyte, counts against
    ``memory_mb``: the limit stays an upper bound of everything the run holds.
    """

    name: str
    paths: list[str] = field(default_factory=list)  # memory, pids, cpu[, cpuacct]
    acct: str | None = None
    hierarchies: list[tuple[str, str]] = field(default_factory=list)  # (mount, controller)
    memory_limit: int = 0
    mem_base: int = 0  # charge left by an earlier run (reused cgroups): not this run's
    oom_base: int = 0  # oom_kill count before this run (it cannot be reset)

    @classmethod
    def create(cls, memory_bytes: int, pids: int, cpu_ms_per_sec: int | None = None,
               ) -> RunCgroup:
        """Create the run's cgroups with its memory and pids limits and (given
        ``cpu_ms_per_sec``) its CPU bandwidth per second of wall time.

        Raises ``OSError`` if one cannot be created or configured (nothing is left then).
        """
        run = cls(_run_name())
        leaf = run.name.rsplit("/", 1)[1]
        try:
            for base, ctl, parent in _run_hierarchies():
                path = f"{base}/{parent}{leaf}"
                os.mkdir(path)
                run.paths.append(path)
                run.hierarchies.append((base, ctl))
                if ctl == ACCOUNTING or os.path.isfile(f"{path}/cpuacct.usage"):
                    run.acct = path
            _limit_memory(run.paths[0], memory_bytes)
            run.memory_limit = memory_bytes
            run._limit_tasks_and_cpu(pids, cpu_ms_per_sec)
        except OSError:
            run.remove()
            raise
        return run

    def _limit_tasks_and_cpu(self, pids: int, cpu_ms_per_sec: int | None) -> None:
        _write(f"{self.paths[1]}/pids.max", pids + SUPERVISOR_TASKS)
        # Writing the bandwidth also refills the quota and unthrottles (reused cgroups).
        _write(f"{self.paths[2]}/cpu.cfs_period_us", _CPU_PERIOD_US)
        _write(f"{self.paths[2]}/cpu.cfs_quota_us",
               -1 if cpu_ms_per_sec is None else cpu_ms_per_sec * 1000)

    def has_tasks(self) -> bool:
        """Whether any task is in any of the run's cgroups. Raises ``OSError`` if one cannot
        be read (it is gone)."""
        for path in self.paths:
            with open(f"{path}/tasks") as f:
                if f.read(1):
                    return True
        return False

    def reset(self, memory_bytes: int, pids: int, cpu_ms_per_sec: int | None, *,
              max_charge: int) -> None:
        """Make the cgroups of a finished run (no task left) ready for another run with these
        limits: every limit written again, counters reset or taken as a baseline (see
        ``_cgpool``).

        Raises ``OSError`` if more than ``max_charge`` bytes are still charged or a write
        fails; the caller then removes the cgroups.
        """
        mem = self.paths[0]
        left = _read_int(f"{mem}/memory.usage_in_bytes")
        if left > max_charge:
            raise OSError(f"{left} bytes of an earlier run are still charged")
        _limit_memory(mem, memory_bytes, self.memory_limit)
        self.memory_limit = memory_bytes
        for name in ("memory.max_usage_in_bytes", "memory.failcnt", "memory.memsw.failcnt"):
            if name == "memory.max_usage_in_bytes" or os.path.exists(f"{mem}/{name}"):
                _write(f"{mem}/{name}", 0)
        self.mem_base = _read_int(f"{mem}/memory.max_usage_in_bytes")
        self.oom_base = _oom_kills(mem)
        self._limit_tasks_and_cpu(pids, cpu_ms_per_sec)
        if self.acct is not None:
            _write(f"{self.acct}/cpuacct.usage", 0)

    @property
    def join(self) -> list[tuple[str, str]]:
        """(``tasks`` file of the run, ``tasks`` file of this thread's own cgroup) in every
        hierarchy: nsjail is started from inside the run's cgroups.

        Raises ``OSError`` if this thread's cgroup in one of them cannot be read (it could not
        return there).
        """
        homes = own_cgroups()
        pairs = []
        for (base, ctl), path in zip(self.hierarchies, self.paths, strict=True):
            home = homes.get(ctl)
            if home is None:
                raise OSError(f"cannot read this thread's {ctl} cgroup")
            pairs.append((f"{path}/tasks", f"{base}{home.rstrip('/')}/tasks"))
        return pairs

    def read(self) -> tuple[int, int]:
        """Return (peak bytes, OOM kills or limit hits) of the whole run."""
        peak, hits = _read_memory(self.paths[0])
        return max(peak - self.mem_base, 0), hits - self.oom_base

    def cpu_s(self) -> float | None:
        """CPU seconds used by every process of the run so far (``None``: not measured)."""
        if self.acct is None:
            return None
        try:
            with open(f"{self.acct}/cpuacct.usage") as f:
                return int(f.read()) / 1e9
        except (OSError, ValueError):
            return None

    def kill_leftovers(self) -> None:
        """SIGKILL whatever of the run still lives once nsjail has exited (normally nothing:
        the jail's pid namespace dies with its pid 1; but a jail whose nsjail was killed, for
        example by the run's own OOM, would be orphaned)."""
        for path in self.paths[1:2]:  # pids: every task of the run is counted there
            _kill_procs(path)

    def remove(self) -> None:
        """Kill anything still inside and remove every cgroup of the run. Raises ``OSError``
        if one stays busy."""
        for path in self.paths:
            remove_tree(path)


@functools.cache
def _run_hierarchies() -> tuple[tuple[str, str, str], ...]:
    """(mount, controller, parent below the mount) of every hierarchy a cold run has a cgroup
    in: memory, pids, cpu, and cpuacct where it is mounted apart from cpu (mounts do not
    change while we run).

    The cpu cgroup sits at the top of its hierarchy, beside ``NSJAIL``, where that is writable:
    below a shared parent, every jail on the machine would share the CPU weight of a single
    process against everything else (measured at load 20, with other processes' jails
    running: a cold run 4.7x slower than with its own weight), while a run should compete
    like the one process it stands for.
    """
    out = [(f"{CGROUP_ROOT}/{ctl}", ctl, f"{PARENT}/") for ctl in CONTROLLERS]
    cpu = f"{CGROUP_ROOT}/cpu"
    if os.access(cpu, os.W_OK):
        out[2] = (cpu, "cpu", "")
    acct = accounting_base()
    if acct is not None and acct not in (os.path.realpath(b) for b, _, _ in out):
        out.append((acct, ACCOUNTING, f"{PARENT}/"))
    return tuple(out)


def run_parents() -> list[str]:
    """Every directory that holds cold runs' cgroups (``revex-<owner tag>-<token>``)."""
    found = [f"{base}/{parent}".rstrip("/") for base, _, parent in _run_hierarchies()]
    return [p for i, p in enumerate(found) if p not in found[:i] and os.path.isdir(p)]


def _write(path: str, value: int | str) -> None:
    with open(path, "w") as f:
        f.write(str(value))


def _read_int(path: str) -> int:
    with open(path) as f:
        return int(f.read().split()[0])


def _oom_kills(path: str) -> int:
    with open(f"{path}/memory.oom_control") as f:
        for line in f:
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    return 0


def remove_tree(path: str) -> None:
    """Remove a cgroup directory and its children, killing any process left inside first.

    Raises ``OSError`` if a directory stays busy.
    """
    if not os.path.isdir(path):
        return
    for entry in os.scandir(path):
        if entry.is_dir(follow_symlinks=False):
            remove_tree(entry.path)
    for _ in range(50):
        try:
            os.rmdir(path)
            return
        except OSError as exc:
            if not os.path.isdir(path):
                return
            err = exc
        _kill_procs(path)
        time.sleep(0.01)
    raise err


def _kill_procs(path: str) -> None:
    """SIGKILL every process listed in the cgroup ``path`` (not recursive)."""
    try:
        with open(f"{path}/cgroup.procs") as f:
            pids = [int(p) for p in f.read().split()]
    except OSError:
        return
    for pid in pids:
        # Never this process (a launcher thread that did not leave), and never pid 0, which
        # cgroup.procs shows for processes of another pid namespace (kill(0) is our group).
        if pid <= 0 or pid == os.getpid():
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _parents() -> list[str]:
    bases = [f"{CGROUP_ROOT}/{ctl}" for ctl in CONTROLLERS]
    acct = accounting_base()
    if acct is not None and acct not in (os.path.realpath(b) for b in bases):
        bases.append(acct)
    return [f"{b}/{PARENT}" for b in bases if os.path.isdir(f"{b}/{PARENT}")]


def _remove_dead_children(parent: str) -> None:
    """Remove ``NSJAIL.<pid>`` dirs under ``parent`` whose jail is dead or orphaned.

    The jailed child is pid 1 of its pid namespace, so once it is gone nothing can run inside.
    Its parent is nsjail for as long as that lives; a child whose nsjail died (killed hard: the
    kernel cleared the child's own parent-death signal when nsjail changed its uid) is an
    orphaned jail, and removing its dir kills what runs in it. Jails with a live nsjail (other
    runs, other processes) are never touched.
    """
    with contextlib.suppress(OSError), os.scandir(parent) as it:
        for entry in it:
            m = _NSJAIL_CHILD.fullmatch(entry.name)
            if m and not _jailed_by_nsjail(int(m.group(1))):
                with contextlib.suppress(OSError):
                    remove_tree(entry.path)


def _jailed_by_nsjail(pid: int) -> bool:
    """Whether ``pid`` runs (not a zombie) and its parent is an nsjail process."""
    stat = _stat(pid)
    if stat is None or stat[0] in (b"Z", b"X"):
        return False
    try:
        with open(f"/proc/{int(stat[1])}/comm", "rb") as f:
            return f.read().strip() == b"nsjail"
    except (OSError, ValueError):
        return False


def _stat(pid: int) -> list[bytes] | None:
    """Fields 3.. of ``/proc/<pid>/stat`` (state, ppid, ...), ``None`` if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def remove_leftovers(nsjail_pid: int) -> None:
    """Remove what an nsjail that was killed hard left: ``NSJAIL.<child pid>`` directories
    (named after its jailed child, not after nsjail) in the shared ``NSJAIL`` parents, killing
    the jail if it outlived nsjail. Call it after ``nsjail_pid`` exited."""
    for parent in _parents():
        with contextlib.suppress(OSError):
            remove_tree(f"{parent}/NSJAIL.{nsjail_pid}")  # never nsjail's own, but harmless
        _remove_dead_children(parent)


def cleanup_dead_owners() -> list[str]:
    """Remove every ``revex-<owner tag>-*`` parent whose owner process is dead, and nsjail's
    leftovers of dead children. Returns the removed paths; skips what stays busy."""
    removed: list[str] = []
    parents = _parents()
    for parent in parents + [p for p in run_parents() if p not in parents]:
        with contextlib.suppress(OSError), os.scandir(parent) as it:
            for entry in list(it):
                m = _RUN_NAME.fullmatch(entry.name)
                if m and not tag_owner_alive(m.group(1)):
                    try:
                        remove_tree(entry.path)
                    except OSError:
                        continue
                    removed.append(entry.path)
        if parent in parents:
            _remove_dead_children(parent)
    return removed
