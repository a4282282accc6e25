"""Big files go through revex streamed, and stay exact.

- ``ep.fs.write_from`` takes a host path, a file object or an iterable of chunks; a 64 MiB file
  (dense, and sparse) written, overwritten and rolled back comes back byte-exact, holes stay
  holes (in the workspace and in the content store), and Python-level memory stays a few chunks
  (tracemalloc), whatever the file size.
- A streaming write that fails halfway (the source iterator raises, the workspace or the state
  dir is full) leaves nothing half-applied: the workspace holds its pre-state, no temp or spool
  file is left, and the journal says FAILED (or holds nothing, when the source failed before
  the action began).
"""

from __future__ import annotations

import hashlib
import io
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_tmpfs import mounted

from revex import Runtime
from revex.errors import ActionFailed
from revex.runtime.journal import Status
from revex.runtime.store import CHUNK, ContentStore, copy_sparse, sha256_file

MIB = 1 << 20
SIZE = 64 * MIB


def _dense(path: Path, size: int, seed: int) -> None:
    block = bytearray(hashlib.sha256(str(seed).encode()).digest() * (MIB // 32))
    with open(path, "wb", buffering=0) as f:
        for i in range(size // MIB):
            block[:8] = i.to_bytes(8, "little")
            f.write(block)


def _sparse(path: Path, size: int, seed: int) -> None:
    """Data at the start, in the middle and at the very end; holes in between."""
    with open(path, "wb") as f:
        for at in (0, size // 2, size - 4096):
            f.seek(at)
            f.write(hashlib.sha256(f"{seed}-{at}".encode()).digest() * 128)


def _allocated(path: Path) -> int:
    return os.lstat(path).st_blocks * 512


def _blob_files(state: Path) -> list[Path]:
    return [p for p in (state / "store" / "objects").rglob("*") if p.is_file()]


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_a_big_file_written_overwritten_and_rolled_back_is_byte_exact(
        tmp_path: Path, kind: str) -> None:
    make = _dense if kind == "dense" else _sparse
    ws, state = tmp_path / "ws", tmp_path / "state"
    ws.mkdir()
    make(ws / "old.bin", SIZE, seed=1)
    make(tmp_path / "new.bin", SIZE, seed=2)
    make(tmp_path / "other.bin", SIZE, seed=3)
    old_sha, new_sha = sha256_file(ws / "old.bin"), sha256_file(tmp_path / "new.bin")
    rt = Runtime(state, audit=None)
    with rt.episode(ws) as ep:
        assert ep.fs.write_from("old.bin", tmp_path / "new.bin") == SIZE
        assert ep.fs.write_from("fresh.bin", str(tmp_path / "other.bin")) == SIZE
        assert sha256_file(ws / "old.bin") == new_sha
        assert sha256_file(ws / "fresh.bin") == sha256_file(tmp_path / "other.bin")
        if kind == "sparse":
            # holes stay holes: in the workspace, and in the pre-image blob of the old file
            assert _allocated(ws / "old.bin") < 4 * MIB
            assert _allocated(ws / "fresh.bin") < 4 * MIB
            (blob,) = _blob_files(state)
            assert blob.stat().st_size == SIZE and _allocated(blob) < 4 * MIB
        assert ep.rollback() == 2
    assert sorted(os.listdir(ws)) == ["old.bin"]
    assert sha256_file(ws / "old.bin") == old_sha
    if kind == "sparse":
        assert _allocated(ws / "old.bin") < 4 * MIB
    rt.close()


def test_write_from_takes_paths_file_objects_and_iterables(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"0123456789" * 1000)
    rt = Runtime(tmp_path / "state", audit=None)
    with rt.episode(tmp_path / "ws") as ep:
        assert ep.fs.write_from("path", src) == 10_000
        with open(src, "rb") as f:
            f.read(5)  # a file object is written whole, from its start
            assert ep.fs.write_from("fileobj", f) == 10_000
        with open(tmp_path / "w.bin", "w+b") as f:
            f.write(b"buffered, not yet flushed")
            assert ep.fs.write_from("flushed", f) == 25
        assert ep.fs.write_from("chunks", iter([b"ab", bytearray(b"cd"), memoryview(b"ef")])) == 6
        assert ep.fs.write_from("bytesio", io.BytesIO(b"x" * (3 * CHUNK + 7))) == 3 * CHUNK + 7
        assert ep.fs.write_from("mode", [b"m"], mode=0o640) == 1
        assert ep.fs.read_bytes("path") == src.read_bytes()
        assert ep.fs.read_bytes("fileobj") == src.read_bytes()
        assert ep.fs.read_bytes("flushed") == b"buffered, not yet flushed"
        assert ep.fs.read_bytes("chunks") == b"abcdef"
        assert ep.fs.read_bytes("bytesio") == b"x" * (3 * CHUNK + 7)
        assert (ep.workspace / "mode").stat().st_mode & 0o777 == 0o640
        with pytest.raises(TypeError, match="write_bytes"):
            ep.fs.write_from("no", b"bytes go to write_bytes")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="chunks must be bytes"):
            ep.fs.write_from("no", ["text"])  # type: ignore[list-item]
        with open(tmp_path / "wo.bin", "wb") as f, pytest.raises(OSError, match="not open for"):
            ep.fs.write_from("no", f)
        os.mkfifo(tmp_path / "fifo")
        with pytest.raises(OSError, match="not a regular file"):
            ep.fs.write_from("no", tmp_path / "fifo")
        assert not ep.fs.exists("no")
        assert ep.rollback() == 6
    assert os.listdir(tmp_path / "ws") == []
    rt.close()


def test_streaming_keeps_memory_to_a_few_chunks(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    _dense(ws / "big.bin", SIZE, seed=1)
    _dense(tmp_path / "src.bin", SIZE, seed=2)
    before = sha256_file(ws / "big.bin")
    rt = Runtime(tmp_path / "state", audit=None)
    with rt.episode(ws) as ep:
        tracemalloc.start()
        try:
            # pre-image into the store, new bytes in, rollback restores the old bytes
            ep.fs.write_from("big.bin", tmp_path / "src.bin")
            ep.fs.write_from("spooled.bin", (b"y" * MIB for _ in range(SIZE // MIB)))
            ep.rollback()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 8 * MIB, f"peak Python memory {peak / MIB:.1f} MiB for {SIZE // MIB} MiB files"
    assert sha256_file(ws / "big.bin") == before and os.listdir(ws) == ["big.bin"]
    rt.close()


def test_a_source_that_fails_halfway_changes_and_journals_nothing(tmp_path: Path) -> None:
    ws, state = tmp_path / "ws", tmp_path / "state"
    ws.mkdir()
    (ws / "keep.txt").write_text("old")

    def chunks() -> Iterator[bytes]:
        yield b"a" * MIB
        yield b"b" * MIB
        raise RuntimeError("the source broke")

    rt = Runtime(state, audit=None)
    with rt.episode(ws) as ep:
        with pytest.raises(RuntimeError, match="the source broke"):
            ep.fs.write_from("keep.txt", chunks())
        assert (ws / "keep.txt").read_text() == "old"
        assert [r.kind for r in rt.journal.records(ep.id)] == ["episode.begin"]
        assert list((state / "store" / "tmp").iterdir()) == []  # the spool is unnamed
    assert sorted(os.listdir(ws)) == ["keep.txt"]
    rt.close()


def test_a_full_workspace_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    with mounted(tmp_path / "m", "8m") as ws:
        (ws / "keep.bin").write_bytes(b"old" * 1000)
        _dense(tmp_path / "src.bin", 16 * MIB, seed=1)
        rt = Runtime(tmp_path / "state", audit=None)
        with rt.episode(ws) as ep:
            with pytest.raises(ActionFailed, match="No space left"):
                ep.fs.write_from("keep.bin", tmp_path / "src.bin")
            assert sorted(os.listdir(ws)) == ["keep.bin"]
            assert (ws / "keep.bin").read_bytes() == b"old" * 1000
            statuses = [r.status for r in rt.journal.records(ep.id) if r.kind == "fs.write"]
            assert statuses == [Status.INTENT, Status.FAILED]
        assert sorted(os.listdir(ws)) == ["keep.bin"]
        assert rt.verify().ok
        rt.close()


def test_a_full_state_dir_refuses_the_pre_image_and_changes_nothing(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    _dense(ws / "big.bin", 16 * MIB, seed=1)
    before = sha256_file(ws / "big.bin")
    with mounted(tmp_path / "m", "8m") as mount:
        state = mount / "state"
        rt = Runtime(state, audit=None)
        with rt.episode(ws) as ep:
            with pytest.raises(ActionFailed, match="No space left"):
                ep.fs.write_from("big.bin", [b"new"])  # its 16 MiB pre-image does not fit
            assert sha256_file(ws / "big.bin") == before
            assert list((state / "store" / "tmp").iterdir()) == []
            assert _blob_files(state) == []
            statuses = [r.status for r in rt.journal.records(ep.id) if r.kind == "fs.write"]
            assert statuses == [Status.FAILED]  # no INTENT: nothing was about to change
        assert sorted(os.listdir(ws)) == ["big.bin"] and sha256_file(ws / "big.bin") == before
        rt.close()


def test_copy_sparse_and_the_store_leave_zero_chunks_as_holes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    with open(src, "wb") as f:
        f.write(b"\0" * (3 * CHUNK))  # allocated zeros: written, but not data worth a block
        f.write(b"tail")
    dst = tmp_path / "dst"
    sfd, dfd = os.open(src, os.O_RDONLY), os.open(dst, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        copy_sparse(sfd, dfd)
    finally:
        os.close(sfd)
        os.close(dfd)
    assert dst.read_bytes() == src.read_bytes()
    assert _allocated(dst) < CHUNK
    store = ContentStore(tmp_path / "store")
    fd = os.open(src, os.O_RDONLY)
    try:
        digest, size = store.put_fd(fd)
    finally:
        os.close(fd)
    assert size == 3 * CHUNK + 4 and digest == sha256_file(src)
    assert _allocated(store.path_of(digest)) < CHUNK
    assert store.read_bytes(digest) == src.read_bytes()
    assert store.read_bytes(digest, limit=10) == b"\0" * 10


def test_iter_records_reads_an_episode_row_by_row_as_records_does(tmp_path: Path) -> None:
    rt = Runtime(tmp_path / "state", audit=None)
    with rt.episode(tmp_path / "ws") as ep:
        for i in range(5):
            ep.fs.write_text(f"f{i}", str(i))
    with rt.episode(tmp_path / "ws") as other:
        other.fs.write_text("g", "x")
    records = list(rt.journal.iter_records(ep.id))
    assert records == rt.journal.records(ep.id)
    assert {r.episode_id for r in records} == {ep.id} and len(records) > 10
    assert list(rt.journal.iter_records("ep-nonexistent")) == []
    rt.close()
