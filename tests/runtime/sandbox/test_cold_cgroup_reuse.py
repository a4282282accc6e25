"""Cold runs reuse their process's idle cgroups: nothing of one run may reach the next one
(tasks, memory charge and peaks, OOM counts, CPU time, a CPU throttle, limits)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator

import pytest

from revex.runtime.sandbox import _cgpool, _cgroup
from revex.runtime.sandbox.base import ExecSpec, ExecStatus, Limits
from revex.runtime.sandbox.nsjail import NsjailBackend

HEAVY_RUN = """
import os, time
if os.fork() == 0:           # a daemon that would linger if the jail did not end with pid 1
    os.setsid()
    time.sleep(30)
    os._exit(0)
b = bytearray(150 << 20)
for i in range(0, len(b), 4096):
    b[i] = 1
t = time.process_time()
while time.process_time() - t < 0.3:
    pass
print('done')
"""

COUNT_FORKS = """
import os, time
n = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(5)
            os._exit(0)
        n += 1
except OSError:
    pass
print(n)
"""


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Names of the cgroups each cold run of this test got from the pool."""
    names: list[str] = []
    real = _cgpool.take

    def spy(*args: int | None) -> _cgroup.RunCgroup:
        cg = real(*args)  # type: ignore[arg-type]
        names.append(cg.name)
        return cg

    monkeypatch.setattr(_cgpool, "take", spy)
    yield names


def _needs_cgroups(nsjail: NsjailBackend) -> None:
    if not nsjail.cgroups:
        pytest.skip("needs cgroups")


def _file(name: str, ctl: str, leaf: str) -> str:
    with open(f"{_cgroup.CGROUP_ROOT}/{ctl}/{name}/{leaf}") as f:
        return f.read()


def test_a_reused_cgroup_carries_nothing_from_the_last_run(nsjail: NsjailBackend,
                                                           taken: list[str]) -> None:
    _needs_cgroups(nsjail)
    heavy = nsjail.run(ExecSpec(code=HEAVY_RUN, limits=Limits(memory_mb=256, pids=16)))
    assert heavy.ok and heavy.peak_memory_mb >= 150 and heavy.cpu_s >= 0.3, heavy
    light = nsjail.run(ExecSpec(code=COUNT_FORKS, limits=Limits(memory_mb=64, pids=4)))
    assert taken[0] == taken[1]  # the same cgroups, reused
    # pids: the jail gets exactly its 4 tasks (itself and 3 children), none left from before
    assert light.ok and light.stdout.strip() == "3", light
    assert 2 < light.peak_memory_mb < heavy.peak_memory_mb / 2  # its own peak, not the last
    assert light.cpu_s < heavy.cpu_s / 2
    assert int(_file(taken[1], "memory", "memory.limit_in_bytes")) == 64 << 20
    assert int(_file(taken[1], "pids", "pids.max")) == 4 + _cgroup.SUPERVISOR_TASKS
    # a lowered limit holds in the reused cgroup, and its OOM kill is not the next run's
    oom = nsjail.run(ExecSpec(code="b = bytearray(100 << 20)", limits=Limits(memory_mb=64)))
    assert oom.status is ExecStatus.MEMORY, oom
    # killed for its CPU time with SIGKILL: were the OOM kill above counted, it would read as
    # memory
    spin = nsjail.run(ExecSpec(code="while True: pass", limits=Limits(memory_mb=256, cpu_s=0.5)))
    assert spin.status is ExecStatus.TIMEOUT, spin
    assert len(set(taken)) == 1, taken


def test_a_cpu_throttle_does_not_carry_over(taken: list[str]) -> None:
    be = NsjailBackend(cpu_ms_per_sec=100)
    _needs_cgroups(be)
    spin = be.run(ExecSpec(code="while True: pass", limits=Limits(wall_s=0.6)))
    assert spin.status is ExecStatus.TIMEOUT
    name = taken[-1]
    throttled = _throttles(name)
    assert throttled > 0  # it used its 100 ms of this second and waited
    quick = be.run(ExecSpec(code="pass"))
    assert quick.ok and taken[-1] == name
    assert _throttles(name) == throttled  # the next run started with a full quota


def _throttles(name: str) -> int:
    leaf = name.rsplit("/", 1)[1]
    cpu = next(p for p in _cgroup.run_parents()
               if p in (f"{_cgroup.CGROUP_ROOT}/cpu", f"{_cgroup.CGROUP_ROOT}/cpu/NSJAIL"))
    with open(f"{cpu}/{leaf}/cpu.stat") as f:
        stat = dict(line.split() for line in f.read().splitlines())
    return int(stat["nr_throttled"])


def _sleeper_in(cg: _cgroup.RunCgroup) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["sleep", "30"])
    with open(f"{cg.paths[1]}/cgroup.procs", "w") as f:
        f.write(str(proc.pid))
    return proc


@pytest.mark.parametrize("when", ["given back", "while idle"])
def test_cgroups_with_a_task_left_are_never_reused(nsjail: NsjailBackend, when: str) -> None:
    _needs_cgroups(nsjail)
    cg = _cgpool.take(64 << 20, 8, None)
    proc: subprocess.Popen[bytes] | None = None
    try:
        if when == "given back":
            proc = _sleeper_in(cg)
            _cgpool.give_back(cg)
            assert cg.name not in _cgpool.idle_names()
        else:
            _cgpool.give_back(cg)
            assert cg.name in _cgpool.idle_names()
            proc = _sleeper_in(cg)  # only root can do this; a run cannot
            again = [_cgpool.take(64 << 20, 8, None) for _ in _cgpool.idle_names()]
            assert cg.name not in [c.name for c in again]
            for c in again:
                _cgpool.give_back(c)
        assert proc.wait(timeout=10) == -signal.SIGKILL  # what was inside was killed
        assert not any(os.path.exists(p) for p in cg.paths)  # and the cgroups removed
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


def test_too_much_charge_left_retires_the_cgroups(nsjail: NsjailBackend, taken: list[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _needs_cgroups(nsjail)
    assert nsjail.run(ExecSpec(code="import json")).ok
    name = taken[-1]
    left = int(_file(name, "memory", "memory.usage_in_bytes"))
    assert left > 0  # page cache and kernel objects the run left charged
    monkeypatch.setattr(_cgpool, "REUSE_MAX_CHARGE_BYTES", left - 1)
    assert nsjail.run(ExecSpec(code="pass")).ok
    assert taken[-1] != name
    assert not os.path.exists(f"{_cgroup.CGROUP_ROOT}/memory/{name}")
