"""Storage faults on a real tmpfs: a full disk and a read-only directory under the state dir.

- A file action's DONE waits for the next transaction: a disk that fills up fails the next
  action before its effect, the queued DONE is written once there is space, and closing the
  episode rolls back everything, marking it rolled_back only when the workspace is restored;
  a process killed meanwhile is recovered by probing the action whose DONE it lost.
- A full disk while the HMAC key is created leaves no key (never a short one).
- Journal errors name the real cause (a full disk), not SQLite's follow-up error.
- A state dir where the owner lock cannot be created refuses the episode with a RevexError and
  registers nothing.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from fault_tmpfs import fill, mounted

from revex import RevexError, Runtime
from revex.errors import JournalError, StateError
from revex.runtime.journal import Status


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("op", ["write_new", "append"])
def test_a_full_disk_fails_the_next_action_before_its_effect_and_close_restores_everything(
        tmp_path: Path, op: str) -> None:
    """A file action's DONE waits for the next transaction (the next INTENT). When the disk
    fills up, that transaction fails: the next action raises before its effect (write-ahead),
    the waiting DONE stays queued (it is written, not probed, once there is space), and closing
    the episode then rolls everything back."""
    hit = False
    with mounted(tmp_path / "m", "2m") as mount:
        # the free space left decides which transaction fails first: search for a level at
        # which an action succeeds (its DONE queued) and a later one cannot be journaled
        for pages in range(0, 24):
            state, ws = mount / f"state{pages}", tmp_path / f"ws{pages}"
            ws.mkdir()
            (ws / "old.txt").write_text("old")
            before = _tree(ws)
            rt = Runtime(state, audit=None)
            ep = rt.episode(ws)
            ep.fs.write_text("first.txt", "1")
            filler = fill(mount, pages)
            done: list[str] = []
            error: RevexError | None = None
            for i in range(40):
                name = f"new{i}.txt"
                try:
                    if op == "append":
                        ep.fs.append("old.txt", f"+{i}")
                    else:
                        ep.fs.write_text(name, "new")
                except RevexError as exc:
                    error = exc
                    break
                done.append(name)
            if error is not None and done:
                hit = True
                # the failing action changed nothing: its INTENT was not durable
                assert isinstance(error, JournalError), error
                assert "full" in str(error), error
                if op == "append":
                    assert (ws / "old.txt").read_text() == "old" + "".join(
                        f"+{i}" for i in range(len(done)))
                else:
                    assert sorted(p.name for p in ws.glob("new*")) == sorted(done)
                    assert not (ws / f"new{len(done)}.txt").exists()
                assert rt.journal._deferred, "the last DONE should still be queued"
            filler.unlink()
            ep.close()
            records = rt.journal.records(ep.id)
            # every INTENT has an outcome, and the queued ones were written, not probed
            outcomes = {r.refers_to for r in records if r.status in (Status.DONE,
                                                                       Status.FAILED)}
            assert all(r.seq in outcomes for r in records if r.status is Status.INTENT)
            assert not [r for r in records if r.params.get("probed")]
            info = rt.journal.episode(ep.id)
            assert info is not None and info["status"] == "rolled_back"
            assert _tree(ws) == before
            assert rt.verify().ok
            rt.close()
            if hit:
                break
    assert hit, "no free-space level made a later action fail; the search range is too small"


KILLED_ON_A_FULL_DISK = r"""
import os, signal, sys
from revex import Runtime
from revex.errors import JournalError
state, ws, filler, leave = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
rt = Runtime(state, audit=None)
ep = rt.episode(ws)
ep.fs.write_text("old.txt", "changed")
ep.fs.write_text("first.txt", "1")
fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
while True:  # fill the disk, then leave `leave` pages free
    try:
        os.write(fd, b"\0" * 4096)
    except OSError:
        break
os.ftruncate(fd, max(0, os.fstat(fd).st_size - leave * 4096))
i = 0
while True:  # act until the journal cannot take the next INTENT
    try:
        ep.fs.write_text(f"new{i}.txt", "new")
    except JournalError:
        break
    i += 1
print(i, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # the queued DONE dies with the process
"""


def test_a_kill_on_a_full_disk_with_an_outcome_queued_is_recovered_by_probing(
        tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(root), os.environ.get("PYTHONPATH", "")])}
    hit = False
    with mounted(tmp_path / "m", "2m") as mount:
        for pages in range(0, 24):
            state, ws = mount / f"state{pages}", tmp_path / f"ws{pages}"
            ws.mkdir()
            (ws / "old.txt").write_text("old")
            before = _tree(ws)
            proc = subprocess.run(
                [sys.executable, "-c", KILLED_ON_A_FULL_DISK, str(state), str(ws),
                 str(mount / "filler"), str(pages)],
                env=env, capture_output=True, text=True, timeout=120)
            assert proc.returncode == -9, proc.stderr
            written = int(proc.stdout)
            (mount / "filler").unlink()
            hit = written > 0  # an action went through on the nearly full disk
            # the last action that went through: its effect is there, its outcome was queued
            last = f"new{written - 1}.txt" if written else "first.txt"
            assert (ws / last).read_text() == ("new" if written else "1")
            rt = Runtime(state, audit=None)  # recovery
            try:
                probed = [r.target for r in rt.journal.records() if r.params.get("probed")]
                assert probed == [last], probed
                assert _tree(ws) == before
                assert [e.status for e in rt.episodes()] == ["recovered"]
                assert rt.verify().ok
            finally:
                rt.close()
            if hit:
                break
    assert hit, "no free-space level let an action through; the search range is too small"


def test_a_full_disk_while_creating_the_key_leaves_no_key(tmp_path: Path) -> None:
    with mounted(tmp_path / "m", "1m") as mount:
        state = mount / "state"
        filler = fill(mount)
        with pytest.raises(RevexError) as info:
            Runtime(state, audit=None)
        assert "No space left" in str(info.value)
        assert not (state / "hmac.key").exists()
        assert [p.name for p in state.iterdir() if "hmac" in p.name] == []
        filler.unlink()
        rt = Runtime(state, audit=None)
        rt.close()
        assert len((state / "hmac.key").read_bytes()) == 32


def test_a_full_disk_journal_error_names_the_full_disk(tmp_path: Path) -> None:
    with mounted(tmp_path / "m", "1m") as mount:
        rt = Runtime(mount / "state", audit=None)
        ws = tmp_path / "ws"
        with rt.episode(ws) as ep:
            filler = fill(mount)
            with pytest.raises(JournalError) as info:
                for i in range(50):  # a few may still fit in pages the journal already has
                    ep.fs.write_text(f"f{i}.txt", "x" * 100)
            filler.unlink()
        message = str(info.value)
        assert "full" in message and "no transaction is active" not in message, message
        assert _tree(ws) == {}
        rt.close()


def _rows(state: Path) -> list[tuple[str, str]]:
    db = sqlite3.connect(state / "journal.db")
    try:
        return db.execute("SELECT id, status FROM episodes").fetchall()
    finally:
        db.close()


def test_an_unwritable_lock_dir_refuses_the_episode_and_registers_nothing(
        tmp_path: Path) -> None:
    state = tmp_path / "state"
    Runtime(state, audit=None).close()
    with mounted(state / "locks", "64k", "ro"):
        rt = Runtime(state, audit=None)
        with pytest.raises(StateError) as info:
            rt.episode(tmp_path / "ws")
        assert "lock" in str(info.value) and "Read-only" in str(info.value)
        rt.close()
    assert _rows(state) == []
