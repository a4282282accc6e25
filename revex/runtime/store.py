"""Content-addressed pre-image store.

Blobs live under ``objects/ab/cdef…`` named by their sha256. A blob is written to a temporary file
while it is hashed (streamed in chunks, never read whole into memory), fsynced, then renamed into
place, so a blob that exists is complete. Metadata (type, mode, mtime, symlink target, absence)
travels in manifests stored in the journal; the store only holds bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from revex.errors import StateError

CHUNK = 1 << 20


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
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    hasher.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
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

    def read_bytes(self, digest: str) -> bytes:
        fd = self.open(digest)
        try:
            with os.fdopen(fd, "rb") as f:
                return f.read()
        except BaseException:
            raise

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
