"""An undo of a file action is UNDONE only once the target holds its pre-state again.

The fault used here is real, not mocked: the pre-image blob is damaged (bit rot, or an edit
outside revex), in the content store's files or, for a small one, in the journal's blobs table,
so the restore writes bytes other than the recorded ones.
The restore itself "succeeds"; only re-reading the target after it shows that the undo did not
happen, and the rollback must say so with a ConflictError instead of reporting success.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest

from revex import ConflictError, Runtime
from revex.runtime.journal import INLINE_MAX, Status


def _damage_blob(rt: Runtime, data: bytes) -> None:
    digest = hashlib.sha256(data).hexdigest()
    blob = rt.store.path_of(digest)
    if len(data) > INLINE_MAX:
        os.chmod(blob, 0o644)
        raw = bytearray(blob.read_bytes())
        raw[0] ^= 0xFF
        blob.write_bytes(bytes(raw))
        return
    assert not blob.exists()  # a small pre-image is kept in the journal
    db = sqlite3.connect(rt.state_dir / "journal.db", isolation_level=None)
    try:
        (stored,) = db.execute("SELECT data FROM blobs WHERE sha=?", (digest,)).fetchone()
        raw = bytearray(stored)
        raw[0] ^= 0xFF
        db.execute("UPDATE blobs SET data=? WHERE sha=?", (bytes(raw), digest))
    finally:
        db.close()


def _undone(rt: Runtime, episode_id: str) -> list[str]:
    return [r.target for r in rt.journal.records(episode_id) if r.status is Status.UNDONE]


@pytest.mark.parametrize("size", ["small", "large"])
def test_an_undo_that_restores_wrong_bytes_is_a_conflict(tmp_path: Path, size: str) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    original = b"the original content\n" * (1 if size == "small" else INLINE_MAX // 10)
    (ws / "a.txt").write_bytes(original)
    (ws / "b.txt").write_text("b")
    with Runtime(state_dir=tmp_path / "state", audit=None) as rt:
        with rt.episode(workspace=ws, on_exit="commit") as ep:
            ep.fs.write_text("a.txt", "changed by the episode")
            ep.fs.write_text("b.txt", "changed too")
        _damage_blob(rt, original)
        with pytest.raises(ConflictError) as info:
            rt.undo(ep.id)
        message = str(info.value)
        assert "'a.txt'" in message and "did not restore" in message and "sha256" in message
        # the newer action (b.txt) was undone and verified; a.txt is not marked undone
        assert _undone(rt, ep.id) == ["b.txt"]
        assert rt.journal.episode(ep.id)["status"] == "conflict"
    assert (ws / "b.txt").read_text() == "b"


def test_a_recursive_rmdir_whose_tree_comes_back_wrong_is_a_conflict(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "d" / "sub").mkdir(parents=True)
    inner = b"inner file of the removed tree\n"
    (ws / "d" / "sub" / "inner.txt").write_bytes(inner)
    (ws / "d" / "top.txt").write_text("top")
    with Runtime(state_dir=tmp_path / "state", audit=None) as rt:
        ep = rt.episode(workspace=ws, on_exit="commit")
        with ep:
            ep.fs.rmdir("d", recursive=True)
            _damage_blob(rt, inner)
            with pytest.raises(ConflictError) as info:
                ep.rollback()
            assert "'d'" in str(info.value) and "did not restore" in str(info.value)
            assert _undone(rt, ep.id) == []


def test_a_verified_undo_is_still_undone(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a.txt").write_text("a")
    os.chmod(ws / "a.txt", 0o600)
    with Runtime(state_dir=tmp_path / "state", audit=None) as rt:
        with rt.episode(workspace=ws, on_exit="commit") as ep:
            ep.fs.write_text("a.txt", "new", mode=0o644)
            ep.fs.symlink("ln", "a.txt")
            ep.fs.mkdir("d", 0o700)
            ep.fs.rename("d", "e")
        assert rt.undo(ep.id) == 4
        assert sorted(_undone(rt, ep.id)) == sorted(["a.txt", "d -> e", "d", "ln"])
    assert (ws / "a.txt").read_text() == "a"
    assert os.stat(ws / "a.txt").st_mode & 0o777 == 0o600
    assert sorted(os.listdir(ws)) == ["a.txt"]
