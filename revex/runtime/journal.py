"""The crash-safe, append-only, hash-chained undo journal.

SQLite in WAL mode. A *durable* append (the default; ``synchronous=FULL``) is on disk when
:meth:`Journal.append` returns: an INTENT, with its undo information, is appended durably, so it
is on disk before its effect happens (the write-ahead rule). An outcome (DONE, FAILED, DENIED)
is appended with ``durable=False``: committed with ``synchronous=NORMAL`` for that transaction
only, so it costs no fsync. A process that is killed loses nothing committed (the WAL is in the
OS's page cache); a power loss can lose the non-durable commits after the last durable one, and
nothing else: the WAL is one file written in order, so the fsync of the next durable commit
(the next action's INTENT) makes every earlier commit durable too, and a checkpoint syncs the
WAL before copying it. What such a loss leaves is an INTENT without an outcome, which rollback
and recovery resolve by probing the target (see :mod:`revex.runtime.rollback`). The record of a
read, and the outcome of a file action, are not even a transaction of its own:
:meth:`Journal.defer` queues them for the next one (usually the next action's INTENT, which
makes them durable too). A process killed before that loses them; what that leaves is again
an INTENT without an outcome, and a file action's probe finds exactly whether and how it took
effect. One durable commit per mutating action and no other, none per read.

Small pre-images (at most :data:`INLINE_MAX` bytes) are kept in the ``blobs`` table instead of
the content store's files: :meth:`Journal.stage_blob` holds them until the next transaction,
which writes them before its records, so they are durable with the INTENT that names them, in
the same fsync (a blob file would cost two more: the file and its directory).

Records are never updated or deleted. Each record carries

    hash_i = sha256(hash_{i-1} || canonical_json(record_i))
    hmac_i = HMAC-SHA256(key, hash_i)

where the key lives in the state directory (mode 0600) and never enters a sandbox. The newest
``(seq, hash)`` is also kept, HMAC'd, in the ``meta`` table in the same transaction, so deleting
records from the end is caught as well as editing or rewriting the chain.

The ``episodes`` table is an index for listing (status, config); the records are the truth:
every status change is written as an EVENT record in the same transaction as the table update,
and the ``episode.begin`` record carries the sha256 of the config. Rollback reads an episode
through :meth:`Journal.episode_records`, which checks the chain (see
:mod:`revex.runtime.integrity`). A SQLite error never escapes raw: it becomes a JournalError
naming the cause (a full disk, a read-only file, a damaged page).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from revex.errors import JournalCorrupt, JournalError, JournalFormatError
from revex.runtime.records import (
    _STATUS,
    GENESIS,
    Record,
    Status,
    VerifyReport,
    _record,
    canonical,
    config_digest,
    encoded_record_hash,
    record_from_row,
)

# 2: pre-images may live in the blobs table (an older revex would not find them)
FORMAT_VERSION = 2
# the largest pre-image kept in the journal itself (larger ones go to the content store's files)
INLINE_MAX = 64 * 1024
_FULL, _NORMAL = 2, 1  # PRAGMA synchronous levels
# the most records of reads that wait for the next transaction (see Journal.defer)
DEFER_MAX = 256
# the text of the rows this process wrote that Journal.wrote remembers (the newest kept)
WRITTEN_MAX = 4 * 1024 * 1024


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    episode_id TEXT NOT NULL,
    action_seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    status TEXT NOT NULL,
    decision TEXT NOT NULL,
    rule TEXT NOT NULL,
    params TEXT NOT NULL,
    undo TEXT NOT NULL,
    result TEXT NOT NULL,
    error TEXT NOT NULL,
    refers_to INTEGER,
    ts REAL NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    hmac TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_episode ON records (episode_id, seq);
CREATE TABLE IF NOT EXISTS episodes (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    status TEXT NOT NULL,
    config TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs (sha TEXT PRIMARY KEY, data BLOB NOT NULL);
"""


class Journal:
    """An append-only journal in one SQLite file, safe across threads and processes."""

    def __init__(
        self,
        path: Path,
        key: bytes,
        on_record: Callable[[Record], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self._key = key
        self._on_record = on_record
        self._lock = threading.RLock()
        # small pre-images waiting for the next transaction (see stage_blob)
        self._staged: dict[str, bytes] = {}
        # records of reads waiting for the next transaction (see defer)
        self._deferred: list[dict[str, Any]] = []
        # inside a transaction: the deferred records it took and has not written yet, and
        # those it has written (emitted once it commits); see _append_locked
        self._flushing: list[dict[str, Any]] = []
        self._flushed: list[Record] = []
        # the rows this process inserted, as inserted, once committed (see wrote); those of
        # the transaction in progress wait in _inserting
        self._written: dict[int, tuple[Any, ...]] = {}
        self._written_chars = 0
        self._inserting: list[tuple[Any, ...]] = []
        self.max_bytes = INLINE_MAX
        try:
            self._db = sqlite3.connect(
                self.path, timeout=60.0, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._sync_level: int | None = _FULL
            self._db.execute("PRAGMA busy_timeout=60000")
            self._check_format()
        except (sqlite3.DatabaseError, ValueError) as exc:  # ValueError: undecodable text
            if getattr(exc, "sqlite_errorname", "").startswith(_NOT_DAMAGE):
                # the file may be fine: the disk is full, read-only or busy
                raise JournalError(f"cannot open the journal at {self.path}: "
                                   f"{describe_sqlite_error(exc)}") from exc
            raise JournalCorrupt(
                f"the journal at {self.path} cannot be opened as a revex journal ({exc}); "
                "move it aside to start a fresh state directory, keeping the old one for audit"
            ) from exc

    def _check_format(self) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                tables = {
                    row[0]
                    for row in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")
                }
                if "meta" in tables:
                    row = self._db.execute(
                        "SELECT value FROM meta WHERE key='format'"
                    ).fetchone()
                    found = int(row[0]) if row else None
                    if found is not None and found > FORMAT_VERSION:
                        raise JournalFormatError(
                            f"the journal at {self.path} has format {found}, newer than this "
                            f"revex understands ({FORMAT_VERSION}); upgrade revex to read it"
                        )
                    if found is not None and found < 1:
                        raise JournalFormatError(
                            f"the journal at {self.path} has an unknown format {found}"
                        )
                for stmt in _SCHEMA.strip().split(";\n"):
                    if stmt.strip():
                        self._db.execute(stmt)
                # a format-1 journal becomes 2: its records stay as they are, but pre-images
                # may now be kept in the blobs table, which an older revex would not read
                self._db.execute(
                    "INSERT INTO meta (key, value) VALUES ('format', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (str(FORMAT_VERSION),),
                )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite may have rolled back already (disk full)
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        """Write the deferred records (see :meth:`defer`), then close the file."""
        with self._lock:
            try:
                self.flush()
            except JournalError as exc:
                warnings.warn(f"{len(self._deferred)} queued record(s) (reads, outcomes that "
                              f"recovery probes) were not journaled: {exc}", stacklevel=2)
            self._db.close()

    # ---- appending -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _writing(self, what: str, *, durable: bool = True) -> Iterator[None]:
        """One write transaction; any SQLite error becomes a JournalError naming ``what`` and
        the real cause (SQLite rolls a transaction back by itself on a full disk, so a second
        ROLLBACK must not replace that cause with "no transaction is active").

        It first writes the staged blobs (see :meth:`stage_blob`) and the deferred records (see
        :meth:`defer`); a transaction that does not commit puts them back for the next one.
        ``durable=False`` commits it without an fsync (``synchronous=NORMAL`` for this
        transaction only; see the module docstring).
        """
        with self._lock:
            try:
                self._sync(durable)
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    staged, self._staged = self._staged, {}
                    deferred, self._deferred = self._deferred, []
                    # written by the body's first _append_locked, with its records, or below
                    self._flushing, self._flushed = deferred, []
                    try:
                        if staged:
                            self._db.executemany(
                                "INSERT OR IGNORE INTO blobs (sha, data) VALUES (?, ?)",
                                staged.items())
                        yield
                        if self._flushing:
                            self._append_locked(())
                        self._db.execute("COMMIT")
                        self._remember(self._inserting)
                    except BaseException:
                        self._staged = {**staged, **self._staged}
                        self._deferred = deferred + self._deferred
                        if self._db.in_transaction:
                            with contextlib.suppress(sqlite3.Error):
                                self._db.execute("ROLLBACK")
                        raise
                    finally:
                        flushed, self._flushing, self._flushed = self._flushed, [], []
                        self._inserting = []
                    self._emit(flushed)
                finally:
                    if not durable:
                        # back to FULL for whatever comes next; should that fail, the next
                        # durable transaction sets it again (or fails) before it begins
                        with contextlib.suppress(sqlite3.Error):
                            self._sync(True)
            except sqlite3.Error as exc:
                raise JournalError(f"cannot {what} in the journal at {self.path}: "
                                   f"{describe_sqlite_error(exc)}") from exc

    def _sync(self, durable: bool) -> None:
        level = _FULL if durable else _NORMAL
        if self._sync_level != level:
            self._sync_level = None  # unknown until the pragma has run
            self._db.execute(f"PRAGMA synchronous={level}")
            self._sync_level = level

    def append(self, *, durable: bool = True, **fields: Any) -> Record:
        """Append one record and return it (with its seq and hash). ``durable`` (the default):
        it is on disk when this returns; ``durable=False`` for a record whose loss in a power
        failure is a case its readers handle (an outcome: see the module docstring).

        Raises JournalError (disk full, read-only, damaged file), saying which.
        """
        return self.append_many([fields], durable=durable)[0]

    def append_many(self, batch: Iterable[dict[str, Any]], *,
                    durable: bool = True) -> list[Record]:
        """Append several records in one transaction (one fsync when ``durable``, none
        otherwise). Raises JournalError."""
        with self._writing("append records", durable=durable):
            out = self._append_locked(batch)
        self._emit(out)
        return out

    def defer(self, **fields: Any) -> None:
        """Queue a record that needs no transaction of its own: a read (it changed nothing),
        or the outcome of an action whose INTENT the probe of recovery resolves exactly (a
        file action). It is appended, in order, before the records of the next transaction
        (any append, a status change), by :meth:`flush`, by a read of the records, or by
        :meth:`close`; at most DEFER_MAX wait. A transaction that fails (a full disk) keeps
        them queued for the next one. A crash loses what is still queued, as a power loss
        loses a non-durable append. Raises JournalError only when it had to flush and could
        not (the record is queued all the same)."""
        fields.setdefault("ts", time.time())
        try:  # here, not when it is written: a bad record must not fail later transactions
            # (and the text is kept, so that writing it does not encode it again)
            fields["_encoded"] = (canonical(fields.get("params") or {}),
                                  canonical(fields.get("undo") or {}),
                                  canonical(fields.get("result") or {}))
        except (TypeError, ValueError) as exc:
            raise JournalError(f"record for {fields.get('kind')} {fields.get('target')!r} is "
                               f"not JSON: {exc}") from exc
        with self._lock:
            self._deferred.append(fields)
            if len(self._deferred) >= DEFER_MAX:
                self.flush()

    def flush(self) -> None:
        """Append the deferred records now (without an fsync). Raises JournalError."""
        with self._lock:
            if self._deferred:
                with self._writing("append records", durable=False):
                    pass  # _writing appends them

    # ---- small pre-images ------------------------------------------------------------------

    def stage_blob(self, digest: str, data: bytes) -> None:
        """Keep ``data`` (whose sha256 is ``digest``, at most INLINE_MAX bytes) in the journal:
        it is written by the next transaction, before its records, so a durable append made
        after this call returns with the blob on disk."""
        with self._lock:
            self._staged[digest] = data

    def blob(self, digest: str) -> bytes | None:
        """The bytes of an inline blob (staged or written), or None when there is none."""
        with self._lock:
            staged = self._staged.get(digest)
        if staged is not None:
            return staged
        rows = self._read("SELECT data FROM blobs WHERE sha=?", (digest,))
        return bytes(rows[0][0]) if rows else None

    def blob_digests(self) -> list[str]:
        return [r[0] for r in self._read("SELECT sha FROM blobs ORDER BY sha")]

    def drop_blobs(self, keep: set[str]) -> tuple[int, int]:
        """Delete every written inline blob not in ``keep``; returns (blobs, bytes) freed.
        Raises JournalError."""
        with self._lock:
            # a staged blob belongs to an action in flight: the transaction below writes it,
            # and must not delete it
            keep = keep | set(self._staged)
            with self._writing("delete unused pre-images"):
                rows = self._db.execute("SELECT sha, length(data) FROM blobs").fetchall()
                gone = [(sha, size) for sha, size in rows if sha not in keep]
                self._db.executemany("DELETE FROM blobs WHERE sha=?",
                                     [(sha,) for sha, _ in gone])
        return len(gone), sum(size for _, size in gone)

    def _append_locked(self, batch: Iterable[dict[str, Any]]) -> list[Record]:
        """Append ``batch`` inside the current transaction, after the deferred records the
        transaction took and has not written yet: one read of the head, one INSERT of all
        rows and one write of the head for both. Returns the records of ``batch``."""
        deferred, self._flushing = self._flushing, []
        head = self._db.execute(
            "SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        seq, prev = (head[0], head[1]) if head else (0, GENESIS)
        rows: list[tuple[Any, ...]] = []
        flushed: list[Record] = []
        out: list[Record] = []
        for source, into in ((deferred, flushed), (batch, out)):
            for fields in source:
                seq += 1
                rec, (params, undo, result) = self._make(seq, prev, fields)
                rows.append((rec.seq, rec.episode_id, rec.action_seq, rec.kind, rec.target,
                             str(rec.status), rec.decision, rec.rule, params, undo, result,
                             rec.error, rec.refers_to, rec.ts, rec.prev_hash, rec.hash,
                             self._mac(rec.hash)))
                into.append(rec)
                prev = rec.hash
        if rows:
            self._db.executemany(
                "INSERT INTO records VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
            self._write_head(seq, prev)
            self._inserting.extend(rows)
        self._flushed.extend(flushed)
        return out

    def _remember(self, rows: list[tuple[Any, ...]]) -> None:
        for row in rows:
            self._written[row[0]] = row
            self._written_chars += _row_chars(row)
        while self._written_chars > WRITTEN_MAX and self._written:
            self._written_chars -= _row_chars(self._written.pop(next(iter(self._written))))

    def wrote(self, row: tuple[Any, ...]) -> bool:
        """Whether ``row`` (a ``SELECT *`` row of ``records``) is, value for value and type
        for type, a row this process inserted and committed, with the hash and HMAC it
        computed for it: a check of its hash and HMAC would pass, so a checked read may skip
        recomputing them. Any other row (written by another process, by this one before it
        reopened the journal or longer ago than the newest WRITTEN_MAX characters, or changed
        in the file since) is False and gets the full check. Integers and the float are
        compared with their types, since ``1 == 1.0`` in Python but not in the hash."""
        with self._lock:
            mine = self._written.get(row[0]) if type(row[0]) is int else None
        return (mine is not None and mine == row and type(row[2]) is int
                and type(row[13]) is float and (row[12] is None or type(row[12]) is int))

    def _emit(self, records: list[Record]) -> None:
        if self._on_record is not None:
            for rec in records:
                self._on_record(rec)

    def _make(self, seq: int, prev: str, fields: dict[str, Any]
              ) -> tuple[Record, tuple[str, str, str]]:
        """The record, and its params, undo and result as stored (canonical JSON)."""
        content = {
            "seq": seq,
            "episode_id": fields["episode_id"],
            "action_seq": int(fields.get("action_seq", 0)),
            "kind": fields["kind"],
            "target": fields.get("target", ""),
            "status": str(fields["status"]),
            "decision": fields.get("decision", ""),
            "rule": fields.get("rule", ""),
            "params": fields.get("params") or {},
            "undo": fields.get("undo") or {},
            "result": fields.get("result") or {},
            "error": fields.get("error", ""),
            "refers_to": fields.get("refers_to"),
            "ts": fields.get("ts") or time.time(),
        }
        try:
            encoded = fields.get("_encoded") or (
                canonical(content["params"]), canonical(content["undo"]),
                canonical(content["result"]))
        except (TypeError, ValueError) as exc:
            raise JournalError(f"record for {content['kind']} {content['target']!r} is not "
                               f"JSON: {exc}") from exc
        digest = encoded_record_hash(prev, content, *encoded)
        status = content["status"]
        rec = _record(seq, content["episode_id"], content["action_seq"], content["kind"],
                      content["target"], _STATUS.get(status) or Status(status),
                      content["decision"], content["rule"], content["params"], content["undo"],
                      content["result"], content["error"], content["refers_to"], content["ts"],
                      prev, digest)
        return rec, encoded

    def _mac(self, text: str) -> str:
        return hmac.digest(self._key, text.encode(), "sha256").hex()  # = hmac.new(...).hexdigest()

    def _write_head(self, seq: int, digest: str) -> None:
        head = f"{seq}:{digest}"
        self._db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('head', ?)",
            (canonical({"seq": seq, "hash": digest, "hmac": self._mac(head)}),),
        )

    # ---- episodes index --------------------------------------------------------------------

    def begin_episode(self, episode_id: str, config: dict[str, Any],
                      **fields: Any) -> Record:
        """Register an episode as ``active`` and append its ``episode.begin`` record in one
        transaction, so an episode is never half-registered. The record carries the status and
        the sha256 of the config: recovery and ``verify`` check the episodes table against it.

        Raises JournalError (nothing is registered then).
        """
        now = time.time()
        params = {**(fields.pop("params", None) or {}), "status": "active",
                  "config_sha256": config_digest(config)}
        with self._writing(f"register episode {episode_id}"):
            self._db.execute(
                "INSERT INTO episodes (id, created_at, updated_at, status, config) "
                "VALUES (?,?,?,?,?)", (episode_id, now, now, "active", canonical(config)))
            out = self._append_locked([dict(episode_id=episode_id, kind="episode.begin",
                                            status=Status.EVENT, params=params, **fields)])
        self._emit(out)
        return out[0]

    def set_episode_status(self, episode_id: str, status: str, *, kind: str = "episode.status",
                           **fields: Any) -> Record:
        """Change an episode's status and append the EVENT record ``kind`` that states it, in
        one transaction: the status in the table is always the one the hash chain records.

        Raises JournalError (the status is then unchanged).
        """
        params = {**(fields.pop("params", None) or {}), "status": status}
        with self._writing(f"set the status of episode {episode_id}"):
            out = self._append_locked([dict(episode_id=episode_id, kind=kind,
                                            status=Status.EVENT, params=params, **fields)])
            self._db.execute("UPDATE episodes SET status=?, updated_at=? WHERE id=?",
                             (status, time.time(), episode_id))
        self._emit(out)
        return out[0]

    def _read(self, query: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._lock:
                return self._db.execute(query, args).fetchall()
        except (sqlite3.Error, ValueError) as exc:  # ValueError: undecodable text
            raise JournalCorrupt(f"cannot read the journal at {self.path}: "
                                 f"{describe_sqlite_error(exc)}; run `revex verify`") from exc

    def check_pages(self) -> None:
        """SQLite's ``integrity_check`` of the whole file (pages, b-trees and that indexes match
        their tables; it grows with the file): run before an undo or a recovery changes
        anything, because damage that only a write reaches (a byte flip in an index page that
        ``quick_check`` does not see) would otherwise fail an append after some actions were
        undone.

        Raises JournalCorrupt naming what SQLite found.
        """
        problems = [r[0] for r in self._read("PRAGMA integrity_check(5)")]
        if problems != ["ok"]:
            raise JournalCorrupt(f"the journal at {self.path} is damaged (SQLite "
                                 f"integrity_check: {'; '.join(map(str, problems))}); nothing "
                                 "was undone. Run `revex verify`")

    def episode(self, episode_id: str) -> dict[str, Any] | None:
        rows = self._read(
            "SELECT id, created_at, updated_at, status, config FROM episodes WHERE id=?",
            (episode_id,))
        return _episode_row(rows[0], self.path) if rows else None

    def episodes(self, status: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT id, created_at, updated_at, status, config FROM episodes"
        args: tuple[Any, ...] = ()
        if status is not None:
            query += " WHERE status=?"
            args = (status,)
        return [_episode_row(r, self.path) for r in self._read(query + " ORDER BY created_at",
                                                               args)]

    def find_episode(self, prefix: str) -> list[str]:
        rows = self._read("SELECT id FROM episodes WHERE id LIKE ? ORDER BY created_at",
                          (prefix.replace("%", "").replace("_", "\\_") + "%",))
        return [r[0] for r in rows]

    # ---- reading ---------------------------------------------------------------------------

    def records(self, episode_id: str | None = None) -> list[Record]:
        """Records as stored, for display (not checked: rollback reads :meth:`episode_records`).

        Raises JournalCorrupt when the file cannot be read.
        """
        self.flush()
        if episode_id is None:
            rows = self._read("SELECT * FROM records ORDER BY seq")
        else:
            rows = self._read("SELECT * FROM records WHERE episode_id=? ORDER BY seq",
                              (episode_id,))
        return [record_from_row(r, self.path) for r in rows]

    def iter_records(self, episode_id: str) -> Iterator[Record]:
        """Like :meth:`records` for one episode, one row at a time from one read transaction
        (a long episode is never held in memory whole). Raises JournalCorrupt."""
        try:
            with self.snapshot() as db:
                for row in db.execute("SELECT * FROM records WHERE episode_id=? ORDER BY seq",
                                      (episode_id,)):
                    yield record_from_row(row, self.path)
        except (sqlite3.Error, ValueError) as exc:  # ValueError: undecodable text
            raise JournalCorrupt(f"cannot read the journal at {self.path}: "
                                 f"{describe_sqlite_error(exc)}; run `revex verify`") from exc

    @contextlib.contextmanager
    def snapshot(self, *, flush: bool = True) -> Iterator[sqlite3.Connection]:
        """The connection inside one read transaction: a consistent view of the whole file
        (the deferred records written first, unless ``flush=False``: then they stay queued,
        and :meth:`queued` reads them, under the same lock)."""
        with self._lock:
            if flush:
                self.flush()
            self._db.execute("BEGIN")
            try:
                yield self._db
            finally:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("COMMIT")

    def mac(self, text: str) -> str:
        return self._mac(text)

    def queued(self, episode_id: str) -> list[Record]:
        """The records of ``episode_id`` still queued (see :meth:`defer`), in order: records
        this process made and has not written yet, so with seq 0 and no hash (they get both
        when the next transaction writes them)."""
        with self._lock:
            return [_record(0, f["episode_id"], int(f.get("action_seq", 0)), f["kind"],
                            f.get("target", ""), Status(f["status"]), f.get("decision", ""),
                            f.get("rule", ""), f.get("params") or {}, f.get("undo") or {},
                            f.get("result") or {}, f.get("error", ""), f.get("refers_to"),
                            f["ts"], "", "")
                    for f in self._deferred if f["episode_id"] == episode_id]

    def episode_records(self, episode_id: str, *, queued: bool = False) -> list[Record]:
        """The records of one episode, checked against the hash chain: what rollback, undo and
        recovery act on. Raises JournalCorrupt when any of them is missing, edited or
        unreadable (an undo then refuses rather than undo only some actions).

        ``queued``: the checked records are followed by those of the episode this process
        still holds queued (:meth:`queued`) instead of being preceded by a transaction that
        writes them: what a live rollback reads, whose durable begin record then writes them
        first, in its own transaction."""
        from revex.runtime.integrity import episode_slice

        return episode_slice(self, episode_id, queued=queued)

    def verify(self) -> VerifyReport:
        """Check the whole journal: SQLite's integrity check, the hash chain and HMACs, the head
        marker, the index rollback reads against the table, and the episodes table against the
        chain (see :mod:`revex.runtime.integrity`).

        Returns a report naming the first problem; never raises for a damaged journal.
        """
        from revex.runtime.integrity import verify_journal

        return verify_journal(self)


def describe_sqlite_error(exc: Exception) -> str:
    """The SQLite error with its code, and what to do for the causes a user can fix."""
    name = getattr(exc, "sqlite_errorname", "") or type(exc).__name__
    base = "_".join(name.split("_")[:2])  # SQLITE_READONLY_DBMOVED -> SQLITE_READONLY
    hint = _HINTS.get(base, "")
    return f"{exc} ({name})" + (f"; {hint}" if hint else "")


_NOT_DAMAGE = ("SQLITE_FULL", "SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_IOERR",
               "SQLITE_BUSY", "SQLITE_PERM", "SQLITE_LOCKED")

_HINTS = {
    "SQLITE_FULL": "the disk holding the state dir is full: free space and retry",
    "SQLITE_IOERR": "the disk holding the state dir failed a read or write (full or failing?)",
    "SQLITE_READONLY": "the state dir or journal file is read-only: fix its permissions",
    "SQLITE_CORRUPT": "the journal file is damaged: run `revex verify`",
    "SQLITE_NOTADB": "the journal file is damaged: run `revex verify`",
    "SQLITE_CANTOPEN": "the journal file cannot be opened: check the state dir",
}


def _episode_row(row: tuple[Any, ...], path: Path) -> dict[str, Any]:
    try:
        config = json.loads(row[4])
    except (TypeError, ValueError) as exc:
        raise JournalCorrupt(f"the episodes table of {path} is damaged (config of {row[0]!r} "
                             f"is not JSON: {exc}); run `revex verify`") from exc
    return {"id": row[0], "created_at": row[1], "updated_at": row[2], "status": row[3],
            "config": config}


def _row_chars(row: tuple[Any, ...]) -> int:
    """About the memory a remembered row holds: its JSON fields and a fixed part."""
    return len(row[8]) + len(row[9]) + len(row[10]) + len(row[11]) + 512

