"""Many runs leave nothing behind: processes, mounts, cgroup dirs, temp dirs, fds."""

from __future__ import annotations

import gc
import os

import pytest

from revex.runtime.sandbox import _cgroup, _common, run_many
from revex.runtime.sandbox._lifetime import owner_tag
from revex.runtime.sandbox.base import ExecSpec, Limits, SandboxBackend
from revex.runtime.sandbox.harness import run_tests
from revex.runtime.sandbox.nsjail import NsjailBackend
from revex.runtime.sandbox.warm import WarmPythonBackend


def _descends_from_me(pid: str) -> bool:
    me = str(os.getpid())
    while pid not in ("0", "1"):
        if pid == me:
            return True
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = f.read().rsplit(")", 1)[1].split()[1]
        except OSError:
            return False
    return False


def _snapshot() -> dict[str, int]:
    """What this process owns; other processes run sandboxes at the same time, so nothing
    machine-wide is counted: cgroup parents, run dirs and mounts named for this process (or
    nsjail), and nsjail's ``NSJAIL.<pid>`` dirs of jailed children that descend from it."""
    gc.collect()  # backends other tests dropped without closing end their jails first
    me = os.getpid()
    children = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == me:
                        children += 1
            except OSError:
                continue
    mine = f"revex-{owner_tag()}-"
    with open("/proc/self/mountinfo") as f:  # other processes mount in this namespace too
        mounts = sum(1 for line in f if mine in line or "nsjail" in line)
    cgroups = 0
    parents = [f"{_cgroup.CGROUP_ROOT}/{ctl}/{_cgroup.PARENT}"
               for ctl in (*_cgroup.CONTROLLERS, _cgroup.ACCOUNTING)]
    for parent in parents + [p for p in _cgroup.run_parents() if p not in parents]:
        for name in os.listdir(parent) if os.path.isdir(parent) else []:
            if name.startswith(mine) or (name.startswith("NSJAIL.")
                                         and _descends_from_me(name.split(".", 1)[1])):
                cgroups += 1
    run_dirs = sum(1 for name in os.listdir(_common.runs_root()) if name.startswith(mine))
    return {"children": children, "mounts": mounts, "cgroup_entries": cgroups,
            "run_dirs": run_dirs, "fds": len(os.listdir("/proc/self/fd"))}


def _churn(be: SandboxBackend, n: int) -> None:
    specs = []
    for i in range(n):
        code = ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(30)\n"
                if i % 5 == 0 else "print('x' * 10000)" if i % 5 == 1 else
                "while True: pass" if i % 25 == 2 else "pass")
        specs.append(ExecSpec(code=code, limits=Limits(wall_s=1.0)))
    results = run_many(specs, concurrency=2, backend=be)
    assert all(r.status.value in ("ok", "timeout") for r in results)
    run_tests("def f(x):\n    return x", "assert f(1) == 1", "f", backend=be)


def _check(be: SandboxBackend, n: int) -> None:
    _churn(be, 3)  # warm up thread pools and imports
    before = _snapshot()
    _churn(be, n)
    after = _snapshot()
    assert after == before


def test_no_leaks_after_50_runs(nsjail: NsjailBackend) -> None:
    _check(nsjail, 50)


def _check_warm(n: int) -> None:
    base = _snapshot()
    with WarmPythonBackend(size=2) as warm:
        _check(warm, n)  # idle zygotes stay; nothing else may grow
        assert len(warm._idle) <= 2
    assert _snapshot() == base  # closing ends every zygote, cgroup and fd


def test_warm_path_leaks_nothing_after_50_runs() -> None:
    _check_warm(50)


@pytest.mark.slow
def test_no_leaks_after_1000_runs(nsjail: NsjailBackend) -> None:
    _check(nsjail, 1000)


@pytest.mark.slow
def test_warm_path_leaks_nothing_after_1000_runs() -> None:
    _check_warm(1000)
