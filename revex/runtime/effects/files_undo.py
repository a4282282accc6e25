"""The undo side of the file effect: drift checks, restores verified against the pre-state,
settling directory mtimes, and resolving INTENTs left by a crash.

:class:`FileUndo` is the base of :class:`revex.runtime.effects.files.FileEffect`, which adds the
plans. An undo is compare-and-set against the post-state its action recorded, then restores the
pre-state exactly, then re-reads every restored path: only when each holds its pre-state again
(bytes hash, type, mode, symlink target, absence, a removed tree) is the undo done; otherwise it
is a :class:`~revex.errors.ConflictError` naming what differs.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Sequence
from typing import Any

from revex.errors import ConflictError, PolicyViolation
from revex.runtime.effects.base import UndoItem
from revex.runtime.effects.workspace import TMP_PREFIX, Manifest, PathEscape, Workspace
from revex.runtime.journal import Record
from revex.runtime.store import ContentStore


class FileUndo:
    """Restoring and verifying workspace entries from their recorded manifests."""

    episode_id: str
    store: ContentStore
    ws: Workspace

    def _tmp(self, tag: str) -> str:
        return f"{TMP_PREFIX}{self.episode_id}-{tag}.tmp"

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

    def _drop_tmp(self, rel: str, tmp: str) -> None:
        with contextlib.suppress(OSError, PathEscape), self.ws.parent(rel) as (fd, _):
            os.unlink(tmp, dir_fd=fd)

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
        # no temp file of the action to drop (_restore's ``tmp``): an action with a DONE
        # renamed its temp file into place, and one without is resolved first (resolve_intent
        # drops it); a file of that name now is someone else's, not the episode's to delete
        undo, post = item.undo_info, item.post.get("post", {})
        # the post-state first: it usually matches through the cheap (inode, ctime, mtime)
        # check, and only when it does not is the pre-state compared, which hashes files
        drift = [rel for rel, want in post.items() if not self.ws.matches(rel, want)]
        if drift and all(self.ws.matches(rel, want) for rel, want in undo["pre"].items()):
            # already undone: just settle metadata
            self._verify_undone(item, self._restore(undo, "", forced=force))
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
        self._verify_undone(item, self._restore(undo, "", forced=force))

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
