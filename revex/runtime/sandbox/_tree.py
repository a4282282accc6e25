"""Removing a tree a sandboxed run made, however deep, without following symlinks."""

from __future__ import annotations

import contextlib
import os
import stat

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    """lstat of ``name`` in the directory ``dir_fd``; None when it is missing."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None


def remove_tree(path: str | None) -> None:
    """Remove ``path`` and everything below it, however deep, without following symlinks.

    Iterative and fd-relative: each subdirectory is emptied of files and its own subdirectories
    are moved up into the top directory, so at most three descriptors are open and no path is
    longer than a name. Directories whose mode denies the owner (overlayfs's mode-000
    ``work/work``, a run's chmod) are opened up first. Missing is fine. Raises ``OSError`` when
    something cannot be removed.
    """
    if path is None:
        return
    parent, name = os.path.split(os.path.abspath(path))
    try:
        pfd = os.open(parent, DIR_FLAGS)
    except FileNotFoundError:
        return
    try:
        st = lstat_at(pfd, name)
        if st is None:
            return
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=pfd)
            return
        top = _open_dir(pfd, name)
        try:
            _empty(top)
        finally:
            os.close(top)
        os.rmdir(name, dir_fd=pfd)
    finally:
        os.close(pfd)


def _open_dir(dir_fd: int, name: str) -> int:
    """Open a directory we already lstat'ed as one; if its mode denies us (overlayfs leaves a
    mode-000 ``work/work``, a run can chmod its own dirs), give the owner rwx and retry."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    except PermissionError:
        os.chmod(name, 0o700, dir_fd=dir_fd)  # a directory, never a symlink (lstat'ed above)
        return os.open(name, DIR_FLAGS, dir_fd=dir_fd)


def _empty(top: int) -> None:
    with contextlib.suppress(OSError):
        os.fchmod(top, 0o700)  # a mode-0555 directory left by the run must still be emptied
    moved = 0
    while names := os.listdir(top):
        for name in names:
            st = lstat_at(top, name)
            if st is None:
                continue
            if not stat.S_ISDIR(st.st_mode):
                os.unlink(name, dir_fd=top)
                continue
            sub = _open_dir(top, name)
            try:
                with contextlib.suppress(OSError):
                    os.fchmod(sub, 0o700)
                for child in os.listdir(sub):
                    cst = lstat_at(sub, child)
                    if cst is not None and stat.S_ISDIR(cst.st_mode):
                        # moving a directory rewrites its "..": it must be writable to us
                        with contextlib.suppress(OSError):
                            os.chmod(child, 0o700, dir_fd=sub)
                        moved += 1
                        while lstat_at(top, f".revex-rm-{moved}") is not None:
                            moved += 1
                        os.rename(child, f".revex-rm-{moved}", src_dir_fd=sub, dst_dir_fd=top)
                    elif cst is not None:
                        os.unlink(child, dir_fd=sub)
            finally:
                os.close(sub)
            os.rmdir(name, dir_fd=top)
