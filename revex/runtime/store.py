"""Content-addressed pre-image store, and the chunked file I/O every file path shares.

Blobs live under ``objects/ab/cdef…`` named by their sha256. A blob is written to a temporary file
while it is hashed (streamed in chunks of :data:`CHUNK`, never read whole into memory; a chunk of
zeros is left as a hole, so a sparse file's blob stays sparse), fsynced, then renamed into place,
so a blob that exists is complete. Metadata (type, mode, mtime, symlink target, absence) travels
in manifests stored in the journal; the store only holds bytes.

With an ``inline`` sink (the Runtime passes its journal), :meth:`ContentStore.put_fd` keeps a
small pre-image (at most ``inline.max_bytes``) in the journal instead: it is written durably in
the transaction of the INTENT that names it, which saves the blob file's two fsyncs (the file
and its directory) per action. :meth:`ContentStore.open` and :meth:`ContentStore.read_bytes`
find either kind; :meth:`ContentStore.path_of` names files only (what ``put_bytes`` writes).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from revex.errors import StateError

CHUNK = 1 << 20
_ZEROS = bytes(CHUNK)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class InlineBlobs(Protocol):
    """Where small pre-images are kept durably with the records that name them (the journal)."""

    max_bytes: int

    def stage_blob(self, digest: str, data: bytes) -> None: ...

    def blob(self, digest: str) -> bytes | None: ...

    def blob_digests(self) -> list[str]: ...

    def drop_blobs(self, keep: set[str]) -> tuple[int, int]: ...


class ContentStore:
    """Blobs by sha256 under ``root`` (small ones in ``inline`` when given)."""

    def __init__(self, root: Path, inline: InlineBlobs | None = None) -> None:
        self.root = Path(root)
        self.inline = inline
        self.objects = self.root / "objects"
        try:
            self.objects.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create the content store at {self.objects}: {exc}") from exc

    def path_of(self, digest: str) -> Path:
        """The file of a blob stored as a file (every blob ``put_bytes`` stores)."""
        return self.objects / digest[:2] / digest[2:]

    def has(self, digest: str) -> bool:
        return self.path_of(digest).exists() or (
            self.inline is not None and self.inline.blob(digest) is not None)

    def put_bytes(self, data: bytes) -> str:
        """Store ``data``; return its sha256 hex digest."""
        return self._put(iter((data,)))

    def put_fd(self, fd: int) -> tuple[str, int]:
        """Store the rest of an open file descriptor, streamed; return (digest, size).

        With an inline sink, a rest of at most ``inline.max_bytes`` is staged there instead:
        it is durable once the journal's next durable append returns (the INTENT's).
        """
        head = b""
        if self.inline is not None:
            head = _read_up_to(fd, self.inline.max_bytes + 1)
            if len(head) <= self.inline.max_bytes:
                digest = hashlib.sha256(head).hexdigest()
                self.inline.stage_blob(digest, head)
                return digest, len(head)
        size = len(head)

        def chunks() -> Iterator[bytes]:
            nonlocal size
            if head:
                yield head
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
            data = self.inline.blob(digest) if self.inline is not None else None
            if data is not None:
                return _fd_with(data)
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
        """Every blob stored as a file (see :attr:`inline` for the others)."""
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
        if self.inline is not None:
            inline_removed, inline_freed = self.inline.drop_blobs(keep)
            removed, freed = removed + inline_removed, freed + inline_freed
        return removed, freed


def sha256_file_fd(fd: int) -> str:
    """Hash an open fd from its current offset, streamed."""
    hasher = hashlib.sha256()
    while True:
        chunk = os.read(fd, CHUNK)
        if not chunk:
            return hasher.hexdigest()
        hasher.update(chunk)


def _read_up_to(fd: int, limit: int) -> bytes:
    """Up to ``limit`` bytes from ``fd`` (fewer only at its end)."""
    parts: list[bytes] = []
    left = limit
    while left:
        chunk = os.read(fd, left)
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _fd_with(data: bytes) -> int:
    """A read-only-in-practice fd positioned at the start of ``data`` (an anonymous file)."""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        fd: int = memfd_create("revex-blob", os.MFD_CLOEXEC)
    else:  # not Linux
        fd, name = tempfile.mkstemp(prefix="revex-blob-")
        os.unlink(name)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


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
