"""What rollback reads is what the hash chain vouches for.

- Byte flips anywhere in the journal file: either `verify` reports damage (or the journal
  refuses to open), or an undo restores everything; an undo never reports success having undone
  only some actions, and `verify` never crashes with a raw SQLite error.
- Records missing from an episode make undo refuse (nothing undone), not undo the rest.
- The episodes table is covered by `verify`, and recovery trusts only the chain: a committed
  episode edited back to `active` is not rolled back.
- The HMAC key: a short key is refused, a deleted key is not silently replaced once the
  journal has records.
"""

from __future__ import annotations

import random
import shutil
import sqlite3
import warnings
from pathlib import Path

import pytest

from revex import RevexError, Runtime
from revex.errors import JournalCorrupt, StateError

FLIPS = 100


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _committed_episode(tmp_path: Path) -> tuple[Path, Path, str, dict[str, bytes]]:
    """A state dir holding one committed episode of five file actions, and the workspace as
    it was before them."""
    state, ws = tmp_path / "state", tmp_path / "ws"
    ws.mkdir()
    (ws / "keep.txt").write_text("keep")
    (ws / "edit.txt").write_text("before")
    before = _tree(ws)
    rt = Runtime(state, audit=None)
    with rt.episode(ws, on_exit="commit") as ep:
        ep.fs.write_text("a.txt", "a")
        ep.fs.write_text("edit.txt", "after")
        ep.fs.mkdir("d")
        ep.fs.write_text("d/b.txt", "b")
        ep.fs.append("keep.txt", "+1")
    rt.close()  # checkpoints the WAL into journal.db
    assert not (state / "journal.db-wal").exists()
    return state, ws, ep.id, before


def _db(state: Path) -> sqlite3.Connection:
    return sqlite3.connect(state / "journal.db", isolation_level=None)


def test_byte_flips_are_reported_by_verify_or_undo_restores_everything(tmp_path: Path) -> None:
    state0, ws, episode_id, before = _committed_episode(tmp_path)
    after = _tree(ws)
    pristine = tmp_path / "pristine"
    shutil.copytree(ws, pristine)
    size = (state0 / "journal.db").stat().st_size
    rng = random.Random(20261129)
    outcomes = {"refused to open": 0, "verify reported": 0, "undone": 0}
    for flip in range(FLIPS):
        state = tmp_path / f"s{flip}"
        shutil.copytree(state0, state)
        shutil.rmtree(ws)  # the episode's config names this path: restore it in place
        shutil.copytree(pristine, ws)
        pos = rng.randrange(size)
        with open(state / "journal.db", "r+b") as f:
            f.seek(pos)
            byte = f.read(1)[0]
            f.seek(pos)
            f.write(bytes([byte ^ rng.randrange(1, 256)]))
        where = f"flip {flip} at byte {pos}"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rt = Runtime(state, audit=None)
        except RevexError:
            outcomes["refused to open"] += 1
            continue
        try:
            report = rt.verify()  # never raises, even on damaged pages
            assert _tree(ws) == after, f"{where}: opening changed the workspace"
            try:
                undone = rt.undo(episode_id)
            except RevexError as exc:
                assert not report.ok, f"{where}: verify said intact but undo failed: {exc}"
                # a refused undo changes nothing
                assert _tree(ws) == after, f"{where}: undo refused after a partial undo: {exc}"
                outcomes["verify reported"] += 1
                continue
            assert undone == 5 and _tree(ws) == before, (
                f"{where}: undo reported success with {undone} actions undone but the "
                f"workspace is not restored (verify: {report})")
            outcomes["undone"] += 1
        finally:
            rt.close()
            shutil.rmtree(state)
    print(outcomes)
    assert outcomes["undone"] > 0 and outcomes["verify reported"] > 0


def test_undo_refuses_when_records_of_the_episode_are_missing(tmp_path: Path) -> None:
    state, ws, episode_id, _ = _committed_episode(tmp_path)
    after = _tree(ws)
    db = _db(state)
    # the INTENT and DONE of the third action (mkdir d): the other four could still be undone
    db.execute("DELETE FROM records WHERE episode_id=? AND action_seq=3", (episode_id,))
    db.close()
    rt = Runtime(state, audit=None)
    try:
        assert not rt.verify().ok
        with pytest.raises(JournalCorrupt) as info:
            rt.undo(episode_id)
        assert "missing" in str(info.value) and "nothing was undone" in str(info.value)
        assert _tree(ws) == after
        assert rt.journal.episode(episode_id)["status"] == "committed"  # type: ignore[index]
    finally:
        rt.close()


def test_a_committed_episode_edited_back_to_active_is_reported_and_not_rolled_back(
        tmp_path: Path) -> None:
    state, ws, episode_id, _ = _committed_episode(tmp_path)
    after = _tree(ws)
    db = _db(state)
    db.execute("UPDATE episodes SET status='active' WHERE id=?", (episode_id,))
    db.close()
    rt = Runtime(state, audit=None, recover=False)
    report = rt.verify()
    rt.close()
    assert not report.ok and "episodes table" in report.reason and episode_id in report.reason
    with pytest.warns(UserWarning, match="hash-chained records say 'committed'"):
        rt = Runtime(state, audit=None)  # recovery runs here
    rt.close()
    assert _tree(ws) == after


def test_an_edited_episode_config_is_reported_and_refused_by_undo(tmp_path: Path) -> None:
    state, ws, episode_id, _ = _committed_episode(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(ws, elsewhere)
    db = _db(state)
    db.execute("UPDATE episodes SET config=replace(config, ?, ?) WHERE id=?",
               (str(ws), str(elsewhere), episode_id))
    db.close()
    rt = Runtime(state, audit=None)
    try:
        report = rt.verify()
        assert not report.ok and "config" in report.reason
        with pytest.raises(JournalCorrupt, match="config"):
            rt.undo(episode_id)
        assert _tree(elsewhere) == _tree(ws)
    finally:
        rt.close()


@pytest.mark.parametrize("length", [0, 31, 33])
def test_a_key_of_the_wrong_length_is_refused(tmp_path: Path, length: int) -> None:
    state, _, _, _ = _committed_episode(tmp_path)
    (state / "hmac.key").write_bytes(b"k" * length)
    with pytest.raises(StateError, match=f"has {length} bytes"):
        Runtime(state, audit=None)


def test_a_deleted_key_is_not_replaced_once_the_journal_has_records(tmp_path: Path) -> None:
    state, _, _, _ = _committed_episode(tmp_path)
    (state / "hmac.key").unlink()
    with pytest.raises(StateError, match=r"key .* is missing"):
        Runtime(state, audit=None)
    assert not (state / "hmac.key").exists()


def test_a_missing_key_is_created_while_the_journal_is_empty(tmp_path: Path) -> None:
    state = tmp_path / "state"
    Runtime(state, audit=None).close()
    (state / "hmac.key").unlink()
    Runtime(state, audit=None).close()
    key = state / "hmac.key"
    assert len(key.read_bytes()) == 32 and key.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("page", [2, 3, 4, 5, 6])
def test_a_damaged_page_is_reported_by_verify_and_refused_by_undo_never_a_raw_sqlite_error(
        tmp_path: Path, page: int) -> None:
    state, ws, episode_id, _ = _committed_episode(tmp_path)
    after = _tree(ws)
    size = (state / "journal.db").stat().st_size
    page_size = 4096
    assert size >= page * page_size
    with open(state / "journal.db", "r+b") as f:
        f.seek((page - 1) * page_size)
        f.write(bytes(random.Random(page).randrange(256) for _ in range(page_size)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rt = Runtime(state, audit=None)
    except RevexError:
        return  # refused to open, naming the damage: nothing can be undone wrongly
    try:
        report = rt.verify()
        assert not report.ok and report.reason
        with pytest.raises(RevexError):
            rt.undo(episode_id)
        assert _tree(ws) == after
    finally:
        rt.close()


_DIE_WITH_EPISODES_OPEN = """
import os, sys
from pathlib import Path
from revex import Runtime
rt = Runtime(Path(sys.argv[1]), audit=None)
for k in range(3):
    ep = rt.episode(Path(sys.argv[2]) / str(k)).__enter__()
    ep.fs.write_text("new.txt", str(k))
os._exit(0)  # the owner dies with three episodes active: their locks are free now
"""


def test_recovery_of_several_dead_episodes_checks_the_pages_once(tmp_path: Path) -> None:
    """integrity_check reads the whole file: recovery runs it once per pass, not once per
    episode (three dead episodes: one check), and still before the first undo."""
    import subprocess
    import sys

    state, wss = tmp_path / "state", tmp_path / "ws"
    for k in range(3):
        (wss / str(k)).mkdir(parents=True)
    subprocess.run([sys.executable, "-c", _DIE_WITH_EPISODES_OPEN, str(state), str(wss)],
                   check=True, cwd=Path(__file__).parents[2])
    assert all((wss / str(k) / "new.txt").exists() for k in range(3))
    rt = Runtime(state, audit=None, recover=False)
    calls: list[bool] = []
    check = rt.journal.check_pages

    def counted() -> None:  # a spy: the real check runs
        calls.append(any((wss / str(k) / "new.txt").exists() for k in range(3)))
        check()

    rt.journal.check_pages = counted  # type: ignore[method-assign]
    try:
        assert len(rt.recover()) == 3
        assert calls == [True]  # once, before anything was undone
        assert not any((wss / str(k) / "new.txt").exists() for k in range(3))
    finally:
        rt.close()


@pytest.mark.parametrize("edit", [
    "UPDATE records SET target = 'elsewhere.txt' WHERE seq = ?",  # content: the hash fails
    "UPDATE records SET params = ' ' || params WHERE seq = ?",  # the same JSON value
    "UPDATE records SET ts = ts + 1e-6 WHERE seq = ?",
])
def test_a_live_rollback_refuses_a_row_edited_after_this_process_wrote_it(
        tmp_path: Path, edit: str) -> None:
    """A live rollback skips recomputing the hash and HMAC of rows exactly as this process
    wrote them (Journal.wrote); a row changed in the file since, even only in the spelling of
    its JSON, gets the full check and the rollback undoes nothing."""
    ws = tmp_path / "ws"
    ws.mkdir()
    rt = Runtime(tmp_path / "state", audit=None)
    try:
        with pytest.raises(JournalCorrupt, match="does not match its hash"), \
                rt.episode(ws) as ep:
            ep.fs.write_text("a.txt", "a")
            ep.fs.write_text("b.txt", "b")
            intent = next(r for r in rt.journal.records(ep.id)
                          if r.status.value == "INTENT" and r.target == "b.txt")
            row = rt.journal._read("SELECT * FROM records WHERE seq=?", (intent.seq,))[0]
            assert rt.journal.wrote(row)  # as written: the check may be skipped
            db = _db(tmp_path / "state")
            db.execute(edit, (intent.seq,))
            db.close()
            row = rt.journal._read("SELECT * FROM records WHERE seq=?", (intent.seq,))[0]
            assert not rt.journal.wrote(row)
            ep.rollback()
        assert sorted(p.name for p in ws.iterdir()) == ["a.txt", "b.txt"]  # nothing undone
    finally:
        rt.close()


def test_rows_written_before_a_reopen_or_by_another_journal_are_never_taken_as_written(
        tmp_path: Path) -> None:
    from revex.runtime.journal import Journal

    state, ws, episode_id, _ = _committed_episode(tmp_path)
    rt = Runtime(state, audit=None)  # this process reopened it: it wrote none of its rows
    other = Journal(state / "journal.db", (state / "hmac.key").read_bytes())
    try:
        with rt.episode(ws) as ep:  # a second writer beside it, on the same file
            ep.fs.write_text("new.txt", "n")
            rows = rt.journal._read("SELECT * FROM records ORDER BY seq")
            mine = [r for r in rows if r[1] == ep.id]
            assert mine and all(rt.journal.wrote(r) for r in mine)
            assert not any(rt.journal.wrote(r) for r in rows if r[1] == episode_id)
            assert not any(other.wrote(r) for r in rows)
    finally:
        rt.close()
        other.close()
