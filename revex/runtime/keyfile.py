"""The journal's HMAC key (``<state_dir>/hmac.key``): 32 random bytes, mode 0600.

The key is what makes a rewritten chain detectable, so a damaged or missing key must never be
used or replaced silently:

- it is created atomically: written to a temporary file, fsynced, then linked into place, so a
  full disk or a crash leaves either no key or a complete one, never a short one;
- a key of the wrong length is refused;
- a missing key is created only while the journal has no records; once it has records, the
  key that signed them is needed and opening refuses, saying so.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import tempfile
from pathlib import Path

from revex.errors import StateError

KEY_BYTES = 32


def journal_record_count(journal_path: Path) -> int:
    """How many records the journal file holds (0 if there is none); read-only."""
    if not journal_path.exists():
        return 0
    try:
        db = sqlite3.connect(f"file:{journal_path}?mode=ro", uri=True)
    except sqlite3.Error:
        return 1  # a file we cannot read is not known to be empty: never re-key it
    try:
        row = db.execute("SELECT COUNT(*) FROM records").fetchone()
        return int(row[0])
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return 0
        return 1
    except sqlite3.Error:
        return 1
    finally:
        db.close()


def load_or_create_key(path: Path, journal_path: Path) -> bytes:
    """The HMAC key at ``path``; created (atomically) only while ``journal_path`` is empty.

    Raises StateError for a key of the wrong length, a missing key when the journal has
    records, or an OSError (e.g. a full disk) while creating it; no partial key is left.
    """
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = None
    except OSError as exc:
        raise StateError(f"cannot read the journal key {path}: {exc}") from exc
    if key is not None:
        if len(key) != KEY_BYTES:
            raise StateError(
                f"the journal key {path} has {len(key)} bytes, not {KEY_BYTES}: it is damaged "
                "(e.g. cut short by a full disk). Restore it from a backup; if the journal "
                "has no records yet, delete the key and open again")
        return key
    records = journal_record_count(journal_path)
    if records:
        raise StateError(
            f"the journal key {path} is missing but the journal {journal_path} already has "
            "records: without the key that signed them they cannot be verified. Restore the "
            "key from a backup, or move the state dir aside to start a new one")
    return _create(path, journal_path)


def _create(path: Path, journal_path: Path) -> bytes:
    key = os.urandom(KEY_BYTES)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".hmac.key-")
    try:
        try:
            os.fchmod(fd, 0o600)
            if os.write(fd, key) != KEY_BYTES:
                raise OSError(errno.ENOSPC, "short write")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if another process created the key first: use theirs
        except FileExistsError:
            return load_or_create_key(path, journal_path)
        _fsync_dir(path.parent)
        return key
    except OSError as exc:
        raise StateError(f"cannot create the journal key {path}: {exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
