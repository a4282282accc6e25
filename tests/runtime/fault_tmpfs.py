"""A small real tmpfs for fault tests (a full disk, a read-only directory): mounted for one test
and unmounted after it. Needs root (or CAP_SYS_ADMIN); a test skips, saying why, without it."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

PAGE = 4096


@contextlib.contextmanager
def mounted(path: Path, size: str, *options: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    opts = ",".join((f"size={size}", "mode=0700", *options))
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}); "
                    "this fault test needs root or CAP_SYS_ADMIN")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(mount: Path, leave_pages: int = 0) -> Path:
    """Fill the filesystem at ``mount`` until ``leave_pages`` pages are free; returns the
    filler file (delete it to free the space)."""
    filler = mount / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        block = b"\0" * (64 * PAGE)
        while True:
            try:
                os.write(fd, block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(block) == PAGE:
                    break
                block = b"\0" * PAGE
    finally:
        os.close(fd)
    if leave_pages:
        size = filler.stat().st_size
        os.truncate(filler, max(0, size - leave_pages * PAGE))
    return filler


def remount(path: Path, *options: str) -> None:
    """Remount the tmpfs at ``path`` (e.g. ``"ro"``); nothing on it may be open for writing."""
    subprocess.run(["mount", "-o", ",".join(("remount", *options)), str(path)], check=True,
                   capture_output=True)
