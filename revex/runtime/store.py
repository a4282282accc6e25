"""Content-addressed pre-image store, and the chunked file I/O every file path shares.

Blobs live under ``objects/ab/cdef…`` named by their sha256. A blob is written to a temporary file
while it is hashed (streamed in chunks of :data:`CHUNK`, never read whole into memory; a chunk of
zeros is left as a hole, so a sparse file's blob stays sparse), fsynced, then renamed into place,
so a blob that exists is complete. Metadata (type, mode, mtime, symlink target, absence) travels
in manifests stored in the journal; the store only holds bytes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from revex.errors import StateError

CHUNK = 1 << 20
_ZEROS = bytes(CHUNK)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ContentStore:
    """Blobs by sha256 under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.objects = self.root / "objects"
        try:
            self.objects.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create the content store at {self.objects}: {exc}") from exc

    def path_of(self, digest: str) -> Path:
        return self.objects / digest[:2] / digest[2:]

    def has(self, digest: str) -> bool:
        return self.path_of(digest).exists()

    def put_bytes(self, data: bytes) -> str:
        """Store ``data``; return its sha256 hex digest."""
        return self._put(iter((data,)))

    def put_fd(self, fd: int) -> tuple[str, int]:
        """Store the rest of an open file descriptor, streamed; return (digest, size)."""
        size = 0

        def chunks() -> Iterator[bytes]:
            nonlocal size
            while True:
                chunk = os.read(fd, CHUNK)
                if not chunk:
                    return
                size += len(chunk)
                yield chunk

        digest = self._put(chunks())
        return digest, size

    def _put(self, chunks: Iterable[bytes]) -> str:
        hasher = hashlib.sha256()
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, prefix="blob-")
        try:
            try:
                offset = 0
                for chunk in chunks:
                    hasher.update(chunk)
                    if not _is_zeros(chunk):
                        pwrite_all(fd, chunk, offset)
                    offset += len(chunk)
                os.ftruncate(fd, offset)
                os.fsync(fd)
            finally:
                os.close(fd)
            digest = hasher.hexdigest()
            final = self.path_of(digest)
            if final.exists():
                os.unlink(tmp_name)
                return digest
            final.parent.mkdir(exist_ok=True)
            os.replace(tmp_name, final)
            _fsync_dir(final.parent)
            return digest
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
            raise

    def open(self, digest: str) -> int:
        """Open a blob for reading; returns a raw fd. Raises StateError if the blob is missing."""
        try:
            return os.open(self.path_of(digest), os.O_RDONLY)
        except FileNotFoundError as exc:
            raise StateError(
                f"pre-image blob {digest} is missing from {self.objects}; the content store was "
                "modified outside revex"
            ) from exc

    def read_bytes(self, digest: str, limit: int | None = None) -> bytes:
        """A blob's bytes, or its first ``limit`` bytes (for small blobs: a big one is streamed
        with :meth:`open`)."""
        fd = self.open(digest)
        with os.fdopen(fd, "rb") as f:
            return f.read() if limit is None else f.read(limit)

    def digests(self) -> Iterator[str]:
        for sub in sorted(self.objects.iterdir()):
            if sub.is_dir():
                for blob in sorted(sub.iterdir()):
                    yield sub.name + blob.name

    def gc(self, keep: set[str]) -> tuple[int, int]:
        """Delete every blob not in ``keep``; return (blobs removed, bytes freed)."""
        removed = freed = 0
        for digest in list(self.digests()):
            if digest in keep:
                continue
            path = self.path_of(digest)
            with contextlib.suppress(FileNotFoundError):
                freed += path.stat().st_size
                path.unlink()
                removed += 1
        tmp_dir = self.root / "tmp"
        if tmp_dir.exists():
            for stale in tmp_dir.iterdir():
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
        return removed, freed


def sha256_file_fd(fd: int) -> str:
    """Hash an open fd from its current offset, streamed."""
    hasher = hashlib.sha256()
    while True:
        chunk = os.read(fd, CHUNK)
        if not chunk:
            return hasher.hexdigest()
        hasher.update(chunk)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hash a whole file by path, streamed."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return sha256_file_fd(fd)
    finally:
        os.close(fd)


def _is_zeros(chunk: bytes) -> bool:
    return chunk == _ZEROS[:len(chunk)] if len(chunk) <= CHUNK else not any(chunk)


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (a short write is continued)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        offset += written
        view = view[written:]


def is_sparse(fd: int) -> bool:
    """Whether the file has holes (fewer blocks allocated than its size needs)."""
    st = os.fstat(fd)
    return st.st_blocks * 512 < st.st_size


def copy_sparse(src: int, dst: int) -> None:
    """Copy the regular file ``src`` into the empty file ``dst`` in chunks, data ranges only
    (SEEK_DATA/SEEK_HOLE), leaving chunks of zeros unwritten: a sparse source stays sparse, and
    memory use is one chunk whatever the size. Falls back to reading everything where the file
    system cannot tell holes. Raises ``OSError`` (EIO when the source shrinks meanwhile)."""
    size = os.fstat(src).st_size
    pos = 0
    while pos < size:
        try:
            start = os.lseek(src, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                break  # only a hole is left
            if exc.errno != errno.EINVAL:
                raise
            start, end = pos, size
        else:
            end = min(os.lseek(src, start, os.SEEK_HOLE), size)
        while start < end:
            chunk = os.pread(src, min(CHUNK, end - start), start)
            if not chunk:
                raise OSError(errno.EIO, "the source file shrank while it was copied")
            if not _is_zeros(chunk):
                pwrite_all(dst, chunk, start)
            start += len(chunk)
        pos = end
    os.ftruncate(dst, size)
