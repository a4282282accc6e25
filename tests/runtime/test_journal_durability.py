"""What each action costs in fsyncs, and what a power loss may take away.

The commit protocol (see :mod:`revex.runtime.journal`): an INTENT, with its undo information and
its small pre-images, is one durable commit before the effect; an outcome is committed without
an fsync; a read is not a transaction of its own. Two kinds of test keep that honest:

- the real system calls, traced with strace: exactly one fsync of the journal's WAL per
  mutating action, before the action's effect (the rename that puts the new file in place),
  and none per read;
- a power-loss model: the journal files are copied after every durable commit (what an fsync
  guarantees); at a chosen moment the process "loses power": the journal goes back to that
  copy, losing every non-durable commit after it (outcomes, reads, the last CLRs of a
  rollback), while the workspace keeps every effect. Recovery must still bring the workspace
  back exactly and the journal must verify.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from revex import ActionFailed, PolicyViolation, Runtime
from revex.runtime.journal import Journal
from tests.helpers import POOL, diff_trees, populate, random_fs_action, snapshot_tree

ROOT = Path(__file__).resolve().parents[2]

# ---- the real system calls ---------------------------------------------------------------------

CHILD = r"""
import os, sys
from revex import Runtime
state, ws, op, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rt = Runtime(state, audit=None)
ep = rt.episode(ws)
ep.fs.write_bytes("same", b"y" * 100)
os.access("/revex-marker-begin", os.F_OK)
for i in range(n):
    if op == "new":
        ep.fs.write_bytes(f"f{i}", b"x" * 100)
    elif op == "overwrite":
        ep.fs.write_bytes("same", b"x" * 100 + str(i).encode())
    else:
        ep.fs.read_bytes("same")
os.access("/revex-marker-end", os.F_OK)
ep.close()
rt.close()
"""


def _traced(tmp: Path, op: str, n: int) -> list[str]:
    """The child's fsync, fdatasync, rename, pwrite and openat calls between its two
    markers."""
    out = tmp / f"trace-{op}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")])}
    subprocess.run(
        ["strace", "-f", "-qq", "-y", "-o", str(out), "-e",
         "trace=fsync,fdatasync,rename,renameat,renameat2,pwrite64,openat,access,faccessat,"
         "faccessat2",
         sys.executable, "-c", CHILD, str(tmp / f"state-{op}"), str(tmp / f"ws-{op}"), op,
         str(n)], check=True, env=env, timeout=300)
    lines = out.read_text().splitlines()
    begin = next(i for i, line in enumerate(lines) if "revex-marker-begin" in line)
    end = next(i for i, line in enumerate(lines) if "revex-marker-end" in line)
    return [line for line in lines[begin + 1:end] if "revex-marker" not in line]


def _syncs(lines: list[str]) -> list[str]:
    return [line for line in lines if re.search(r"\b(fsync|fdatasync)\(", line)]


needs_strace = pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")


@needs_strace
@pytest.mark.parametrize("op", ["new", "overwrite"])
def test_a_small_write_is_one_fsync_of_the_journal_before_its_effect(
        tmp_path: Path, op: str) -> None:
    n = 20
    calls = _traced(tmp_path, op, n)
    syncs = _syncs(calls)
    # exactly one durable commit per action: the INTENT (the pre-image of an overwrite is in
    # the same transaction, no blob file of its own); the DONE costs none
    assert len(syncs) == n, calls
    assert all("journal.db-wal" in line for line in syncs), syncs
    assert not list((tmp_path / f"state-{op}" / "store" / "objects").rglob("*"))
    # write-ahead: each action's effect (a new file created in the workspace, or a temp file
    # renamed into place; an overwrite's bytes written into the file) comes after an fsync of
    # the journal that came after the previous effect
    synced = False
    effects = 0
    for line in calls:
        if line in syncs:
            synced = True
        elif re.search(r"\brename(at2?)?\(", line) or (
                "pwrite64(" in line and f"/ws-{op}/" in line) or (
                "openat(" in line and "O_CREAT" in line and f"/ws-{op}" in line):
            assert synced, f"an effect before its INTENT was durable: {line}"
            synced, effects = False, effects + 1
    assert effects == n, calls


@needs_strace
def test_a_read_costs_no_fsync(tmp_path: Path) -> None:
    assert _syncs(_traced(tmp_path, "read", 50)) == []


# ---- the power-loss model ----------------------------------------------------------------------

JOURNAL_FILES = ("journal.db", "journal.db-wal")


class PowerLoss:
    """Copies the journal files after every durable commit: what survives a power loss."""

    def __init__(self, state: Path, saved: Path) -> None:
        self.state, self.saved = state, saved
        self.durable_commits = 0

    def save(self) -> None:
        shutil.rmtree(self.saved, ignore_errors=True)
        self.saved.mkdir()
        for name in JOURNAL_FILES:
            if (self.state / name).exists():
                shutil.copyfile(self.state / name, self.saved / name)
        self.durable_commits += 1

    @contextlib.contextmanager
    def armed(self) -> Iterator[PowerLoss]:
        real = Journal._writing
        model = self

        @contextlib.contextmanager
        def writing(self: Journal, what: str, *, durable: bool = True) -> Iterator[None]:
            with real(self, what, durable=durable):
                yield
            if durable:
                model.save()

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Journal, "_writing", writing)
            yield self

    def strike(self) -> None:
        """The journal as the disk holds it after the power came back."""
        for name in (*JOURNAL_FILES, "journal.db-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.state / name)
        for name in JOURNAL_FILES:
            if (self.saved / name).exists():
                shutil.copyfile(self.saved / name, self.state / name)


def _records(state: Path) -> int:
    import sqlite3

    db = sqlite3.connect(state / "journal.db")
    try:
        return int(db.execute("SELECT COUNT(*) FROM records").fetchone()[0])
    finally:
        db.close()


def power_loss_after(tmp: Path, seed: int, actions: int, *, then_rollback: bool) -> int:
    """Run ``actions`` random actions (reads among them), optionally roll back, then lose the
    power; recover and compare the tree exactly. Returns how many records the loss took."""
    rng = random.Random(seed)
    base = tmp / f"p{seed}-{actions}-{int(then_rollback)}"
    ws, state = base / "ws", base / "state"
    populate(ws)
    before = snapshot_tree(ws)
    rt = Runtime(state, audit=None)
    model = PowerLoss(state, base / "durable")
    model.save()
    with model.armed():
        ep = rt.episode(ws)
        for _ in range(actions):
            with contextlib.suppress(ActionFailed, PolicyViolation, FileNotFoundError,
                                     IsADirectoryError):
                if rng.random() < 0.2:
                    ep.fs.read_bytes(rng.choice(POOL))
                else:
                    random_fs_action(ep, rng, large=100_000)
        if then_rollback:
            ep.rollback()
        rt.journal.flush()  # what a reader of the live journal would see
    live = _records(state)
    ep._owner.release()  # the process is gone
    for effect in ep._effects.values():
        effect.close()
    rt.journal._db.close()  # no checkpoint, no flush: the power is off
    model.strike()
    lost = live - _records(state)
    rt = Runtime(state, audit=None)  # recovery
    try:
        diff = diff_trees(before, snapshot_tree(ws))
        assert not diff, (f"seed {seed}, {actions} actions, rollback={then_rollback}:\n  "
                          + "\n  ".join(diff[:20]))
        assert rt.verify().ok, rt.verify()
        assert [e.status for e in rt.episodes()] == ["recovered"]
    finally:
        rt.close()
    shutil.rmtree(base)
    return lost


def test_a_power_loss_after_any_action_loses_only_outcomes_and_recovers_exactly(
        tmp_path: Path) -> None:
    lost = [power_loss_after(tmp_path, seed, actions, then_rollback=False)
            for seed in range(3) for actions in range(1, 16)]
    # the model did take non-durable commits away (each action's outcome at least)
    assert sum(1 for n in lost if n > 0) > len(lost) // 2, lost


def test_a_power_loss_after_a_rollback_loses_its_last_clrs_and_recovers_exactly(
        tmp_path: Path) -> None:
    lost = [power_loss_after(tmp_path, seed, actions, then_rollback=True)
            for seed in range(3) for actions in (1, 5, 20, 70)]
    # the last batch of CLRs and the rollback's end were lost, and recovery finished it
    assert all(n > 0 for n in lost), lost


def test_a_kill_between_an_effect_and_its_outcome_is_resolved_by_probing(
        tmp_path: Path) -> None:
    """SIGKILL right after an effect, before its outcome reached the journal at all."""
    ws, state = tmp_path / "ws", tmp_path / "state"
    populate(ws)
    before = snapshot_tree(ws)
    child = r"""
import os, signal, sys
from revex import Runtime
state, ws = sys.argv[1:3]
rt = Runtime(state, audit=None)
ep = rt.episode(ws)
ep.fs.write_bytes("a", b"first")
ep.fs.write_bytes("keep.txt", b"changed")
ep.fs.write_bytes("sub/inner.bin", b"replaced")
# a file action's DONE waits for the next transaction: the effect happened, its DONE never
# reaches the journal
assert [r["target"] for r in rt.journal._deferred] == ["sub/inner.bin"]
os.kill(os.getpid(), signal.SIGKILL)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", child, str(state), str(ws)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    assert (ws / "sub" / "inner.bin").read_bytes() == b"replaced"  # the effect is there
    rt = Runtime(state, audit=None)
    try:
        records = rt.journal.records()
        probed = [r for r in records if r.params.get("probed")]
        assert [r.target for r in probed] == ["sub/inner.bin"]
        diff = diff_trees(before, snapshot_tree(ws))
        assert not diff, diff
        assert rt.verify().ok
    finally:
        rt.close()


def test_every_record_kind_of_an_episode_survives_a_clean_close(tmp_path: Path) -> None:
    """Outcomes, reads and CLRs written without an fsync are all in the journal once the
    episode is closed (its status change is durable and comes after them)."""
    ws = tmp_path / "ws"
    ws.mkdir()
    with Runtime(tmp_path / "state", audit=None) as rt:
        with rt.episode(ws) as ep:
            ep.fs.write_bytes("a", b"1")
            assert ep.fs.read_bytes("a") == b"1"
            ep.fs.write_bytes("a", b"2")
        seen = [(r.kind, str(r.status)) for r in rt.journal.records(ep.id)]
    assert ("fs.read", "DONE") in seen
    assert seen.count(("fs.write", "DONE")) == 2 and seen.count(("fs.write", "UNDONE")) == 2
    assert seen[-1] == ("episode.close", "EVENT")
    reopened = Runtime(tmp_path / "state", audit=None, recover=False)
    try:
        assert [(r.kind, str(r.status)) for r in reopened.journal.records(ep.id)] == seen
        assert reopened.verify().ok
    finally:
        reopened.close()


def test_a_rollback_writes_the_queued_outcomes_with_its_durable_begin_before_the_first_undo(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A live rollback reads the outcomes still queued from the queue; its begin record's
    transaction, the one durable commit before any undo, writes them first."""
    import sqlite3

    from revex.runtime.effects.files_undo import FileUndo

    ws = tmp_path / "ws"
    ws.mkdir()
    rt = Runtime(tmp_path / "state", audit=None)
    ep = rt.episode(ws)
    ep.fs.write_bytes("a", b"1")
    ep.fs.write_bytes("b", b"2")
    assert [r["target"] for r in rt.journal._deferred] == ["b"]  # b's DONE is queued
    transactions: list[bool] = []
    real_writing = Journal._writing

    @contextlib.contextmanager
    def writing(self: Journal, what: str, *, durable: bool = True) -> Iterator[None]:
        transactions.append(durable)
        with real_writing(self, what, durable=durable):
            yield

    at_first_undo: list[object] = []
    real_undo = FileUndo.undo

    def undo(self: FileUndo, item: object, *, force: bool) -> None:
        if not at_first_undo:
            raw = sqlite3.connect(tmp_path / "state" / "journal.db")
            try:
                at_first_undo.append(raw.execute(
                    "SELECT kind, status, target FROM records ORDER BY seq").fetchall()[-2:])
            finally:
                raw.close()
            at_first_undo.append(list(transactions))
        real_undo(self, item, force=force)  # type: ignore[arg-type]

    monkeypatch.setattr(Journal, "_writing", writing)
    monkeypatch.setattr(FileUndo, "undo", undo)
    assert ep.rollback() == 2
    monkeypatch.undo()
    assert at_first_undo == [[("fs.write", "DONE", "b"), ("episode.rollback.begin", "EVENT", "")],
                             [True]]
    assert list(ws.iterdir()) == []
    ep.close()
    assert rt.verify().ok
    rt.close()
