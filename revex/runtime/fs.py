"""``ep.fs``: file operations on the episode's workspace, each one through the pipeline.

Paths are relative to the workspace. Nothing outside it can be reached: ``..`` above the root,
absolute paths and symlinks in any component raise :class:`PolicyViolation` (journaled as
DENIED). Reads and writes never follow symlinks.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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


def _mkdir(fx: FileEffect, *, step: str, mode: int) -> Plan:
    return fx.mkdir(step, mode)
