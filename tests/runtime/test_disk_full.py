"""Storage faults on a real tmpfs: a full disk and a read-only directory under the state dir.

- A DONE record that cannot be written (the disk filled between INTENT and DONE) must not let
  the effect escape: the action undoes it before raising, and closing the episode rolls back
  everything, marking it rolled_back only when the workspace is restored.
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
def test_an_action_whose_done_cannot_be_journaled_is_undone_and_close_restores_everything(
        tmp_path: Path, op: str) -> None:
    hit = False
    with mounted(tmp_path / "m", "2m") as mount:
        # the free space left decides where the journal fails: search for the level at which
        # the INTENT fits and the DONE does not
        for pages in range(0, 24):
            state, ws = mount / f"state{pages}", tmp_path / f"ws{pages}"
            ws.mkdir()
            (ws / "old.txt").write_text("old")
            before = _tree(ws)
            rt = Runtime(state, audit=None)
            ep = rt.episode(ws)
            ep.fs.write_text("first.txt", "1")
            filler = fill(mount, pages)
            try:
                if op == "append":
                    ep.fs.append("old.txt", "+more")
                else:
                    ep.fs.write_text("new.txt", "new")
                error: RevexError | None = None
            except RevexError as exc:
                error = exc
            kinds = [r.status for r in rt.journal.records(ep.id)
                     if r.kind == ("fs.append" if op == "append" else "fs.write")
                     and r.target != "first.txt"]
            if error is not None and kinds and Status.DONE not in kinds:
                hit = True
                # the effect was undone before the error was raised, and the error says why
                assert (ws / "old.txt").read_text() == "old"
                assert not (ws / "new.txt").exists()
                assert isinstance(error, JournalError), error
                assert "full" in str(error), error
            filler.unlink()
            ep.close()
            # close gave every INTENT an outcome (probing those the full disk left without)
            records = rt.journal.records(ep.id)
            outcomes = {r.refers_to for r in records if r.status in (Status.DONE,
                                                                       Status.FAILED)}
            assert all(r.seq in outcomes for r in records if r.status is Status.INTENT)
            info = rt.journal.episode(ep.id)
            assert info is not None and info["status"] == "rolled_back"
            assert _tree(ws) == before
            assert rt.verify().ok
            rt.close()
            if hit:
                break
    assert hit, "no free-space level made the DONE record fail; the search range is too small"


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
