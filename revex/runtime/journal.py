"""The crash-safe, append-only, hash-chained undo journal.

SQLite in WAL mode with ``synchronous=FULL``: a record is on disk when :meth:`Journal.append`
returns, so the undo information of an action is durable before its effect happens (the
write-ahead rule). Records are never updated or deleted. Each record carries

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
import hashlib
import hmac
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from revex.errors import JournalCorrupt, JournalError, JournalFormatError

FORMAT_VERSION = 1
GENESIS = "0" * 64


class Status(StrEnum):
    INTENT = "INTENT"
    DONE = "DONE"
    FAILED = "FAILED"
    DENIED = "DENIED"
    UNDONE = "UNDONE"
    EVENT = "EVENT"


_HASHED_FIELDS = (
    "seq", "episode_id", "action_seq", "kind", "target", "status", "decision", "rule",
    "params", "undo", "result", "error", "refers_to", "ts",
)


@dataclass(frozen=True)
class Record:
    """One journal row. ``params``, ``undo`` and ``result`` are JSON-decoded dicts."""

    seq: int
    episode_id: str
    action_seq: int
    kind: str
    target: str
    status: Status
    decision: str = ""
    rule: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    undo: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    refers_to: int | None = None
    ts: float = 0.0
    prev_hash: str = GENESIS
    hash: str = ""

    def to_json(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in _HASHED_FIELDS}
        out["status"] = str(self.status)
        out["prev_hash"] = self.prev_hash
        out["hash"] = self.hash
        return out


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def record_hash(prev_hash: str, content: dict[str, Any]) -> str:
    return hashlib.sha256((prev_hash + canonical(content)).encode()).hexdigest()


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str = ""


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
        try:
            self._db = sqlite3.connect(
                self.path, timeout=60.0, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
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
                self._db.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('format', ?)",
                    (str(FORMAT_VERSION),),
                )
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite may have rolled back already (disk full)
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- appending -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _writing(self, what: str) -> Iterator[None]:
        """One write transaction; any SQLite error becomes a JournalError naming ``what`` and
        the real cause (SQLite rolls a transaction back by itself on a full disk, so a second
        ROLLBACK must not replace that cause with "no transaction is active")."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise JournalError(f"cannot {what} in the journal at {self.path}: "
                                   f"{describe_sqlite_error(exc)}") from exc

    def append(self, **fields: Any) -> Record:
        """Append one record durably and return it (with its seq and hash).

        Raises JournalError (disk full, read-only, damaged file), saying which.
        """
        return self.append_many([fields])[0]

    def append_many(self, batch: Iterable[dict[str, Any]]) -> list[Record]:
        """Append several records in one durable transaction (one fsync). Raises JournalError."""
        with self._writing("append records"):
            out = self._append_locked(batch)
        self._emit(out)
        return out

    def _append_locked(self, batch: Iterable[dict[str, Any]]) -> list[Record]:
        out: list[Record] = []
        head = self._db.execute(
            "SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        seq, prev = (head[0], head[1]) if head else (0, GENESIS)
        for fields in batch:
            seq += 1
            rec = self._make(seq, prev, fields)
            self._insert(rec)
            out.append(rec)
            prev = rec.hash
        if out:
            self._write_head(out[-1])
        return out

    def _emit(self, records: list[Record]) -> None:
        if self._on_record is not None:
            for rec in records:
                self._on_record(rec)

    def _make(self, seq: int, prev: str, fields: dict[str, Any]) -> Record:
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
        digest = record_hash(prev, content)
        return Record(
            seq=seq,
            episode_id=content["episode_id"],
            action_seq=content["action_seq"],
            kind=content["kind"],
            target=content["target"],
            status=Status(content["status"]),
            decision=content["decision"],
            rule=content["rule"],
            params=content["params"],
            undo=content["undo"],
            result=content["result"],
            error=content["error"],
            refers_to=content["refers_to"],
            ts=content["ts"],
            prev_hash=prev,
            hash=digest,
        )

    def _insert(self, rec: Record) -> None:
        try:
            params, undo, result = (canonical(rec.params), canonical(rec.undo),
                                    canonical(rec.result))
        except (TypeError, ValueError) as exc:
            raise JournalError(f"record for {rec.kind} {rec.target!r} is not JSON: {exc}") from exc
        self._db.execute(
            "INSERT INTO records VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (rec.seq, rec.episode_id, rec.action_seq, rec.kind, rec.target, str(rec.status),
             rec.decision, rec.rule, params, undo, result, rec.error, rec.refers_to, rec.ts,
             rec.prev_hash, rec.hash, self._mac(rec.hash)),
        )

    def _mac(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def _write_head(self, rec: Record) -> None:
        head = f"{rec.seq}:{rec.hash}"
        self._db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('head', ?)",
            (canonical({"seq": rec.seq, "hash": rec.hash, "hmac": self._mac(head)}),),
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
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """The connection inside one read transaction: a consistent view of the whole file."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield self._db
            finally:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("COMMIT")

    def mac(self, text: str) -> str:
        return self._mac(text)

    def episode_records(self, episode_id: str) -> list[Record]:
        """The records of one episode, checked against the hash chain: what rollback, undo and
        recovery act on. Raises JournalCorrupt when any of them is missing, edited or
        unreadable (an undo then refuses rather than undo only some actions)."""
        from revex.runtime.integrity import episode_slice

        return episode_slice(self, episode_id)

    def verify(self) -> VerifyReport:
        """Check the whole journal: SQLite's integrity check, the hash chain and HMACs, the head
        marker, the index rollback reads against the table, and the episodes table against the
        chain (see :mod:`revex.runtime.integrity`).

        Returns a report naming the first problem; never raises for a damaged journal.
        """
        from revex.runtime.integrity import verify_journal

        return verify_journal(self)


def config_digest(config: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(config).encode()).hexdigest()


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


def record_from_row(row: tuple[Any, ...], path: Path) -> Record:
    """A Record from a ``SELECT *`` row; JournalCorrupt when the row cannot be decoded."""
    try:
        return Record(
            seq=row[0], episode_id=row[1], action_seq=row[2], kind=row[3], target=row[4],
            status=_STATUS.get(row[5]) or Status(row[5]), decision=row[6], rule=row[7],
            params=_obj(row[8]), undo=_obj(row[9]), result=_obj(row[10]), error=row[11],
            refers_to=row[12], ts=row[13], prev_hash=row[14], hash=row[15],
        )
    except (TypeError, ValueError) as exc:
        raise JournalCorrupt(f"record {row[0]} of the journal at {path} cannot be decoded "
                             f"({exc}); run `revex verify`") from exc


_STATUS = {str(s): s for s in Status}


def _obj(text: str) -> dict[str, Any]:
    # most records leave two of params/undo/result empty: skip the JSON parser for those
    if text == "{}":
        return {}
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, found {type(value).__name__}")
    return value
