"""The file effect: plans for every ``ep.fs`` operation, and their exact undo.

Each mutating plan records, before it acts, the manifest of every path it will touch (bytes in
the content store) plus the mtime of each parent directory; after it acts, the manifest it left.
Undo is compare-and-set against that post-state, then restores the pre-state exactly: content,
type, mode, mtime, symlink target, absence, and the parents' mtimes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from collections.abc import Callable, Sequence
from typing import Any

from revex.errors import ConflictError, PolicyViolation
from revex.runtime.effects.base import EffectContext, Plan, UndoItem
from revex.runtime.effects.workspace import (
    TMP_PREFIX,
    Manifest,
    PathEscape,
    Workspace,
    check_mode,
    normalize,
    parent_of,
)
from revex.runtime.journal import Record
from revex.runtime.store import ContentStore, sha256_file_fd


class FileEffect:
    """Plans and undoes file actions in one episode's workspace."""

    def __init__(self, ctx: EffectContext) -> None:
        self.episode_id = ctx.episode_id
        self.store: ContentStore = ctx.store
        self.ws = Workspace(ctx.config["workspace"])

    def close(self) -> None:
        self.ws.close()

    # ---- helpers -----------------------------------------------------------------------------

    def _tmp(self, tag: str) -> str:
        return f"{TMP_PREFIX}{self.episode_id}-{tag}.tmp"

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

    def _post(self, *paths: str) -> dict[str, Any]:
        out: dict[str, Manifest] = {}
        for p in paths:
            st = self.ws.lstat(p)
            manifest = self.ws.snapshot(p, None)
            if st is not None and manifest["type"] == "file":
                manifest["ino"] = st.st_ino
                manifest["ctime_ns"] = st.st_ctime_ns
            out[p] = manifest
        return {"post": out}

    def _write_new(self, rel: str, fill: Callable[[int], None], mode: int | None,
                   tmp: str) -> None:
        """Write a file via a temp name in the same directory (``fill`` writes the bytes into
        the fd it is given), then rename over ``rel``."""
        with self.ws.parent(rel) as (fd, name):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=fd)
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                          0o666 if mode is None else 0o600, dir_fd=fd)
            try:
                fill(out)
                if mode is not None:
                    os.fchmod(out, mode)
            finally:
                os.close(out)
            os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)

    def _drop_tmp(self, rel: str, tmp: str) -> None:
        with contextlib.suppress(OSError, PathEscape), self.ws.parent(rel) as (fd, _):
            os.unlink(tmp, dir_fd=fd)

    def _inherited_setgid(self, rel: str) -> int:
        """``S_ISGID`` when ``rel`` is a directory that has the bit and inherited it (its parent
        has it too): a chmod may keep that bit, never add one."""
        with contextlib.suppress(OSError, PolicyViolation):
            st, pst = self.ws.lstat(rel), self.ws.lstat(parent_of(rel))
            if (st is not None and pst is not None and stat.S_ISDIR(st.st_mode)
                    and st.st_mode & pst.st_mode & stat.S_ISGID):
                return stat.S_ISGID
        return 0

    def _target_mode(self, rel: str) -> int | None:
        st = self.ws.lstat(rel)
        if st is None:
            return None
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(f"{rel!r} is a directory")
        if stat.S_ISLNK(st.st_mode):
            raise PathEscape(f"{rel!r} is a symlink; revex never writes through symlinks",
                             target=rel)
        return stat.S_IMODE(st.st_mode)

    def _restore_plan(self, rels: Sequence[str]) -> Any:
        def cleanup(undo: dict[str, Any]) -> None:
            self._restore(undo, undo.get("tmp", ""))
        return cleanup

    def _restore(self, undo: dict[str, Any], tmp: str, *, forced: bool = False) -> set[str]:
        """Put every pre-image back; returns the paths left alone because they are unreachable
        (see below)."""
        skipped: set[str] = set()
        for rel, want in undo["pre"].items():
            if tmp:
                self._drop_tmp(rel, tmp)
            try:
                self.ws.restore(rel, want, self.store, self._tmp("undo"))
            except (FileNotFoundError, NotADirectoryError, PathEscape):
                # Forced (resuming an interrupted rollback, or told to overwrite drift): the
                # parent is gone or is no longer a directory, because of the undo of an older
                # action that owns this path's final state. Anything else is a real failure.
                unreachable_ok = forced or want["type"] == "absent"
                if not unreachable_ok or self._ancestors_are_dirs(rel):
                    raise
                skipped.add(rel)
        for par, mtime in undo["parents"].items():
            self.ws.set_mtime(par, mtime)
        return skipped

    def _ancestors_are_dirs(self, rel: str) -> bool:
        for anc in _ancestors(rel):
            st = self.ws.lstat(anc)
            if st is None or not stat.S_ISDIR(st.st_mode):
                return False
        return True

    # ---- plans -------------------------------------------------------------------------------

    def write(self, path: Any, data: bytes, *, kind: str = "fs.write",
              mode: int | None = None) -> Plan:
        rel = normalize(path)
        if mode is not None:
            check_mode(rel, mode)
        tmp = self._tmp("w")

        def prepare() -> dict[str, Any]:
            self._target_mode(rel)
            return {**self._pre([rel]), "tmp": tmp}

        def apply(undo: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            pre = undo["pre"][rel]
            keep = pre.get("mode") if pre["type"] == "file" else None
            self._write_new(rel, lambda out: _write_all(out, data),
                            mode if mode is not None else keep, tmp)
            return len(data), self._post(rel)

        return Plan(kind=kind, target=rel, attrs={"path": rel, "bytes": len(data)},
                    params={"size": len(data), "sha256": hashlib.sha256(data).hexdigest()},
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
            self._target_mode(rel)
            return {**self._pre([rel]), "tmp": tmp}

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

        return Plan(kind=kind, target=rel, attrs={"path": rel, "bytes": size},
                    params={"size": size, "sha256": digest}, cost={"bytes_written": size},
                    prepare=prepare, apply=apply, cleanup=self._restore_plan([rel]))

    def append(self, path: Any, data: bytes) -> Plan:
        rel = normalize(path)

        def prepare() -> dict[str, Any]:
            self._target_mode(rel)
            return self._pre([rel])

        def apply(undo: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            fd = self.ws.open_file(rel, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            return len(data), self._post(rel)

        return Plan(kind="fs.append", target=rel, attrs={"path": rel, "bytes": len(data)},
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

        return Plan(kind="fs.delete", target=rel, attrs={"path": rel}, prepare=prepare,
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

        return Plan(kind="fs.mkdir", target=rel, attrs={"path": rel}, params={"mode": mode},
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

        return Plan(kind="fs.rmdir", target=rel, attrs={"path": rel},
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
            _check_moved_links(rdst, undo["pre"][rsrc])
            # the source is moved, not rewritten: its blob is only needed if undo must recreate
            return undo

        def apply(undo: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            with self.ws.parent(rsrc) as (sfd, sname), self.ws.parent(rdst) as (dfd, dname):
                os.rename(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)
            return None, self._post(rsrc, rdst)

        return Plan(kind="fs.rename", target=f"{rsrc} -> {rdst}",
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

        return Plan(kind="fs.chmod", target=rel, attrs={"path": rel},
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
        problem = self.ws.symlink_problem(rel, target)
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

        return Plan(kind="fs.symlink", target=rel, attrs={"path": rel},
                    params={"target": target}, prepare=prepare, apply=apply,
                    cleanup=self._restore_plan([rel]))

    def copy(self, src: Any, dst: Any) -> Plan:
        rsrc, rdst = normalize(src), normalize(dst)
        tmp = self._tmp("c")

        def prepare() -> dict[str, Any]:
            # check the source before anything is journaled: a symlinked source is refused
            # (DENIED), not a failure found halfway through apply
            os.close(self.ws.open_file(rsrc))
            self._target_mode(rdst)
            return {**self._pre([rdst]), "tmp": tmp}

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
        return Plan(kind="fs.copy", target=f"{rsrc} -> {rdst}", attrs={"path": [rsrc, rdst]},
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

    # ---- undo protocol -----------------------------------------------------------------------

    def check_undo(self, items: Sequence[UndoItem]) -> list[str]:
        conflicts: list[str] = []
        seen: set[str] = set()
        touched = {p for it in items for p in it.undo_info.get("pre", {})}
        for item in items:  # newest first: the newest post of each path is what must be there
            for rel, want in item.post.get("post", {}).items():
                if rel in seen:
                    continue
                seen.add(rel)
                if any(anc in seen for anc in _ancestors(rel)):
                    # a newer action replaced an ancestor (rmdir, rename): the check of that
                    # ancestor covers this path, whose own older post-state is expected to differ
                    continue
                if not self.ws.matches(rel, want):
                    conflicts.append(f"{item.describe()}: {rel!r} changed since the episode "
                                     "left it")
                elif want["type"] == "dir" and item.undo_info["pre"].get(rel, {}).get(
                        "type") == "absent":
                    prefix = "" if rel == "." else rel + "/"
                    # a renamed directory brought its own children along: they are not drift
                    brought = _moved_children(item, rel)
                    for name in self.ws.listdir(rel):
                        if prefix + name not in touched and name not in brought:
                            conflicts.append(
                                f"{item.describe()}: {prefix + name!r} was added by someone "
                                f"else inside {rel!r}, which the episode created"
                            )
        return conflicts

    def undo(self, item: UndoItem, *, force: bool) -> None:
        undo, post = item.undo_info, item.post.get("post", {})
        # the post-state first: it usually matches through the cheap (inode, ctime, mtime)
        # check, and only when it does not is the pre-state compared, which hashes files
        drift = [rel for rel, want in post.items() if not self.ws.matches(rel, want)]
        if drift and all(self.ws.matches(rel, want) for rel, want in undo["pre"].items()):
            # already undone: just settle metadata
            self._verify_undone(item, self._restore(undo, undo.get("tmp", ""), forced=force))
            return
        if drift and not force:
            raise ConflictError(
                f"{item.describe()}: {', '.join(map(repr, drift))} changed since; "
                "nothing was undone (use force=True to overwrite)",
                [f"{item.describe()}: {r!r}" for r in drift],
            )
        # Moving back is only right when dst still holds the tree the rename put there, which
        # the (shallow) post-state of a directory cannot prove once forced: a forced undo (drift,
        # or resuming an interrupted rollback) recreates both sides from the deep pre-images.
        if item.intent.kind == "fs.rename" and not force and self._rename_back(item):
            self._verify_undone(item, set())
            return
        self._verify_undone(item, self._restore(undo, undo.get("tmp", ""), forced=force))

    def _verify_undone(self, item: UndoItem, skipped: set[str]) -> None:
        """Re-read every path the undo restored and check it holds its pre-state (bytes hash,
        type, mode, symlink target, absence; a deep pre-image with its whole tree): an undo is
        done only when this holds. Paths a forced undo could not reach (an older action owns
        their parent) are left to that action's own check.

        Raises ConflictError naming each path that does not hold its pre-state.
        """
        wrong = [f"{rel!r} {self._mismatch(rel, want)}"
                 for rel, want in item.undo_info["pre"].items()
                 if rel not in skipped and not self._matches_deep(rel, want)]
        if wrong:
            raise ConflictError(
                f"{item.describe()}: the undo did not restore the pre-state: "
                + "; ".join(wrong) + "; it is not marked undone",
                [f"{item.describe()}: {w}" for w in wrong],
            )

    def _mismatch(self, rel: str, want: Manifest) -> str:
        """What is at ``rel`` against what should be there, in a few words."""
        try:
            now = self.ws.snapshot(rel, None)
        except (OSError, PolicyViolation) as exc:
            return f"cannot be read back ({exc})"
        if now["type"] != want["type"]:
            return f"is {now['type']}, expected {want['type']}"
        if now.get("mode") != want.get("mode"):
            return f"has mode {oct(now.get('mode') or 0)}, expected {oct(want.get('mode') or 0)}"
        if now.get("target") != want.get("target"):
            return f"points to {now.get('target')!r}, expected {want.get('target')!r}"
        if now.get("sha") != want.get("sha"):
            return (f"holds sha256 {str(now.get('sha'))[:12]}…, expected "
                    f"{str(want.get('sha'))[:12]}…")
        return "differs below it from the recorded tree"

    def settle(self, items: Sequence[UndoItem]) -> None:
        """After ``items`` (newest first) were undone: give every directory they touched the
        mtime it had before the oldest of them, deepest first.

        Each undo puts back the parents' mtimes its own action recorded, so the result is
        right only if nothing changes a directory after the undo of the oldest action that
        knows it, across the whole rollback: a later restore of one of its entries, a temp
        file made and removed in it, the order in which a rollback resumed after a crash
        finished its items. This pass does not depend on that order. The state of a
        directory before the oldest item is the first thing the items recorded about it,
        oldest first: a pre-image of the path itself (a deep one also covers everything
        below), a parent mtime, or a pre-image of an ancestor that says the directory was
        absent, not a directory, or not among the ancestor's recorded children.
        """
        known: dict[str, int | None] = {}  # path -> mtime before the items (None: not a dir)
        complete: set[str] = set()  # paths whose recorded state covers all that is below

        def covered(rel: str) -> bool:
            return rel in known or any(
                anc in complete for anc in _ancestors(rel))

        def note(rel: str, want: Manifest) -> None:
            if covered(rel):
                return
            if want["type"] != "dir":
                known[rel] = None
                complete.add(rel)
                return
            known[rel] = want["mtime_ns"]
            children = want.get("children")
            if children is not None:
                for name, child in children.items():
                    note(_child(rel, name), child)
                complete.add(rel)

        for item in reversed(items):  # oldest first: the first record of a path wins
            undo = item.undo_info
            for rel, want in sorted(undo.get("pre", {}).items()):
                note(rel, want)
            for par, mtime in undo.get("parents", {}).items():
                if not covered(par):
                    known[par] = mtime
        for rel in sorted((r for r, m in known.items() if m is not None),
                          key=lambda r: (-r.count("/"), r)):
            mtime = known[rel]
            assert mtime is not None
            self.ws.set_mtime(rel, mtime)

    def _rename_back(self, item: UndoItem) -> bool:
        """Move a renamed entry back instead of recreating it (keeps a moved tree whole)."""
        undo = item.undo_info
        # not list(undo["pre"]): the journal stores JSON with sorted keys, so that order is
        # alphabetical, not (src, dst)
        rsrc, rdst = item.intent.params["src"], item.intent.params["dst"]
        if self.ws.lstat(rdst) is None or self.ws.lstat(rsrc) is not None:
            return False
        with self.ws.parent(rdst) as (dfd, dname), self.ws.parent(rsrc) as (sfd, sname):
            os.rename(dname, sname, src_dir_fd=dfd, dst_dir_fd=sfd)
        src_want = undo["pre"][rsrc]
        if src_want["type"] == "dir":
            self.ws.set_dir_meta(rsrc, src_want["mode"], src_want["mtime_ns"])
        self.ws.restore(rdst, undo["pre"][rdst], self.store, self._tmp("undo"))
        for par, mtime in undo["parents"].items():
            self.ws.set_mtime(par, mtime)
        return True

    def _matches_deep(self, rel: str, want: Manifest) -> bool:
        if not self.ws.matches(rel, want):
            return False
        children = want.get("children")
        if want["type"] != "dir" or children is None:
            return True
        if set(self.ws.listdir(rel)) != set(children):
            return False
        return all(self._matches_deep(_child(rel, n), w) for n, w in children.items())

    def resolve_intent(self, intent: Record) -> dict[str, Any] | None:
        undo = intent.undo
        tmp = undo.get("tmp", "")
        for rel in undo.get("pre", {}):
            if tmp:
                self._drop_tmp(rel, tmp)
            self._drop_tmp(rel, self._tmp("undo"))
        # deep: a recursive rmdir killed halfway leaves its top directory in place (shallowly
        # "unchanged") with part of its tree gone, which must be restored, not declared FAILED
        if all(self._matches_deep(rel, want) for rel, want in undo.get("pre", {}).items()):
            # it did not take effect, but matching ignores mtimes: an apply that failed and
            # was being cleaned up (every pre-image rewritten) when the process died leaves
            # new mtimes on the paths and on the directories of a deep pre-image; put the
            # recorded ones back, deepest first, then the parents'
            for rel, want in undo.get("pre", {}).items():
                self.ws.set_times(rel, want)
            for par, mtime in undo.get("parents", {}).items():
                self.ws.set_mtime(par, mtime)
            return None
        return self._post(*undo.get("pre", {}))


def _child(rel: str, name: str) -> str:
    return name if rel == "." else f"{rel}/{name}"


def _moved_children(item: UndoItem, rel: str) -> set[str]:
    """Names a rename moved into ``rel`` along with the directory (from the deep pre-image)."""
    if item.intent.kind != "fs.rename":
        return set()
    src, dst = item.intent.params["src"], item.intent.params["dst"]
    if rel != dst:
        return set()
    return set(item.undo_info["pre"][src].get("children", {}))


def _ancestors(rel: str) -> list[str]:
    parts = rel.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _copy_sparse(src: int, dst: int) -> None:
    """Copy the regular file ``src`` into the empty file ``dst``, data ranges only
    (SEEK_DATA/SEEK_HOLE): a sparse source stays sparse. Falls back to a dense copy where the
    file system cannot tell holes. Raises ``OSError``."""
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
            chunk = os.pread(src, min(1 << 20, end - start), start)
            if not chunk:
                raise OSError(errno.EIO, "the source file shrank while it was copied")
            view = memoryview(chunk)
            while view:
                written = os.pwrite(dst, view, start)
                start += written
                view = view[written:]
        pos = end
    os.ftruncate(dst, size)


def _check_moved_links(rdst: str, want: Manifest) -> None:
    """Refuse a rename that would move a symlink (or a tree holding one) to a place where the
    leading ``..`` of its target climbs above the workspace. Raises PathEscape."""
    stack = [(rdst, want)]
    while stack:
        rel, manifest = stack.pop()
        if manifest["type"] == "symlink":
            parts = [p for p in manifest["target"].split("/") if p not in ("", ".")]
            lead = 0
            while lead < len(parts) and parts[lead] == "..":
                lead += 1
            if lead > rel.count("/"):
                raise PathEscape(f"renaming would move the symlink -> {manifest['target']!r} to "
                                 f"{rel!r}, from where it points outside the workspace",
                                 target=rel)
        for name, child in (manifest.get("children") or {}).items():
            stack.append((_child(rel, name), child))
