"""Safe access to a workspace directory, and exact snapshots and restores of its entries.

Every path is walked one component at a time from a directory file descriptor with
``O_NOFOLLOW``: a ``..``, an absolute path or a symlink in any component (including one created
earlier by the episode or by code it ran) can never lead outside the workspace. Nothing here
follows a symlink.

A *manifest* describes one entry exactly enough to recreate it::

    {"type": "absent"}
    {"type": "file", "sha": ..., "size": ..., "mode": ..., "mtime_ns": ...}
    {"type": "symlink", "target": ..., "mtime_ns": ...}
    {"type": "dir", "mode": ..., "mtime_ns": ..., "children": {name: manifest}}  # deep snapshots
    {"type": "fifo", "mode": ..., "mtime_ns": ...}
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Iterator
from typing import Any

from revex.errors import InvalidPath, PolicyViolation
from revex.runtime.store import (
    CHUNK,
    ContentStore,
    copy_sparse,
    is_sparse,
    pwrite_all,
    sha256_file_fd,
)

Manifest = dict[str, Any]
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
TMP_PREFIX = ".revex-"


class PathEscape(PolicyViolation):
    """A path that would leave the workspace (``..``, absolute, or through a symlink)."""

    def __init__(self, message: str, *, action_kind: str = "", target: str = "") -> None:
        super().__init__(message, rule="path-safety", action_kind=action_kind, target=target)


def normalize(path: Any) -> str:
    """Validate a workspace-relative path and normalize it lexically ('a/./b' -> 'a/b').

    Raises InvalidPath for malformed input and PathEscape for absolute paths or a '..' that
    climbs above the workspace.
    """
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str):
        raise InvalidPath(
            f"workspace paths are str, got {type(path).__name__} {path!r}; decode bytes first"
        )
    if path == "" or path.strip() == "":
        raise InvalidPath("empty path; give a path relative to the workspace, e.g. 'notes.txt'")
    if "\x00" in path:
        raise InvalidPath(f"path {path!r} contains a NUL byte")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidPath(
            f"path {path!r} is not valid UTF-8 (it holds undecodable bytes); rename the file "
            "or pass a UTF-8 name"
        ) from exc
    if path.startswith("/"):
        raise PathEscape(
            f"absolute path {path!r} is outside the workspace; give a path relative to it",
            target=path,
        )
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise PathEscape(f"path {path!r} climbs out of the workspace with '..'",
                                 target=path)
            parts.pop()
            continue
        parts.append(part)
    if not parts:
        return "."
    return "/".join(parts)


SPECIAL_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX


def check_mode(rel: str, mode: Any, keep: int = 0) -> None:
    """Refuse a mode revex will not give an entry: not 0..0o7777, or carrying setuid, setgid or
    sticky bits (a setuid file made by sandboxed code must never reach the host) other than
    those in ``keep`` (bits the entry already has and may keep).

    Raises InvalidPath for a malformed mode, PolicyViolation (rule ``path-safety``) for special
    bits.
    """
    if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o7777:
        raise InvalidPath(f"mode {mode!r} for {rel!r} is not a permission mode (0 to 0o777)")
    if mode & SPECIAL_BITS & ~keep:
        raise PolicyViolation(
            f"mode {oct(mode)} for {rel!r} carries setuid, setgid or sticky bits, which revex "
            f"never applies; use {oct(mode & 0o777)}", rule="path-safety", target=rel)


class Workspace:
    """A directory revex acts in, reached only through file descriptors."""

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)
        self.root_fd = os.open(self.root, DIR_FLAGS)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.root_fd)

    # ---- walking -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def parent(self, rel: str) -> Iterator[tuple[int, str]]:
        """Yield (fd of the parent directory, final name) for a normalized path.

        Raises PathEscape when a component is a symlink, FileNotFoundError when a parent is
        missing, NotADirectoryError when one is a file.
        """
        if rel == ".":
            raise InvalidPath("the workspace root itself cannot be the target of this action")
        *dirs, name = rel.split("/")
        if not dirs:  # an entry of the root: the root's fd serves, with no copy to make
            yield self.root_fd, name
            return
        fd = os.dup(self.root_fd)
        try:
            walked = []
            for comp in dirs:
                walked.append(comp)
                try:
                    nfd = os.open(comp, DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno == errno.ELOOP or (
                        exc.errno == errno.ENOTDIR and _is_symlink(fd, comp)
                    ):
                        raise PathEscape(
                            f"'{'/'.join(walked)}' is a symlink; revex never follows symlinks "
                            f"in workspace paths (while resolving {rel!r})",
                            target=rel,
                        ) from exc
                    raise
                os.close(fd)
                fd = nfd
            yield fd, name
        finally:
            os.close(fd)

    def lstat(self, rel: str) -> os.stat_result | None:
        """lstat of an entry, or None when it (or a parent) does not exist."""
        if rel == ".":
            return os.fstat(self.root_fd)
        try:
            if "/" not in rel:  # an entry of the root: no directory to walk (the hot case)
                return os.stat(rel, dir_fd=self.root_fd, follow_symlinks=False)
            with self.parent(rel) as (fd, name):
                return os.stat(name, dir_fd=fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def open_dir(self, rel: str) -> int:
        if rel == ".":
            return os.dup(self.root_fd)
        with self.parent(rel) as (fd, name):
            try:
                return os.open(name, DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno == errno.ELOOP or _is_symlink(fd, name):
                    raise PathEscape(f"{rel!r} is a symlink; revex never follows symlinks",
                                     target=rel) from exc
                raise

    def open_file(self, rel: str, flags: int = os.O_RDONLY, mode: int = 0o666) -> int:
        with self.parent(rel) as (fd, name):
            try:
                return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=fd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise PathEscape(f"{rel!r} is a symlink; revex never reads or writes "
                                     "through symlinks", target=rel) from exc
                raise

    # ---- snapshots ---------------------------------------------------------------------------

    def snapshot(self, rel: str, store: ContentStore | None, *, deep: bool = False) -> Manifest:
        """Manifest of one entry; file bytes go to ``store`` (None: metadata and hash only)."""
        st = self.lstat(rel)
        if st is None:
            return {"type": "absent"}
        if stat.S_ISDIR(st.st_mode):
            out: Manifest = {"type": "dir", "mode": stat.S_IMODE(st.st_mode),
                             "mtime_ns": st.st_mtime_ns}
            if deep:
                out["children"] = {
                    name: self.snapshot(_join(rel, name), store, deep=True)
                    for name in sorted(self.listdir(rel))
                }
            return out
        if stat.S_ISLNK(st.st_mode):
            with self.parent(rel) as (fd, name):
                target = os.readlink(name, dir_fd=fd)
            return {"type": "symlink", "target": target, "mtime_ns": st.st_mtime_ns}
        if stat.S_ISREG(st.st_mode):
            fd = self.open_file(rel)
            try:
                if store is not None:
                    digest, size = store.put_fd(fd)
                else:
                    digest, size = sha256_file_fd(fd), st.st_size
            finally:
                os.close(fd)
            return {"type": "file", "sha": digest, "size": size,
                    "mode": stat.S_IMODE(st.st_mode), "mtime_ns": st.st_mtime_ns}
        if stat.S_ISFIFO(st.st_mode):
            return {"type": "fifo", "mode": stat.S_IMODE(st.st_mode), "mtime_ns": st.st_mtime_ns}
        raise PolicyViolation(
            f"{rel!r} is a device or socket; revex cannot snapshot it, so it refuses to touch it",
            rule="path-safety", target=rel,
        )

    def listdir(self, rel: str) -> list[str]:
        fd = self.open_dir(rel)
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    def matches(self, rel: str, want: Manifest) -> bool:
        """Whether the entry is in the state ``want`` describes (content, type, mode, target).

        Modification times are not compared: they are restored, but a touch is not a conflict.
        A path below a symlink is not reachable in the workspace, so it counts as absent.
        """
        try:
            st = self.lstat(rel)
        except PathEscape:
            return want["type"] == "absent"
        kind = want["type"]
        if st is None:
            return kind == "absent"
        if kind == "absent":
            return False
        if kind == "dir":
            return stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == want["mode"]
        if kind == "symlink":
            if not stat.S_ISLNK(st.st_mode):
                return False
            with self.parent(rel) as (fd, name):
                return os.readlink(name, dir_fd=fd) == want["target"]
        if kind == "fifo":
            return stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == want["mode"]
        if not stat.S_ISREG(st.st_mode) or st.st_size != want["size"]:
            return False
        if stat.S_IMODE(st.st_mode) != want["mode"]:
            return False
        if (want.get("ino") == st.st_ino and want.get("ctime_ns") == st.st_ctime_ns
                and want.get("mtime_ns") == st.st_mtime_ns):
            return True  # untouched since we recorded it: skip hashing
        fd = self.open_file(rel)
        try:
            return sha256_file_fd(fd) == want["sha"]
        finally:
            os.close(fd)

    # ---- restoring ---------------------------------------------------------------------------

    def remove(self, rel: str, st: os.stat_result | None = None) -> None:
        """Remove whatever is at ``rel`` (a whole tree for a directory); absent is fine.
        ``st``: its lstat, when the caller has just taken it."""
        if st is None:
            st = self.lstat(rel)
        if st is None:
            return
        with self.parent(rel) as (fd, name):
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(name, dir_fd=fd)
            else:
                os.unlink(name, dir_fd=fd)

    def restore(self, rel: str, want: Manifest, store: ContentStore, tmp_name: str) -> None:
        """Make ``rel`` exactly ``want``, whatever is there now (converges after a crash)."""
        kind = want["type"]
        st = self.lstat(rel)
        keep_dir = kind == "dir" and st is not None and stat.S_ISDIR(st.st_mode)
        if not keep_dir and kind != "file" and st is not None:
            self.remove(rel, st)
        if kind == "absent":
            return
        with self.parent(rel) as (fd, name):
            if kind == "file":
                if st is not None and stat.S_ISDIR(st.st_mode):
                    shutil.rmtree(name, dir_fd=fd)
                if not (st is not None and stat.S_ISREG(st.st_mode) and st.st_nlink == 1
                        and self._rewrite_in_place(fd, name, want, store)):
                    self._write_blob(fd, name, want, store, tmp_name)
            elif kind == "symlink":
                os.symlink(want["target"], name, dir_fd=fd)
                os.utime(name, ns=(want["mtime_ns"], want["mtime_ns"]), dir_fd=fd,
                         follow_symlinks=False)
            elif kind == "fifo":
                os.mkfifo(name, want["mode"], dir_fd=fd)
                os.chmod(name, want["mode"], dir_fd=fd)
                os.utime(name, ns=(want["mtime_ns"], want["mtime_ns"]), dir_fd=fd)
            elif kind == "dir" and not keep_dir:
                os.mkdir(name, 0o700, dir_fd=fd)
        if kind == "dir":
            children = want.get("children")
            if children is not None:
                present = set(self.listdir(rel))
                for extra in present - set(children):
                    self.remove(_join(rel, extra))
                for child, child_want in children.items():
                    self.restore(_join(rel, child), child_want, store, tmp_name)
            self.set_dir_meta(rel, want["mode"], want["mtime_ns"])

    def _rewrite_in_place(self, dir_fd: int, name: str, want: Manifest,
                          store: ContentStore) -> bool:
        """Put a blob's bytes into the existing regular file ``name`` (one link only).

        Much cheaper than a temp file renamed over the old one: on ext4 (``auto_da_alloc``) a
        rename that replaces an existing file starts writeback of the new file's data, a
        device write per restored file (~2 ms on a busy disk against ~15 us here), which made
        rollbacks of overwrites much slower than rollbacks of creations. Not atomic, which
        undo does not need: it is idempotent and converges, and an item killed halfway is
        redone (forced) when the rollback resumes. Returns False, having changed nothing, when
        the file cannot be opened for writing or is not a plain file with one link, or when the
        blob has holes (a fresh file written from it keeps them; rewriting would fill them).
        """
        src = store.open(want["sha"])  # first: a missing blob must not cost the current bytes
        try:
            if is_sparse(src):
                return False
            try:
                out = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                              dir_fd=dir_fd)
            except OSError:
                return False
            try:
                st = os.fstat(out)
                if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                    return False
                offset = 0
                while chunk := os.read(src, CHUNK):
                    pwrite_all(out, chunk, offset)
                    offset += len(chunk)
                os.ftruncate(out, offset)
                os.fchmod(out, want["mode"])
                os.utime(out, ns=(want["mtime_ns"], want["mtime_ns"]))
            finally:
                os.close(out)
        finally:
            os.close(src)
        return True

    def _write_blob(self, dir_fd: int, name: str, want: Manifest, store: ContentStore,
                    tmp_name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name, dir_fd=dir_fd)
        src = store.open(want["sha"])
        try:
            out = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                          0o600, dir_fd=dir_fd)
            try:
                copy_sparse(src, out)
                os.fchmod(out, want["mode"])
                os.utime(out, ns=(want["mtime_ns"], want["mtime_ns"]))
            finally:
                os.close(out)
        finally:
            os.close(src)
        os.rename(tmp_name, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)

    def set_dir_meta(self, rel: str, mode: int, mtime_ns: int) -> None:
        fd = self.open_dir(rel)
        try:
            os.fchmod(fd, mode)
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fd)

    def set_times(self, rel: str, want: Manifest) -> None:
        """Give ``rel`` (and, for a deep directory manifest, everything recorded below it,
        deepest first) the mtime of ``want``; for entries whose type matches it. Changes no
        content and ignores what is gone."""
        kind = want["type"]
        if kind == "absent":
            return
        try:
            st = self.lstat(rel)
        except PathEscape:
            return
        if st is None:
            return
        if kind == "dir":
            if not stat.S_ISDIR(st.st_mode):
                return
            for name, child in (want.get("children") or {}).items():
                self.set_times(_join(rel, name), child)
            self.set_mtime(rel, want["mtime_ns"])
            return
        same = {"file": stat.S_ISREG, "symlink": stat.S_ISLNK, "fifo": stat.S_ISFIFO}[kind]
        if not same(st.st_mode):
            return
        with self.parent(rel) as (fd, name):
            os.utime(name, ns=(want["mtime_ns"], want["mtime_ns"]), dir_fd=fd,
                     follow_symlinks=False)

    def set_mtime(self, rel: str, mtime_ns: int) -> None:
        """Put back a directory's mtime (ignored if it is gone or no longer a directory)."""
        try:
            fd = self.open_dir(rel)
        except (FileNotFoundError, NotADirectoryError, PathEscape):
            return
        try:
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fd)


def _is_symlink(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _join(parent: str, name: str) -> str:
    return name if parent == "." else f"{parent}/{name}"


def parent_of(rel: str) -> str:
    return rel.rsplit("/", 1)[0] if "/" in rel else "."
