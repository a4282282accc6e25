"""Crash safety: a process acting in an episode is killed with SIGKILL at a random moment (during
actions, or during a rollback); opening a Runtime on the same state directory recovers the
workspace to exactly the state before the episode, and the journal still verifies."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from revex import ActionFailed, PolicyViolation, Runtime
from revex.runtime.effects.base import Effect, EffectContext
from revex.runtime.effects.files import FileEffect
from revex.runtime.journal import Journal
from revex.runtime.rollback import CLR_BATCH, pending_items, rollback
from tests.helpers import (
    assert_same_tree,
    diff_trees,
    populate,
    random_fs_action,
    snapshot_tree,
)

ROOT = Path(__file__).resolve().parents[2]

# The child: opens the runtime, starts an episode, performs random actions; after
# `rollback_after` actions it announces and runs ep.rollback(). It never exits on its own
# before being killed (it sleeps at the end), so every iteration ends in a SIGKILL.
CHILD = r"""
import random, sys, time
from revex import ActionFailed, PolicyViolation, Runtime
from tests.helpers import random_fs_action

state, ws, seed, n_ops, rollback_after = sys.argv[1:6]
rng = random.Random(int(seed))
rt = Runtime(state, audit=None)
ep = rt.episode(ws)
print("started", flush=True)
for i in range(int(n_ops)):
    if i == int(rollback_after):
        print("rollback", flush=True)
        ep.rollback()
        print("rolled-back", flush=True)
    try:
        random_fs_action(ep, rng, large=256 * 1024)
    except (ActionFailed, PolicyViolation):
        pass
print("done", flush=True)
time.sleep(600)
"""


def _spawn(state: Path, ws: Path, seed: int, n_ops: int, rollback_after: int
           ) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(state), str(ws), str(seed), str(n_ops),
         str(rollback_after)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def _wait_for(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdout is not None
    got = proc.stdout.readline().strip()
    if got != line:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"child said {got!r}, expected {line!r}; stderr:\n{err}")


def _kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def _check_recovered(state: Path, ws: Path, before: dict[str, Any]) -> list[str]:
    rt = Runtime(state, audit=None)  # recovery runs on open
    try:
        assert_same_tree(before, snapshot_tree(ws))
        assert rt.verify().ok, rt.verify()
        statuses = [e.status for e in rt.episodes()]
        assert all(s == "recovered" for s in statuses), statuses
        return statuses
    finally:
        rt.close()


def crash_during_actions(tmp: Path, seed: int) -> None:
    rng = random.Random(seed)
    ws, state = tmp / f"ws{seed}", tmp / f"state{seed}"
    populate(ws)
    before = snapshot_tree(ws)
    proc = _spawn(state, ws, seed, n_ops=400, rollback_after=10**9)
    try:
        _wait_for(proc, "started")
        time.sleep(rng.uniform(0.0, 0.6))
    finally:
        _kill(proc)
    _check_recovered(state, ws, before)
    # a second open finds nothing left to do and changes nothing
    _check_recovered(state, ws, before)


def crash_during_rollback(tmp: Path, seed: int) -> bool:
    """Returns whether the kill landed before the child's rollback finished."""
    rng = random.Random(seed)
    ws, state = tmp / f"ws{seed}", tmp / f"state{seed}"
    populate(ws)
    before = snapshot_tree(ws)
    n = rng.randint(100, 300)
    proc = _spawn(state, ws, seed, n_ops=n + 50, rollback_after=n)
    assert proc.stdout is not None
    try:
        _wait_for(proc, "started")
        _wait_for(proc, "rollback")
        time.sleep(rng.uniform(0.0, 0.08))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    interrupted = "rolled-back" not in out
    _check_recovered(state, ws, before)
    if interrupted:
        rt = Runtime(state, audit=None)
        try:
            kinds = [r.kind for r in rt.journal.records()]
        finally:
            rt.close()
        # the child's rollback began and recovery finished it
        assert "episode.rollback.begin" in kinds
        assert kinds[-1] == "episode.undo", kinds[-5:]
    return interrupted


def test_sigkill_during_actions_recovers_workspace_exactly(tmp_path: Path) -> None:
    for seed in range(20):
        crash_during_actions(tmp_path, seed)


def test_sigkill_during_rollback_recovery_finishes_rollback_exactly(tmp_path: Path) -> None:
    interrupted = [crash_during_rollback(tmp_path, 1000 + seed) for seed in range(12)]
    assert any(interrupted), "no kill landed inside a rollback; widen the window"


def _resume_after_prefix(tmp: Path, seed: int) -> None:
    """Deterministic model of a kill inside a rollback: undo the first k items (their CLRs
    lost), then resume as recovery does, with every item inside the resume window."""
    rng = random.Random(seed)
    n = rng.randint(5, 40)
    for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
        base = tmp / f"{seed}-{k}"
        ws = base / "ws"
        populate(ws)
        before = snapshot_tree(ws)
        rt = Runtime(base / "state", audit=None)
        try:
            ep = rt.episode(ws)
            actions = random.Random(seed)
            for _ in range(n):
                with contextlib.suppress(ActionFailed, PolicyViolation):
                    random_fs_action(ep, actions, large=1000)
            items = pending_items(rt.journal.records(ep.id))
            assert len(items) <= CLR_BATCH
            for item in items[:k]:  # undone before the "crash", CLRs not yet written
                ep._effect("fs").undo(item, force=False)
            rollback(rt.journal, ep.id, items, ep._effect, resume_window=CLR_BATCH)
            assert_same_tree(before, snapshot_tree(ws))
        finally:
            rt.close()


def test_resumed_rollback_converges_after_any_prefix_was_undone(tmp_path: Path) -> None:
    for seed in range(25):
        _resume_after_prefix(tmp_path, seed)


# ---- a kill at every step of a rollback, in process and deterministic ------------------------

class _Killed(BaseException):
    """Stands for SIGKILL: once raised, the process does nothing more (no CLR, no cleanup)."""


# what a rollback does to the workspace, one system call each (os.open only with O_CREAT)
_MUTATING = ("open", "write", "pwrite", "ftruncate", "rename", "replace", "unlink", "mkdir",
             "rmdir", "symlink", "mkfifo", "chmod", "fchmod", "utime")


class _Death:
    """Counts the steps of a rollback (each undo, each settle, each mutating system call)
    and kills the process at step ``at`` (None: never)."""

    def __init__(self, at: int | None) -> None:
        self.at, self.steps, self.dead = at, 0, False

    def step(self) -> None:
        if self.dead:
            raise _Killed()
        self.steps += 1
        if self.at is not None and self.steps > self.at:
            self.dead = True
            raise _Killed()

    @contextlib.contextmanager
    def armed(self) -> Any:
        with pytest.MonkeyPatch.context() as mp:
            for name in _MUTATING:
                real = getattr(os, name)

                def fake(*args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
                    flags = args[1] if len(args) > 1 else kw.get("flags", 0)
                    if _name != "open" or flags & os.O_CREAT:
                        self.step()
                    return _real(*args, **kw)

                mp.setattr(os, name, fake)
            for cls, meth in ((FileEffect, "undo"), (FileEffect, "settle"),
                              (Journal, "append_many")):
                real = getattr(cls, meth, None)
                if real is None:
                    continue

                def wrapped(obj: Any, *args: Any, _real: Any = real, _meth: str = meth,
                            **kw: Any) -> Any:
                    if _meth == "append_many":
                        if self.dead:
                            raise _Killed()  # a dead process commits nothing
                    else:
                        self.step()
                    return _real(obj, *args, **kw)

                mp.setattr(cls, meth, wrapped)
            with contextlib.suppress(_Killed):
                yield self


def _rollback_in_process(state: Path, death: _Death) -> None:
    """What ``ep.rollback()`` does in the episode's process, until ``death`` strikes."""
    rt = Runtime(state, audit=None, recover=False)
    effects: dict[str, Effect] = {}
    try:
        (info,) = rt.episodes()

        def effect_for(prefix: str) -> Effect:
            if prefix not in effects:
                effects[prefix] = rt.make_effect(
                    prefix, EffectContext(info.id, info.config, rt.store))
            return effects[prefix]

        items = pending_items(rt.journal.records(info.id))
        with death.armed():
            rollback(rt.journal, info.id, items, effect_for)
    finally:
        for effect in effects.values():
            effect.close()
        rt.close()


def kill_at_every_step_of_rollback(tmp: Path, seed: int, stride: int) -> int:
    """Build one episode, then for kill points 0, stride, 2*stride, ... through its rollback:
    start from a copy of the episode's state, roll back in process until the kill, recover
    in a new Runtime, and compare the tree exactly (mtimes included). Returns the number of
    kill points tried."""
    rng = random.Random(seed)
    base, saved = tmp / f"kill{seed}", tmp / f"kill{seed}-saved"
    ws, state = base / "ws", base / "state"
    populate(ws)
    before = snapshot_tree(ws)
    rt = Runtime(state, audit=None)
    ep = rt.episode(ws)
    for _ in range(rng.randint(150, 300)):
        with contextlib.suppress(ActionFailed, PolicyViolation):
            random_fs_action(ep, rng, large=8192)
    ep._owner.release()  # the owner "dies" before rolling back
    for effect in ep._effects.values():
        effect.close()
    rt.close()
    shutil.copytree(base, saved, symlinks=True)

    def fresh() -> None:
        shutil.rmtree(base)
        shutil.copytree(saved, base, symlinks=True)

    clean = _Death(None)
    _rollback_in_process(state, clean)
    assert_same_tree(before, snapshot_tree(ws))
    tried = 0
    for at in range(0, clean.steps, stride):
        fresh()
        death = _Death(at)
        _rollback_in_process(state, death)
        assert death.dead
        rt = Runtime(state, audit=None)  # recovery
        try:
            after = snapshot_tree(ws)
            assert [e.status for e in rt.episodes()] == ["recovered"]
            assert rt.verify().ok
        finally:
            rt.close()
        diff = diff_trees(before, after)
        assert not diff, f"killed at step {at} of {clean.steps}:\n  " + "\n  ".join(diff[:20])
        tried += 1
    shutil.rmtree(saved)
    shutil.rmtree(base)
    return tried


def kill_at_every_step_of_a_failing_action(tmp: Path, act: Any, setup: Any = None) -> int:
    """Kill the process at each step of one action (prepare, apply, and the cleanup of a
    failed apply), recover, and compare the tree exactly. Returns the kill points tried."""
    at = 0
    while True:
        base = tmp / f"act{at}"
        ws, state = base / "ws", base / "state"
        populate(ws)
        if setup is not None:
            setup(ws)
        before = snapshot_tree(ws)
        rt = Runtime(state, audit=None)
        ep = rt.episode(ws)
        death = _Death(at)
        with death.armed(), contextlib.suppress(ActionFailed, PolicyViolation):
            act(ep)
        ep._owner.release()
        for effect in ep._effects.values():
            effect.close()
        rt.close()
        if not death.dead:
            return at
        rt = Runtime(state, audit=None)  # recovery
        try:
            diff = diff_trees(before, snapshot_tree(ws))
            assert not diff, f"killed at step {at}:\n  " + "\n  ".join(diff[:20])
            assert rt.verify().ok
        finally:
            rt.close()
        shutil.rmtree(base)
        at += 1


def _nonempty_d(ws: Path) -> None:
    (ws / "d").mkdir()
    (ws / "d" / "x").write_text("x")
    os.utime(ws / "d" / "x", ns=(1_500_000_000_000_000_000,) * 2)
    os.utime(ws / "d", ns=(1_500_000_000_000_000_001,) * 2)
    os.utime(ws, ns=(1_500_000_000_000_000_002,) * 2)


def test_kill_inside_the_cleanup_of_a_failed_action_recovers_mtimes(tmp_path: Path) -> None:
    """A failed apply is cleaned up by rewriting its pre-images; killed halfway, the paths
    hold their old contents (so the probe says it never took effect) with new mtimes on
    them or on the directories of a deep pre-image (sub/deeper), which must be put back."""
    # rename onto a non-empty directory fails (ENOTEMPTY) after both trees were snapshotted
    assert kill_at_every_step_of_a_failing_action(
        tmp_path / "rename", lambda ep: ep.fs.rename("sub", "d"), _nonempty_d) > 10
    # mkdir over an existing file fails (EEXIST); its cleanup rewrites the file
    assert kill_at_every_step_of_a_failing_action(
        tmp_path / "mkdir", lambda ep: ep.fs.mkdir("exec.sh")) > 3


def test_kill_at_every_step_of_a_rollback_recovers_exactly(tmp_path: Path) -> None:
    for seed in (7, 8):
        assert kill_at_every_step_of_rollback(tmp_path, seed, stride=13) > 20


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_kill_at_every_step_of_a_rollback_recovers_exactly_many(tmp_path: Path) -> None:
    for seed in range(100, 106):
        kill_at_every_step_of_rollback(tmp_path, seed, stride=1)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_sigkill_during_actions_recovers_workspace_exactly_many(tmp_path: Path) -> None:
    for seed in range(100, 400):
        crash_during_actions(tmp_path, seed)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_sigkill_during_rollback_recovery_finishes_rollback_exactly_many(
        tmp_path: Path) -> None:
    interrupted = [crash_during_rollback(tmp_path, 5000 + seed) for seed in range(200)]
    assert sum(interrupted) > len(interrupted) // 4
