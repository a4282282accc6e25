"""The file effect: plans for every ``ep.fs`` operation, and their exact undo.

Each mutating plan records, before it acts, the manifest of every path it will touch (bytes in
the content store) plus the mtime of each parent directory; after it acts, the manifest it left.
Undo is compare-and-set against that post-state, then restores the pre-state exactly: content,
type, mode, mtime, symlink target, absence, and the parents' mtimes, and verifies it (see
:mod:`revex.runtime.effects.files_undo`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from collections.abc import Callable, Sequence
from typing import Any

from revex.errors import PolicyViolation
from revex.runtime.effects.base import EffectContext, Plan
from revex.runtime.effects.files_undo import FileUndo
from revex.runtime.effects.symlinks import check_moved_links, symlink_problem
from revex.runtime.effects.workspace import (
    PathEscape,
    Workspace,
    check_mode,
    normalize,
    parent_of,
)
from revex.runtime.store import ContentStore, sha256_file_fd
from revex.runtime.store import copy_sparse as _copy_sparse


class FileEffect(FileUndo):
    """Plans and undoes file actions in one episode's workspace."""

    def __init__(self, ctx: EffectContext) -> None:
        self.episode_id = ctx.episode_id
        self.store: ContentStore = ctx.store
        self.ws = Workspace(ctx.config["workspace"])

    def close(self) -> None:
        self.ws.close()

    # ---- helpers -----------------------------------------------------------------------------

    def _pre(self, paths: Sequence[str], *, deep: bool = False, blobs: bool = True
             ) -> dict[str, Any]:
        pre = {p: self.ws.snapshot(p, self.store if blobs else None, deep=deep) for p in paths}
        parents = {}
        for p in paths:
            par = parent_of(p)
            st = self.ws.lstat(par)
            if st is not None and stat.S_ISDIR(st.st_mode):
                parents[par] = st.st_mtime_ns
        return {"pre": pre, "parents": parents}

    def _write_new(self, rel: str, fill: Callable[[int], None], mode: int | None,
                   tmp: str) -> os.stat_result:
        """Write a file via a temp name in the same directory (``fill`` writes the bytes into
        the fd it is given), then rename over ``rel``. Returns the file's stat once in place."""
        with self.ws.parent(rel) as (fd, name):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=fd)
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                          0o666 if mode is None else 0o600, dir_fd=fd)
            try:
                fill(out)
                if mode is not None:
                    os.fchmod(out, mode)
                os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
                return os.fstat(out)  # after the rename, which changes the ctime
            finally:
                os.close(out)

    def _create(self, rel: str, data: bytes, mode: int | None) -> os.stat_result | None:
        """Write ``data`` into a new file made under its own name (``O_EXCL``); returns its
        stat, or None, having changed nothing, when the name exists by now.

        No temp file renamed into place: that is two metadata operations more (an unlink of a
        stale temp name and the rename), each a wait on the file system's journal. Not atomic,
        and needs not be, like :meth:`_overwrite`: the INTENT says the path was absent, so a
        write killed halfway leaves a file that the probe after a crash reports as taken
        effect and the rollback removes; a write that fails is cleaned up the same way.
        """
        with self.ws.parent(rel) as (fd, name):
            try:
                out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                              | os.O_CLOEXEC, 0o666 if mode is None else 0o600, dir_fd=fd)
            except FileExistsError:
                return None
        try:
            _write_all(out, data)
            if mode is not None:
                os.fchmod(out, mode)
            return os.fstat(out)
        finally:
            os.close(out)

    def _overwrite(self, rel: str, data: bytes, mode: int | None
                   ) -> os.stat_result | None:
        """Put ``data`` into the existing regular file ``rel`` (one link only) in place.

        A temp file renamed over an existing one costs a device write on ext4
        (``auto_da_alloc`` starts writeback of the new file at such a rename, and at the close
        of a file truncated to zero), which made an overwrite cost an fsync more than a new
        file. In place is not atomic, and needs not be: the pre-image is durable in the INTENT,
        so an overwrite killed halfway holds neither state, which the probe after a crash
        reports as taken effect, and the rollback puts the pre-image back. Like the rename, it
        keeps the file's mode unless ``mode`` is given. Returns the file's stat once written, or
        None, having changed nothing, when the file cannot be opened for writing or is not a
        plain file with one link (a hard link must not see the new bytes): the caller writes a
        new file then.
        """
        try:
            fd = self.ws.open_file(rel, os.O_WRONLY | os.O_NONBLOCK)
        except (OSError, PathEscape):
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                return None
            offset, view = 0, memoryview(data)
            while view:
                written = os.pwrite(fd, view, offset)
                offset, view = offset + written, view[written:]
            if st.st_size > len(data) or not data:
                # only a longer file has bytes to cut (and an empty write changes no byte,
                # so the truncate is what gives it its new mtime); a metadata change less
                os.ftruncate(fd, len(data))
            if mode is not None:
                os.fchmod(fd, mode)
            return os.fstat(fd)  # after the writes, truncate and chmod, which move the ctime
        finally:
            os.close(fd)

    def _inherited_setgid(self, rel: str) -> int:
        """``S_ISGID`` when ``rel`` is a directory that has the bit and inherited it (its parent
        has it too): a chmod may keep that bit, never add one."""
        with contextlib.suppress(OSError, PolicyViolation):
            st, pst = self.ws.lstat(rel), self.ws.lstat(parent_of(rel))
            if (st is not None and pst is not None and stat.S_ISDIR(st.st_mode)
                    and st.st_mode & pst.st_mode & stat.S_ISGID):
                return stat.S_ISGID
        return 0

    def _pre_writable(self, rel: str) -> dict[str, Any]:
        """:meth:`_pre` of a path that is about to be written: refused when it is a directory
        or a symlink (from the snapshot itself: no stat of its own)."""
        undo = self._pre([rel])
        kind = undo["pre"][rel]["type"]
        if kind == "dir":
            raise IsADirectoryError(f"{rel!r} is a directory")
        if kind == "symlink":
            raise PathEscape(f"{rel!r} is a symlink; revex never writes through symlinks",
                             target=rel)
        return undo

    def _restore_plan(self, rels: Sequence[str]) -> Any:
        def cleanup(undo: dict[str, Any]) -> None:
            self._restore(undo, undo.get("tmp", ""))
        return cleanup

    # ---- plans -------------------------------------------------------------------------------

    def write(self, path: Any, data: bytes, *, kind: str = "fs.write",
              mode: int | None = None) -> Plan:
        rel = normalize(path)
        if mode is not None:
            check_mode(rel, mode)
        tmp = self._tmp("w")
        digest = hashlib.sha256(data).hexdigest()

        def prepare() -> dict[str, Any]:
            return {**self._pre_writable(rel), "tmp": tmp}

        def apply(undo: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            pre = undo["pre"][rel]
            st = (self._overwrite(rel, data, mode) if pre["type"] == "file"
                  else self._create(rel, data, mode) if pre["type"] == "absent" else None)
            if st is None:
                keep = pre.get("mode") if pre["type"] == "file" else None
                st = self._write_new(rel, lambda out: _write_all(out, data),
                                     mode if mode is not None else keep, tmp)
            # the post-state from what was written and the stat taken last: no read back
            return len(data), {"post": {rel: _written(st, digest)}}

        return _plan(kind=kind, target=rel, attrs={"path": rel, "bytes": len(data)},
                     params={"size": len(data), "sha256": digest},
                     cost={"bytes_written": len(data)}, prepare=prepare, apply=apply,
                     cleanup=self._restore_plan([rel]))

    def write_from(self, path: Any, open_source: Callable[[], int], *, mode: int | None,
                   kind: str = "fs.write") -> Plan:
        """Create or replace ``path`` with the bytes of the regular file that ``open_source()``
        opens (and the caller's fd is closed here): streamed, never held in memory, and the
        holes of a sparse file stay holes. The source is hashed when planned; if it is not the
        same when applied, the action fails and is undone. Raises ``OSError`` when the source
        cannot be read.
        """
        rel = normalize(path)
        if mode is not None:
            check_mode(rel, mode)
        tmp = self._tmp("w")
        src = open_source()
        try:
            size = os.fstat(src).st_size
            digest = sha256_file_fd(src)
        finally:
            os.close(src)

        def prepare() -> dict[str, Any]:
            return {**self._pre_writable(rel), "tmp": tmp}

        def apply(undo: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            pre = undo["pre"][rel]
            keep = pre.get("mode") if pre["type"] == "file" else None
            fd = open_source()
            try:
                self._write_new(rel, lambda out: _copy_sparse(fd, out),
                                mode if mode is not None else keep, tmp)
            finally:
                os.close(fd)
            post = self._post(rel)
            if post["post"][rel].get("sha") != digest:
                raise OSError(errno.EIO, f"the source of {rel!r} changed while it was applied")
            return size, post

        return _plan(kind=kind, target=rel, attrs={"path": rel, "bytes": size},
                     params={"size": size, "sha256": digest}, cost={"bytes_written": size},
                     prepare=prepare, apply=apply, cleanup=self._restore_plan([rel]))

    def append(self, path: Any, data: bytes) -> Plan:
        rel = normalize(path)

        def prepare() -> dict[str, Any]:
            return self._pre_writable(rel)

        def apply(undo: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            fd = self.ws.open_file(rel, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            return len(data), self._post(rel)

        return _plan(kind="fs.append", target=rel, attrs={"path": rel, "bytes": len(data)},
                     params={"size": len(data)}, cost={"bytes_written": len(data)},
                     prepare=prepare, apply=apply, cleanup=self._restore_plan([rel]))

    def delete(self, path: Any) -> Plan:
        rel = normalize(path)

        def prepare() -> dict[str, Any]:
            st = self.ws.lstat(rel)
            if st is None:
                raise FileNotFoundError(f"{rel!r} does not exist")
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(f"{rel!r} is a directory; use rmdir")
            return self._pre([rel])

        def apply(undo: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            with self.ws.parent(rel) as (fd, name):
                os.unlink(name, dir_fd=fd)
            return None, self._post(rel)

        return _plan(kind="fs.delete", target=rel, attrs={"path": rel}, prepare=prepare,
                     apply=apply, cleanup=self._restore_plan([rel]))

    def mkdir(self, path: Any, mode: int = 0o777) -> Plan:
        rel = normalize(path)
        check_mode(rel, mode)

        def prepare() -> dict[str, Any]:
            return self._pre([rel])

        def apply(undo: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            with self.ws.parent(rel) as (fd, name):
                os.mkdir(name, mode, dir_fd=fd)
            return None, self._post(rel)

        return _plan(kind="fs.mkdir", target=rel, attrs={"path": rel}, params={"mode": mode},
                     prepare=prepare, apply=apply, cleanup=self._restore_plan([rel]))

    def rmdir(self, path: Any, recursive: bool) -> Plan:
        rel = normalize(path)

        def prepare() -> dict[str, Any]:
            st = self.ws.lstat(rel)
            if st is None:
                raise FileNotFoundError(f"{rel!r} does not exist")
            if not stat.S_ISDIR(st.st_mode):
                raise NotADirectoryError(f"{rel!r} is not a directory")
            if not recursive and self.ws.listdir(rel):
                raise OSError(f"{rel!r} is not empty; pass recursive=True to remove it all")
            return self._pre([rel], deep=True)

        def apply(undo: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            self.ws.remove(rel)
            return None, self._post(rel)

        return _plan(kind="fs.rmdir", target=rel, attrs={"path": rel},
                     params={"recursive": recursive}, prepare=prepare, apply=apply,
                     cleanup=self._restore_plan([rel]))

    def rename(self, src: Any, dst: Any) -> Plan:
        rsrc, rdst = normalize(src), normalize(dst)

        def prepare() -> dict[str, Any]:
            st = self.ws.lstat(rsrc)
            if st is None:
                raise FileNotFoundError(f"{rsrc!r} does not exist")
            if rdst == rsrc or rdst.startswith(rsrc + "/"):
                raise OSError(f"cannot rename {rsrc!r} onto itself or into itself ({rdst!r})")
            undo = self._pre([rsrc, rdst], deep=True)
            check_moved_links(rdst, undo["pre"][rsrc])
            # the source is moved, not rewritten: its blob is only needed if undo must recreate
            return undo

        def apply(undo: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            with self.ws.parent(rsrc) as (sfd, sname), self.ws.parent(rdst) as (dfd, dname):
                os.rename(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)
            return None, self._post(rsrc, rdst)

        return _plan(kind="fs.rename", target=f"{rsrc} -> {rdst}",
                     attrs={"path": [rsrc, rdst]}, params={"src": rsrc, "dst": rdst},
                     prepare=prepare, apply=apply, cleanup=self._restore_plan([rsrc, rdst]))

    def chmod(self, path: Any, mode: int) -> Plan:
        rel = normalize(path)
        check_mode(rel, mode, self._inherited_setgid(rel))

        def prepare() -> dict[str, Any]:
            st = self.ws.lstat(rel)
            if st is None:
                raise FileNotFoundError(f"{rel!r} does not exist")
            if stat.S_ISLNK(st.st_mode):
                raise PathEscape(f"{rel!r} is a symlink; chmod would follow it", target=rel)
            return self._pre([rel])

        def apply(undo: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            st = self.ws.lstat(rel)
            assert st is not None
            fd = (self.ws.open_dir(rel) if stat.S_ISDIR(st.st_mode)
                  else self.ws.open_file(rel, os.O_RDONLY))
            try:
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
            return None, self._post(rel)

        return _plan(kind="fs.chmod", target=rel, attrs={"path": rel},
                     params={"mode": oct(mode)}, prepare=prepare, apply=apply,
                     cleanup=self._restore_plan([rel]))

    def symlink(self, link: Any, target: str) -> Plan:
        rel = normalize(link)
        if not isinstance(target, str):
            raise PathEscape(f"symlink target {target!r} is not a usable path", target=rel)
        try:
            target.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise PathEscape(f"symlink target {target!r} is not valid UTF-8",
                             target=rel) from exc
        problem = symlink_problem(self.ws, rel, target)
        if problem is not None:
            raise PathEscape(problem, target=rel)

        def prepare() -> dict[str, Any]:
            if self.ws.lstat(rel) is not None:
                raise FileExistsError(f"{rel!r} already exists")
            return self._pre([rel])

        def apply(undo: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            with self.ws.parent(rel) as (fd, name):
                os.symlink(target, name, dir_fd=fd)
            return None, self._post(rel)

        return _plan(kind="fs.symlink", target=rel, attrs={"path": rel},
                     params={"target": target}, prepare=prepare, apply=apply,
                     cleanup=self._restore_plan([rel]))

    def copy(self, src: Any, dst: Any) -> Plan:
        rsrc, rdst = normalize(src), normalize(dst)
        tmp = self._tmp("c")

        def prepare() -> dict[str, Any]:
            # check the source before anything is journaled: a symlinked source is refused
            # (DENIED), not a failure found halfway through apply
            os.close(self.ws.open_file(rsrc))
            return {**self._pre_writable(rdst), "tmp": tmp}

        def apply(undo: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            fd = self.ws.open_file(rsrc)
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise IsADirectoryError(f"{rsrc!r} is not a regular file")

                # like cp: a copy never carries setuid, setgid or sticky bits
                self._write_new(rdst, lambda out: _copy_sparse(fd, out),
                                stat.S_IMODE(st.st_mode) & 0o777, tmp)
            finally:
                os.close(fd)
            return None, self._post(rdst)

        size = 0
        with contextlib.suppress(OSError, PolicyViolation):
            st = self.ws.lstat(rsrc)
            size = st.st_size if st is not None else 0
        return _plan(kind="fs.copy", target=f"{rsrc} -> {rdst}", attrs={"path": [rsrc, rdst]},
                     params={"src": rsrc, "dst": rdst}, cost={"bytes_written": size},
                     prepare=prepare, apply=apply, cleanup=self._restore_plan([rdst]))

    def read(self, path: Any) -> Plan:
        rel = normalize(path)

        def apply(undo: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            fd = self.ws.open_file(rel)
            try:
                with os.fdopen(os.dup(fd), "rb") as f:
                    data = f.read()
            finally:
                os.close(fd)
            return data, {"size": len(data)}

        return Plan(kind="fs.read", target=rel, attrs={"path": rel}, apply=apply,
                    read_only=True)

    def stat_plan(self, path: Any, kind: str) -> Plan:
        rel = normalize(path)

        def apply(undo: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            if kind == "fs.list":
                names = sorted(self.ws.listdir(rel))
                return names, {"entries": len(names)}
            return self.ws.lstat(rel), {}

        return Plan(kind=kind, target=rel, attrs={"path": rel}, apply=apply, read_only=True)


def _plan(**fields: Any) -> Plan:
    """A mutating file plan: its outcome waits for the next transaction (see
    :attr:`Plan.defer_outcome`; ``resolve_intent`` probes a file action exactly)."""
    return Plan(**fields, defer_outcome=True)


def _written(st: os.stat_result, digest: str) -> dict[str, Any]:
    """The post manifest of a file revex just wrote (bytes of sha256 ``digest``), as
    ``FileUndo._post`` would read it back, from the stat taken after the last change."""
    return {"type": "file", "sha": digest, "size": st.st_size, "mode": stat.S_IMODE(st.st_mode),
            "mtime_ns": st.st_mtime_ns, "ino": st.st_ino, "ctime_ns": st.st_ctime_ns}


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
