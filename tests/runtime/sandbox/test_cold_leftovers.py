"""Sandboxes die with their owner, and what a dead owner left is removed on the next start.

Other processes run sandboxes on this machine at the same time: every count here is of
resources named for the process the test started (or for this one), never machine-wide.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time

import pytest

from revex.runtime.sandbox import _cgroup, _common, cleanup_leftovers
from revex.runtime.sandbox._lifetime import owner_tag
from revex.runtime.sandbox.base import ExecSpec, ExecStatus, Limits
from revex.runtime.sandbox.nsjail import NsjailBackend

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))


def _cgroup_parents() -> list[str]:
    ctls = [*_cgroup.CONTROLLERS, _cgroup.ACCOUNTING]
    nsjail = [f"{_cgroup.CGROUP_ROOT}/{c}/{_cgroup.PARENT}" for c in ctls]
    return nsjail + [p for p in _cgroup.run_parents() if p not in nsjail]


def _named_for(pid: int) -> list[str]:
    """Run dirs and cgroup parents whose name says ``pid`` made them."""
    found = []
    prefix = f"revex-{pid}."
    for parent in [_common.runs_root(), *_cgroup_parents()]:
        if os.path.isdir(parent):
            found += [f"{parent}/{n}" for n in os.listdir(parent) if n.startswith(prefix)]
    return found


def _pids_running(marker: str) -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    found = marker.encode() in f.read()
                with open(f"/proc/{pid}/comm", "rb") as f:
                    if found and f.read().strip() != b"nsjail":  # the jailed code itself
                        pids.append(int(pid))
            except OSError:
                continue
    return pids


def test_sandbox_dies_with_its_owner_and_next_start_removes_leftovers(open_dir: str) -> None:
    ws = os.path.join(open_dir, "ws")  # root-owned: a copy-mode run (a full workspace copy)
    os.mkdir(ws)
    with open(os.path.join(ws, "data.bin"), "wb") as f:
        f.write(os.urandom(1 << 20))
    marker = f"revex-owner-test-{secrets.token_hex(6)}"  # only in the sandboxed code's argv
    owner_code = (
        "import os\n"
        "from revex.runtime.sandbox.nsjail import NsjailBackend\n"
        "from revex.runtime.sandbox.base import ExecSpec, Limits\n"
        "code = '# ' + os.environ['MARKER'] + '\\nimport time\\nwhile True: time.sleep(0.1)'\n"
        f"NsjailBackend().run(ExecSpec(code=code, workspace={ws!r}, limits=Limits(wall_s=8)))\n")
    owner = subprocess.Popen([sys.executable, "-c", owner_code],
                             env={**os.environ, "PYTHONPATH": REPO, "MARKER": marker})
    try:
        deadline = time.monotonic() + 60
        while not _pids_running(marker):
            assert owner.poll() is None and time.monotonic() < deadline, "sandbox never started"
            time.sleep(0.05)
        assert _named_for(owner.pid)  # its run dir (the copy) and its cgroup parents
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        killed_at = time.monotonic()
        while _pids_running(marker):
            # wall_s is 8 s: the sandboxed code must be gone well before that.
            assert time.monotonic() - killed_at < 4.0, "the sandbox outlived its owner"
            time.sleep(0.05)
        # nsjail was killed hard: what it had (seen above while the owner lived) stays until the
        # next start, which removes it. Another revex process's start on this machine may remove
        # it first, so only the end state is asserted, not that this start found something.
        NsjailBackend()
        assert _named_for(owner.pid) == []
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()


def test_cleanup_never_touches_live_owners() -> None:
    run_dir = _common.make_run_dir()
    cg = _cgroup.RunCgroup.create(64 << 20, 8)
    # A dead pid of another pid namespace: its pids mean nothing here, so it is left alone.
    pid, start, ns = owner_tag().split(".")
    foreign = os.path.join(_common.runs_root(),
                           f"revex-{pid}.{int(start) + 1}.{int(ns) + 1}-{secrets.token_hex(8)}")
    os.mkdir(foreign)
    try:
        cleanup_leftovers()
        assert os.path.isdir(run_dir) and all(os.path.isdir(p) for p in cg.paths)
        assert os.path.isdir(foreign)
    finally:
        cg.remove()
        os.rmdir(run_dir)
        os.rmdir(foreign)


def test_cleanup_removes_a_reused_pid_with_another_start_time() -> None:
    # Same pid as this live process, another start time: a dead owner whose pid was reused.
    pid, start, ns = owner_tag().split(".")
    stale = f"revex-{pid}.{int(start) + 1}.{ns}-{secrets.token_hex(8)}"
    run_dir = os.path.join(_common.runs_root(), stale)
    os.mkdir(run_dir)
    os.mkdir(os.path.join(run_dir, "work"))
    os.mkdir(os.path.join(run_dir, "work", "work"), 0)  # what overlayfs leaves without root
    parent = f"{_cgroup.CGROUP_ROOT}/pids/{_cgroup.PARENT}"
    os.mkdir(f"{parent}/{stale}")
    try:
        counts = cleanup_leftovers()
        assert not os.path.exists(run_dir) and not os.path.exists(f"{parent}/{stale}")
        assert counts["run_dirs"] >= 1 and counts["cgroups"] >= 1
    finally:
        for path in (f"{parent}/{stale}",):
            if os.path.isdir(path):
                os.rmdir(path)


def test_nsjail_killed_hard_leaves_no_child_cgroup_dirs(nsjail: NsjailBackend) -> None:
    # The warm path starts nsjail under the shared NSJAIL parents; nsjail names its cgroup
    # dirs after the jailed child, not after itself.
    if not nsjail.cgroups:
        pytest.skip("needs cgroups")
    spec = ExecSpec(code="import time; time.sleep(30)")
    mem = _cgroup.MemoryCgroup.create(64 << 20)
    argv = nsjail._argv(spec, _common.command(spec, nsjail.python, None),
                        _common.build_env(spec), "/tmp", [], mem.name)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        child = None
        while child is None:
            assert time.monotonic() < deadline
            with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
                kids = f.read().split()
            if kids and os.path.isdir(f"{_cgroup.CGROUP_ROOT}/pids/{_cgroup.PARENT}/"
                                      f"NSJAIL.{kids[0]}"):
                child = kids[0]
            time.sleep(0.02)
        proc.kill()
        proc.wait()
        dirs = [f"{_cgroup.CGROUP_ROOT}/{c}/{_cgroup.PARENT}/NSJAIL.{child}"
                for c in ("pids", "cpu")]
        assert any(os.path.isdir(d) for d in dirs)
        _cgroup.remove_leftovers(proc.pid)
        assert not any(os.path.isdir(d) for d in dirs)
        # The jail may outlive a SIGKILLed nsjail (its parent-death signal does not survive
        # nsjail's uid change); removing its dirs killed it.
        state = _cgroup._stat(int(child))
        assert state is None or state[0] in (b"Z", b"X")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        mem.remove()


def test_a_jail_whose_nsjail_dies_does_not_outlive_the_run(nsjail: NsjailBackend) -> None:
    # nsjail runs inside the run's cgroups; if it dies (killed hard, or picked by the run's own
    # OOM killer) its jail is orphaned, and revex kills what is left there as nsjail exits.
    if not nsjail.cgroups:
        pytest.skip("needs cgroups")
    marker = f"revex-orphan-test-{secrets.token_hex(6)}"
    code = f"# {marker}\nimport time\nwhile True: time.sleep(0.1)"

    def kill_nsjail() -> None:
        deadline = time.monotonic() + 30
        while not (found := _pids_running(marker)):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        ppid = _cgroup._stat(found[0])
        assert ppid is not None
        os.kill(int(ppid[1]), signal.SIGKILL)

    killer = threading.Thread(target=kill_nsjail)
    killer.start()
    r = nsjail.run(ExecSpec(code=code, limits=Limits(wall_s=20)))
    killer.join()
    assert r.status is ExecStatus.KILLED and r.signal == signal.SIGKILL
    assert r.wall_s < 10  # not the wall limit: the run ended with its nsjail
    assert _pids_running(marker) == []


def test_the_jail_is_born_in_its_runs_cgroups(nsjail: NsjailBackend) -> None:
    # Its cgroup namespace is rooted where it started: no host cgroup path is visible, and the
    # run's limits held from its first instruction (nothing was moved in later).
    if not nsjail.cgroups:
        pytest.skip("needs cgroups")
    r = nsjail.run(ExecSpec(code="print(open('/proc/self/cgroup').read())"))
    assert r.ok, r
    lines = dict(line.split(":", 2)[1:] for line in r.stdout.split())
    for ctl in ("memory", "pids", "cpu", "cpuacct"):
        owner = next(k for k in lines if ctl in k.split(","))
        assert lines[owner] == "/", r.stdout
