"""cgroup v1 bookkeeping around nsjail's own cgroup handling.

nsjail puts each jailed process into ``<controller>/<parent>/NSJAIL.<nsjail pid>`` and removes that
directory when the process ends. For memory, revex gives every run its own parent,
``memory/NSJAIL/revex-<token>``, with the run's limit set on it (nsjail's own limit is a little
higher). The parent outlives nsjail's child directory, so after the run revex reads the peak usage
(``memory.max_usage_in_bytes``) and whether the kernel OOM-killed inside the run
(``memory.oom_control``'s ``oom_kill`` counts kills triggered by that cgroup's own limit), then
removes it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import time
from dataclasses import dataclass

CGROUP_ROOT = "/sys/fs/cgroup"
PARENT = "NSJAIL"
CONTROLLERS = ("memory", "pids", "cpu")


def v1_usable() -> tuple[bool, str]:
    """Whether cgroup v1 memory/pids/cpu can be used by this process, and why not.

    Creates the ``NSJAIL`` parent folders when possible (nsjail refuses to start without them).
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
    return True, "cgroup v1 memory, pids and cpu are writable"


def v2_present() -> bool:
    """Whether a cgroup v2 hierarchy is mounted (unified or hybrid)."""
    return os.path.isfile(f"{CGROUP_ROOT}/cgroup.controllers") or os.path.isfile(
        f"{CGROUP_ROOT}/unified/cgroup.controllers")


@dataclass
class MemoryCgroup:
    """A per-run memory cgroup parent (relative name ``NSJAIL/revex-<token>``)."""

    name: str
    path: str

    @classmethod
    def create(cls, limit_bytes: int) -> MemoryCgroup:
        """Create the parent with ``limit_bytes`` as its memory (and memory+swap) limit.

        Raises ``OSError`` if the cgroup cannot be created or configured.
        """
        name = f"{PARENT}/revex-{secrets.token_hex(8)}"
        path = f"{CGROUP_ROOT}/memory/{name}"
        os.mkdir(path)
        try:
            _write(f"{path}/memory.limit_in_bytes", limit_bytes)
            if os.path.exists(f"{path}/memory.memsw.limit_in_bytes"):
                _write(f"{path}/memory.memsw.limit_in_bytes", limit_bytes)
        except OSError:
            remove_tree(path)
            raise
        return cls(name, path)

    def read(self) -> tuple[int, int]:
        """Return (peak bytes, OOM kills or limit hits); zeros where a file cannot be read.

        On some v1 kernels ``oom_kill`` stays 0 in the parent, so a non-zero ``failcnt`` (the
        parent's limit was hit) counts too.
        """
        peak = oom = 0
        try:
            with open(f"{self.path}/memory.max_usage_in_bytes") as f:
                peak = int(f.read())
            for name in ("memory.failcnt", "memory.memsw.failcnt"):
                if os.path.exists(f"{self.path}/{name}"):
                    with open(f"{self.path}/{name}") as f:
                        oom += int(f.read())
            with open(f"{self.path}/memory.oom_control") as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        oom += int(value)
        except OSError:
            pass  # measurement is best-effort; the status falls back to the exit signal
        return peak, oom

    def remove(self) -> None:
        """Kill anything still inside and remove the cgroup tree. Raises ``OSError`` if it
        cannot be removed."""
        remove_tree(self.path)


def _write(path: str, value: int | str) -> None:
    with open(path, "w") as f:
        f.write(str(value))


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
        try:
            with open(f"{path}/cgroup.procs") as f:
                pids = [int(p) for p in f.read().split()]
        except OSError:
            pids = []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)
    raise err


def remove_leftovers(nsjail_pid: int) -> None:
    """Remove the ``NSJAIL.<pid>`` directories nsjail leaves behind when it was killed hard."""
    for ctl in CONTROLLERS:
        remove_tree(f"{CGROUP_ROOT}/{ctl}/{PARENT}/NSJAIL.{nsjail_pid}")
