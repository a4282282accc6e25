"""``ep.fs``: file operations on the episode's workspace, each one through the pipeline.

Paths are relative to the workspace. Nothing outside it can be reached: ``..`` above the root,
absolute paths and symlinks in any component raise :class:`PolicyViolation` (journaled as
DENIED). Reads and writes never follow symlinks.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

from revex.errors import PolicyViolation
from revex.runtime.effects.base import Plan
from revex.runtime.effects.files import FileEffect

if TYPE_CHECKING:
    from revex.runtime.episode import Episode


class FileSystem:
    """The file capability of an episode."""

    def __init__(self, episode: Episode) -> None:
        self._ep = episode

    def _act(self, build: Callable[[FileEffect], Plan], kind: str, target: Any) -> Any:
        return self._ep._act(lambda: build(self._ep._files()), kind, target)

    def write_bytes(self, path: str, data: bytes, *, mode: int | None = None) -> int:
        """Create or replace a file with ``data``; returns the bytes written."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"write_bytes needs bytes, got {type(data).__name__}")
        return int(self._act(lambda fx: fx.write(path, bytes(data), mode=mode), "fs.write", path))

    def write_from(self, path: str, source: str | os.PathLike[str] | BinaryIO | Iterable[bytes],
                   *, mode: int | None = None) -> int:
        """Create or replace a file with the bytes of ``source``, streamed: never held in memory
        whole, so its size is bounded by the disk, not by RAM. Returns the bytes written.

        ``source`` is a host path (of a regular file; holes of a sparse file stay holes), a
        binary file object over a regular file (all of it is written, from its start; its
        position is left at the end), or any other binary file object or iterable of bytes
        chunks, which is first spooled into an unnamed temporary file in the state dir (so a
        source that fails halfway raises before anything is journaled or changed). The file is
        hashed when the action is planned and checked when it is applied: a source that changes
        in between fails the action, which is then undone. A path or file object is read with
        the caller's privileges: never pass one chosen by an agent or by sandboxed code.
        """
        with _opened_source(self._ep._rt.store.root, source) as fd:
            def reopen() -> int:
                dup = os.dup(fd)
                os.lseek(dup, 0, os.SEEK_SET)
                return dup

            return int(self._act(lambda fx: fx.write_from(path, reopen, mode=mode),
                                 "fs.write", path))

    def write_text(self, path: str, text: str, encoding: str = "utf-8", *,
                   mode: int | None = None) -> int:
        """Create or replace a text file; returns the bytes written."""
        if not isinstance(text, str):
            raise TypeError(f"write_text needs str, got {type(text).__name__}")
        data = text.encode(encoding)
        return int(self._act(lambda fx: fx.write(path, data, mode=mode), "fs.write", path))

    def append(self, path: str, data: str | bytes, encoding: str = "utf-8") -> int:
        """Append to a file (created if missing); returns the bytes appended."""
        raw = data.encode(encoding) if isinstance(data, str) else bytes(data)
        return int(self._act(lambda fx: fx.append(path, raw), "fs.append", path))

    def read_bytes(self, path: str) -> bytes:
        data: bytes = self._act(lambda fx: fx.read(path), "fs.read", path)
        return data

    def read_text(self, path: str, encoding: str = "utf-8") -> str:
        return self.read_bytes(path).decode(encoding)

    def delete(self, path: str) -> None:
        """Delete a file or a symlink (not a directory: see :meth:`rmdir`)."""
        self._act(lambda fx: fx.delete(path), "fs.delete", path)

    def mkdir(self, path: str, mode: int = 0o777, *, parents: bool = False,
              exist_ok: bool = False) -> None:
        """Create a directory; with ``parents`` each missing ancestor is its own action."""
        from revex.runtime.effects.workspace import normalize

        try:
            rel = normalize(path)
        except PolicyViolation:
            # refused paths go through the pipeline too, so the refusal is journaled (DENIED)
            self._act(lambda fx: fx.mkdir(path, mode), "fs.mkdir", path)
            raise
        chain = [rel]
        if parents:
            parts = rel.split("/")
            chain = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        for i, step in enumerate(chain):
            if self._exists_safely(step) and (i < len(chain) - 1 or exist_ok):
                continue
            self._act(functools.partial(_mkdir, step=step, mode=mode), "fs.mkdir", step)

    def _exists_safely(self, rel: str) -> bool:
        """An unjournaled probe; a path through a symlink counts as missing, so the action
        that follows is the one refused (and journaled)."""
        try:
            return self._ep._files().ws.lstat(rel) is not None
        except PolicyViolation:
            return False

    def rmdir(self, path: str, recursive: bool = False) -> None:
        """Remove a directory; ``recursive=True`` removes its whole tree (all undoable)."""
        self._act(lambda fx: fx.rmdir(path, recursive), "fs.rmdir", path)

    def rename(self, src: str, dst: str) -> None:
        """Rename ``src`` to ``dst``, replacing an existing file at ``dst``."""
        self._act(lambda fx: fx.rename(src, dst), "fs.rename", f"{src} -> {dst}")

    def chmod(self, path: str, mode: int) -> None:
        self._act(lambda fx: fx.chmod(path, mode), "fs.chmod", path)

    def symlink(self, link: str, target: str) -> None:
        """Create ``link`` pointing at ``target`` (relative, and staying inside the
        workspace)."""
        self._act(lambda fx: fx.symlink(link, target), "fs.symlink", link)

    def copy(self, src: str, dst: str) -> None:
        """Copy a regular file's bytes and mode to ``dst``."""
        self._act(lambda fx: fx.copy(src, dst), "fs.copy", f"{src} -> {dst}")

    def exists(self, path: str) -> bool:
        st = self._act(lambda fx: fx.stat_plan(path, "fs.stat"), "fs.stat", path)
        return st is not None

    def stat(self, path: str) -> os.stat_result | None:
        """lstat of an entry (never follows a symlink), or None when it does not exist."""
        result: os.stat_result | None = self._act(
            lambda fx: fx.stat_plan(path, "fs.stat"), "fs.stat", path)
        return result

    def listdir(self, path: str = ".") -> list[str]:
        names: list[str] = self._act(lambda fx: fx.stat_plan(path, "fs.list"), "fs.list", path)
        return names


@contextlib.contextmanager
def _opened_source(spool_dir: Any, source: Any) -> Iterator[int]:
    """An fd of a regular file holding ``source``'s bytes (see ``FileSystem.write_from``),
    closed (and a spool file gone) on exit. Raises TypeError for an unusable source, OSError
    when it cannot be read."""
    if isinstance(source, bytes | bytearray | memoryview):
        raise TypeError("write_from streams a path, a file object or an iterable of chunks; "
                        "use write_bytes for a bytes object")
    if isinstance(source, str | os.PathLike):
        # O_NONBLOCK: opening a FIFO must not block; it is refused below
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(f"{os.fspath(source)!r} is not a regular file")
    else:
        regular = _regular_fd(source)
        if regular is not None:
            fd = regular
        else:
            if hasattr(source, "read"):
                chunks: Iterable[bytes] = iter(lambda: source.read(1 << 20), b"")
            elif isinstance(source, Iterable):
                chunks = source
            else:
                raise TypeError("write_from needs a path, a binary file object or an iterable "
                                f"of bytes, got {type(source).__name__}")
            fd = _spool(spool_dir, chunks)
    try:
        yield fd
    finally:
        os.close(fd)


def _regular_fd(source: Any) -> int | None:
    """A dup of the fd of a file object over a regular file (flushed first), else None."""
    try:
        fd = os.dup(source.fileno())
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY:
        os.close(fd)
        raise OSError(errno.EBADF, "write_from's source file object is not open for reading")
    flush = getattr(source, "flush", None)
    if flush is not None:
        try:
            flush()  # what the caller wrote must be in the file
        except BaseException:
            os.close(fd)
            raise
    return fd


def _spool(spool_dir: Any, chunks: Iterable[bytes]) -> int:
    """Copy ``chunks`` into an unnamed temporary file in ``spool_dir`` (gone when closed,
    also after a crash); returns its fd."""
    tmp = os.path.join(spool_dir, "tmp")
    os.makedirs(tmp, exist_ok=True)
    try:
        fd = os.open(tmp, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except (OSError, AttributeError):  # no O_TMPFILE here: a named one, unlinked at once
        import tempfile

        fd, name = tempfile.mkstemp(dir=tmp, prefix="spool-")
        os.unlink(name)
    try:
        for chunk in chunks:
            if not isinstance(chunk, bytes | bytearray | memoryview):
                raise TypeError(f"write_from chunks must be bytes, got {type(chunk).__name__}")
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        raise
    return fd


def _mkdir(fx: FileEffect, *, step: str, mode: int) -> Plan:
    return fx.mkdir(step, mode)
