"""Change sets: what a sandboxed run did to its workspace, as a list of :class:`FileChange`.

Two ways to get one, both giving the same kinds of entries:

* overlay mode: the run wrote into an overlayfs upper directory; :func:`read_upper` turns it into
  changes (whiteouts, character devices 0/0, are deletions; directories with the
  ``trusted.overlay.opaque``/``user.overlay.opaque`` xattr replaced a lower directory).
* copy mode (no overlay, or workspace files the sandbox user could not write through an overlay):
  the workspace is copied with :func:`copy_workspace` and :func:`diff_trees` compares the copy
  with the original afterwards.

In both modes the new content of a change lives at ``<upper>/<change.path>``, so
:func:`apply_changes` (and the runtime's journaled file actions) work the same for both.
Entries are ordered parents before children; a path appears at most once.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import stat

from revex.runtime.sandbox.base import FileChange

_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")


def _is_opaque(path: str) -> bool:
    for name in _OPAQUE_XATTRS:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue  # absent xattr (ENODATA) or namespace not readable (EPERM): not opaque
    return False


def _entry_change(rel: str, st: os.stat_result, full: str, kind: str | None = None) -> FileChange:
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        return FileChange(rel, "symlink", mode=mode, target=os.readlink(full))
    if stat.S_ISDIR(st.st_mode):
        return FileChange(rel, kind or "dir", mode=mode)
    return FileChange(rel, "file", size=st.st_size, mode=mode)


def read_upper(upper: str, lower: str) -> list[FileChange]:
    """Read an overlayfs upper directory into a change set.

    ``lower`` is the workspace the overlay was mounted over; it is consulted to tell a directory
    that was only copied up (to hold a changed child) from a new one or a mode change.
    Raises ``OSError`` if ``upper`` cannot be read.
    """
    changes: list[FileChange] = []

    def walk(rel_dir: str, under_opaque: bool) -> None:
        with os.scandir(os.path.join(upper, rel_dir) if rel_dir else upper) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                changes.append(FileChange(rel, "delete"))
                continue
            if stat.S_ISDIR(st.st_mode):
                opaque = _is_opaque(entry.path)
                low = os.path.join(lower, rel)
                if opaque and not under_opaque and os.path.lexists(low):
                    changes.append(_entry_change(rel, st, entry.path, "opaque"))
                elif (under_opaque or not os.path.isdir(low) or os.path.islink(low)
                      or stat.S_IMODE(os.lstat(low).st_mode) != stat.S_IMODE(st.st_mode)):
                    changes.append(_entry_change(rel, st, entry.path))
                walk(rel, under_opaque or opaque or not os.path.isdir(low))
                continue
            changes.append(_entry_change(rel, st, entry.path))

    walk("", False)
    return changes


def copy_workspace(src: str, dst: str, owner: tuple[int, int] | None = None) -> None:
    """Copy the workspace ``src`` to the new directory ``dst`` (symlinks kept as links, modes
    and times kept), then give every entry to ``owner`` (uid, gid) when set.

    Raises ``OSError``/``shutil.Error`` if the copy fails.
    """
    shutil.copytree(src, dst, symlinks=True)
    if owner is not None:
        uid, gid = owner
        os.lchown(dst, uid, gid)
        for root, dirs, files in os.walk(dst):
            for name in dirs + files:
                os.lchown(os.path.join(root, name), uid, gid)


def diff_trees(lower: str, copy: str) -> list[FileChange]:
    """Compare the original workspace ``lower`` with the copy a run changed.

    Raises ``OSError`` if either tree cannot be read.
    """
    changes: list[FileChange] = []

    def walk(rel_dir: str) -> None:
        cdir = os.path.join(copy, rel_dir) if rel_dir else copy
        ldir = os.path.join(lower, rel_dir) if rel_dir else lower
        new_names = set(os.listdir(cdir))
        old_names = set(os.listdir(ldir)) if os.path.isdir(ldir) else set()
        for name in sorted(new_names | old_names):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            cpath, lpath = os.path.join(cdir, name), os.path.join(ldir, name)
            if name not in new_names:
                changes.append(FileChange(rel, "delete"))
                continue
            cst = os.lstat(cpath)
            lst = os.lstat(lpath) if name in old_names else None
            if stat.S_ISDIR(cst.st_mode):
                if lst is None:
                    changes.append(_entry_change(rel, cst, cpath))
                elif not stat.S_ISDIR(lst.st_mode):
                    changes.append(_entry_change(rel, cst, cpath, "opaque"))
                elif stat.S_IMODE(lst.st_mode) != stat.S_IMODE(cst.st_mode):
                    changes.append(_entry_change(rel, cst, cpath))
                if lst is None or not stat.S_ISDIR(lst.st_mode):
                    _add_all(copy, rel, changes)
                else:
                    walk(rel)
                continue
            if lst is None or stat.S_IFMT(lst.st_mode) != stat.S_IFMT(cst.st_mode):
                changes.append(_entry_change(rel, cst, cpath))
            elif stat.S_ISLNK(cst.st_mode):
                if os.readlink(cpath) != os.readlink(lpath):
                    changes.append(_entry_change(rel, cst, cpath))
            elif (stat.S_IMODE(lst.st_mode) != stat.S_IMODE(cst.st_mode)
                  or not filecmp.cmp(lpath, cpath, shallow=False)):
                changes.append(_entry_change(rel, cst, cpath))

    walk("")
    return changes


def _add_all(root: str, rel_dir: str, changes: list[FileChange]) -> None:
    for name in sorted(os.listdir(os.path.join(root, rel_dir))):
        rel = f"{rel_dir}/{name}"
        full = os.path.join(root, rel)
        st = os.lstat(full)
        changes.append(_entry_change(rel, st, full))
        if stat.S_ISDIR(st.st_mode):
            _add_all(root, rel, changes)


def apply_changes(changes: list[FileChange], upper: str, workspace: str) -> None:
    """Apply a change set to ``workspace`` directly (no journal): a reference implementation
    of the semantics, used by tests; the runtime applies changes as journaled file actions.

    Raises ``OSError`` if a change cannot be applied.
    """
    for ch in changes:
        dest = os.path.join(workspace, ch.path)
        src = os.path.join(upper, ch.path)
        if ch.kind in ("delete", "opaque") or (
                os.path.lexists(dest) and _kind_of(dest) != ch.kind and ch.kind != "dir"):
            _remove(dest)
        if ch.kind == "delete":
            continue
        if ch.kind in ("dir", "opaque"):
            if os.path.lexists(dest) and not os.path.isdir(dest):
                _remove(dest)
            os.makedirs(dest, exist_ok=True)
            os.chmod(dest, ch.mode)
        elif ch.kind == "symlink":
            if os.path.lexists(dest):
                _remove(dest)
            os.symlink(ch.target or "", dest)
        else:
            shutil.copyfile(src, dest, follow_symlinks=False)
            os.chmod(dest, ch.mode)


def _kind_of(path: str) -> str:
    if os.path.islink(path):
        return "symlink"
    return "dir" if os.path.isdir(path) else "file"


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)
