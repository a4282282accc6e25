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

Everything in the upper directory was made by hostile code, so reading it is bounded: walks are
iterative and relative to directory file descriptors (never a path the code could lengthen past
PATH_MAX, never a recursion it could deepen), no file is opened except regular ones with
``O_NONBLOCK | O_NOFOLLOW``, and the walk stops as soon as the change set exceeds the run's
``Limits.changed_files``, ``changed_mb`` or ``changed_depth``. What the host will not apply
comes back as a ``refused`` entry whose ``target`` says why: a FIFO, socket or device, a name
that is not valid UTF-8, or (at path :data:`WHOLE_SET`) a change set over a limit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Iterator

from revex.runtime.sandbox._tree import DIR_FLAGS, lstat_at, remove_tree
from revex.runtime.sandbox.base import FileChange, Limits

_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
#: How a sandbox-made file is opened: never follows a symlink, never blocks on a FIFO.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
REFUSED = "refused"
#: The path of a refusal that concerns the whole change set (a limit it exceeds).
WHOLE_SET = "."
_CHUNK = 1 << 20


class _Reader:
    """Collects changes and stops at the run's limits (the first overflow ends the walk)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.changes: list[FileChange] = []
        self.bytes = 0
        self.full = False

    def add(self, change: FileChange) -> bool:
        """Append ``change``; False (with a whole-set refusal appended) once over a limit."""
        if self.full:
            return False
        lim = self.limits
        depth = change.path.count("/") + 1
        if depth > lim.changed_depth:
            return self._stop(f"the run left a tree deeper than {lim.changed_depth} levels "
                              f"(at {display(change.path)[:200]!r}; Limits.changed_depth); "
                              "nothing was applied")
        if len(self.changes) >= lim.changed_files:
            return self._stop(f"the run changed more than {lim.changed_files} entries "
                              "(Limits.changed_files); nothing was applied")
        if change.kind == "file":
            self.bytes += change.size
            if self.bytes > lim.changed_mb << 20:
                return self._stop(f"the run's changed files hold more than {lim.changed_mb} MiB "
                                  "(Limits.changed_mb); nothing was applied")
        self.changes.append(change)
        return True

    def _stop(self, reason: str) -> bool:
        self.full = True
        self.changes.append(FileChange(WHOLE_SET, REFUSED, target=reason))
        return False


def display(path: str) -> str:
    """``path`` as printable UTF-8 (undecodable bytes shown as ``\\xNN``)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _valid_name(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _special(st: os.stat_result) -> str | None:
    """What a non-applicable entry is, or None for a regular file, directory or symlink."""
    mode = st.st_mode
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode):
        return None
    for test, what in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return what
    return "a file of unknown type"


def _refusal(rel: str, what: str) -> FileChange:
    return FileChange(display(rel), REFUSED, target=(
        f"{what}; only regular files, directories and symlinks are applied"))


def _entry_change(rel: str, st: os.stat_result, dir_fd: int, name: str,
                  kind: str | None = None) -> FileChange:
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(name, dir_fd=dir_fd)
        if not _valid_name(target):
            return _refusal(rel, f"a symlink whose target {display(target)!r} is not valid UTF-8")
        return FileChange(rel, "symlink", mode=mode, target=target)
    if stat.S_ISDIR(st.st_mode):
        return FileChange(rel, kind or "dir", mode=mode)
    return FileChange(rel, "file", size=st.st_size, mode=mode)


def _join(rel_dir: str, name: str) -> str:
    return f"{rel_dir}/{name}" if rel_dir else name


def _lstat(dir_fd: int | None, name: str) -> os.stat_result | None:
    return None if dir_fd is None else lstat_at(dir_fd, name)


@contextlib.contextmanager
def _open_rel(root: str, rel: str) -> Iterator[int | None]:
    """An fd of the directory ``root/rel``, opened one component at a time without following
    symlinks; None when it is missing or not a directory."""
    try:
        fd = os.open(root, DIR_FLAGS)
    except OSError:
        yield None
        return
    try:
        for comp in rel.split("/") if rel else ():
            try:
                nfd = os.open(comp, DIR_FLAGS, dir_fd=fd)
            except OSError:
                yield None
                return
            os.close(fd)
            fd = nfd
        yield fd
    finally:
        os.close(fd)


def _is_opaque(fd: int) -> bool:
    for name in _OPAQUE_XATTRS:
        try:
            if os.getxattr(fd, name) == b"y":
                return True
        except OSError:
            continue  # absent xattr (ENODATA) or namespace not readable (EPERM): not opaque
    return False


def read_upper(upper: str, lower: str, limits: Limits | None = None) -> list[FileChange]:
    """Read an overlayfs upper directory into a change set, stopping at ``limits``.

    ``lower`` is the workspace the overlay was mounted over; it is consulted to tell a directory
    that was only copied up (to hold a changed child) from a new one or a mode change.
    Raises ``OSError`` if ``upper`` itself cannot be opened.
    """
    reader = _Reader(limits or Limits())
    os.close(os.open(upper, DIR_FLAGS))
    # (directory relative to upper, under an opaque or new directory): no fds are held between
    # steps, so a deep tree costs neither descriptors nor stack
    stack: list[tuple[str, bool]] = [("", False)]
    while stack and not reader.full:
        rel_dir, under_opaque = stack.pop()
        lower_dir = contextlib.nullcontext(None) if under_opaque else _open_rel(lower, rel_dir)
        with _open_rel(upper, rel_dir) as ufd, lower_dir as lfd:
            if ufd is None:
                continue
            subdirs = _read_upper_dir(reader, ufd, lfd, rel_dir, under_opaque)
        stack.extend(reversed(subdirs))
    return reader.changes


def _read_upper_dir(reader: _Reader, ufd: int, lfd: int | None, rel_dir: str,
                    under_opaque: bool) -> list[tuple[str, bool]]:
    subdirs: list[tuple[str, bool]] = []
    for name in sorted(os.listdir(ufd)):
        rel = _join(rel_dir, name)
        st = os.stat(name, dir_fd=ufd, follow_symlinks=False)
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            # overlayfs makes a whiteout only over a lower entry; any other one was not made
            # by a deletion
            change = (FileChange(rel, "delete") if _lstat(lfd, name) is not None else
                      _refusal(rel, "a whiteout with nothing beneath it"))
        elif (what := _special(st)) is not None:
            change = _refusal(rel, what)
        elif stat.S_ISDIR(st.st_mode):
            low = _lstat(lfd, name)
            low_is_dir = low is not None and stat.S_ISDIR(low.st_mode)
            dfd = os.open(name, DIR_FLAGS, dir_fd=ufd)
            try:
                opaque = _is_opaque(dfd)
            finally:
                os.close(dfd)
            subdirs.append((rel, under_opaque or opaque or not low_is_dir))
            if opaque and not under_opaque and low is not None:
                change = _entry_change(rel, st, ufd, name, "opaque")
            elif (under_opaque or not low_is_dir or low is None
                  or stat.S_IMODE(low.st_mode) != stat.S_IMODE(st.st_mode)):
                change = _entry_change(rel, st, ufd, name)
            else:
                continue  # only copied up to hold a changed child
        else:
            change = _entry_change(rel, st, ufd, name)
        if not _valid_name(rel):
            change = _refusal(rel, "a name that is not valid UTF-8")
        if not reader.add(change):
            break
    return subdirs


def copy_workspace(src: str, dst: str, owner: tuple[int, int] | None = None) -> None:
    """Copy the workspace ``src`` to the new directory ``dst`` (symlinks kept as links, modes
    and times kept; FIFOs, sockets and devices left out), then give every entry to ``owner``
    (uid, gid) when set.

    Raises ``OSError``/``shutil.Error`` if the copy fails.
    """
    def specials(directory: str, names: list[str]) -> set[str]:
        out = set()
        for name in names:
            with contextlib.suppress(OSError):
                if _special(os.lstat(os.path.join(directory, name))) is not None:
                    out.add(name)
        return out

    shutil.copytree(src, dst, symlinks=True, ignore=specials)
    if owner is not None:
        uid, gid = owner
        os.lchown(dst, uid, gid)
        for root, dirs, files in os.walk(dst):
            for name in dirs + files:
                os.lchown(os.path.join(root, name), uid, gid)


def diff_trees(lower: str, copy: str, limits: Limits | None = None) -> list[FileChange]:
    """Compare the original workspace ``lower`` with the copy a run changed, stopping at
    ``limits``.

    Raises ``OSError`` if the copy's root cannot be opened.
    """
    reader = _Reader(limits or Limits())
    os.close(os.open(copy, DIR_FLAGS))
    # (directory relative to the copy, whether everything below it is new)
    stack: list[tuple[str, bool]] = [("", False)]
    while stack and not reader.full:
        rel_dir, all_new = stack.pop()
        with _open_rel(copy, rel_dir) as cfd, _open_rel(lower, rel_dir) as lfd:
            if cfd is None:
                continue
            subdirs = _diff_dir(reader, cfd, None if all_new else lfd, rel_dir)
        stack.extend(reversed(subdirs))
    return reader.changes


def _diff_dir(reader: _Reader, cfd: int, lfd: int | None, rel_dir: str
              ) -> list[tuple[str, bool]]:
    subdirs: list[tuple[str, bool]] = []
    new_names = set(os.listdir(cfd))
    old_names = set(os.listdir(lfd)) if lfd is not None else set()
    for name in sorted(new_names | old_names):
        rel = _join(rel_dir, name)
        lst = _lstat(lfd, name) if name in old_names else None
        if name not in new_names:
            if lst is not None and _special(lst) is not None:
                continue  # never copied (copy_workspace leaves specials out): not a deletion
            change: FileChange | None = FileChange(rel, "delete")
        else:
            cst = os.stat(name, dir_fd=cfd, follow_symlinks=False)
            change = _diff_entry(rel, name, cfd, lfd, cst, lst, subdirs)
        if change is not None and not _valid_name(rel):
            change = _refusal(rel, "a name that is not valid UTF-8")
        if change is not None and not reader.add(change):
            break
    return subdirs


def _diff_entry(rel: str, name: str, cfd: int, lfd: int | None, cst: os.stat_result,
                lst: os.stat_result | None, subdirs: list[tuple[str, bool]]) -> FileChange | None:
    if (what := _special(cst)) is not None:
        return _refusal(rel, what)
    if stat.S_ISDIR(cst.st_mode):
        low_is_dir = lst is not None and stat.S_ISDIR(lst.st_mode)
        subdirs.append((rel, not low_is_dir))
        if lst is None:
            return _entry_change(rel, cst, cfd, name)
        if not low_is_dir:
            return _entry_change(rel, cst, cfd, name, "opaque")
        if stat.S_IMODE(lst.st_mode) != stat.S_IMODE(cst.st_mode):
            return _entry_change(rel, cst, cfd, name)
        return None
    if lst is None or not _same(lfd, cfd, name, lst, cst):
        return _entry_change(rel, cst, cfd, name)
    return None


def _same(lfd: int | None, cfd: int, name: str, lst: os.stat_result,
          cst: os.stat_result) -> bool:
    """Whether the copy's entry ``name`` is the lower one unchanged (type, mode, target, bytes)."""
    if lfd is None or stat.S_IFMT(lst.st_mode) != stat.S_IFMT(cst.st_mode):
        return False
    if stat.S_ISLNK(cst.st_mode):
        return os.readlink(name, dir_fd=lfd) == os.readlink(name, dir_fd=cfd)
    if stat.S_IMODE(lst.st_mode) != stat.S_IMODE(cst.st_mode):
        return False
    if not stat.S_ISREG(cst.st_mode):
        return stat.S_ISDIR(cst.st_mode)
    if lst.st_size != cst.st_size:
        return False
    a, b = open_regular(lfd, name), open_regular(cfd, name)
    try:
        while True:
            x, y = os.read(a, _CHUNK), os.read(b, _CHUNK)
            if x != y:
                return False
            if not x:
                return True
    finally:
        os.close(a)
        os.close(b)


def open_regular(dir_fd: int, name: str) -> int:
    """Open ``name`` under ``dir_fd`` for reading without following a symlink or blocking on a
    FIFO; returns the fd of a regular file. Raises ``OSError`` (``EINVAL`` for anything else)."""
    fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(22, f"{display(name)!r} is not a regular file")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_change(upper: str, rel: str) -> int:
    """Open the new content of the ``file`` change ``rel`` under ``upper`` (every component
    without following symlinks; see :func:`open_regular`). Raises ``OSError``."""
    parent, _, name = rel.rpartition("/")
    with _open_rel(upper, parent) as fd:
        if fd is None:
            raise FileNotFoundError(f"the change {display(rel)!r} is missing from the run's "
                                    "change directory")
        return open_regular(fd, name)


def apply_changes(changes: list[FileChange], upper: str, workspace: str) -> None:
    """Apply a change set to ``workspace`` directly (no journal): a reference implementation
    of the semantics, used by tests; the runtime applies changes as journaled file actions.

    Raises ``ValueError`` for a change set with refused entries (nothing is applied) and
    ``OSError`` if a change cannot be applied.
    """
    refused = [f"{c.path}: {c.target}" for c in changes if c.kind == REFUSED]
    if refused:
        raise ValueError("the change set has entries the host does not apply: "
                         + "; ".join(refused[:5]))
    for ch in changes:
        dest = os.path.join(workspace, ch.path)
        if ch.kind in ("delete", "opaque") or (
                os.path.lexists(dest) and _kind_of(dest) != ch.kind and ch.kind != "dir"):
            _remove(dest)
        if ch.kind == "delete":
            continue
        if ch.kind in ("dir", "opaque"):
            if os.path.lexists(dest) and not os.path.isdir(dest):
                _remove(dest)
            os.makedirs(dest, exist_ok=True)
            os.chmod(dest, ch.mode & 0o777)
        elif ch.kind == "symlink":
            if os.path.lexists(dest):
                _remove(dest)
            os.symlink(ch.target or "", dest)
        else:
            src = open_change(upper, ch.path)
            try:
                out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
                try:
                    while chunk := os.read(src, _CHUNK):
                        os.write(out, chunk)
                    os.fchmod(out, ch.mode & 0o777)
                finally:
                    os.close(out)
            finally:
                os.close(src)


def _kind_of(path: str) -> str:
    if os.path.islink(path):
        return "symlink"
    return "dir" if os.path.isdir(path) else "file"


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        remove_tree(path)
    elif os.path.lexists(path):
        os.unlink(path)
