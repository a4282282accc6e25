"""The crash-safe, append-only, hash-chained undo journal.

SQLite in WAL mode with ``synchronous=FULL``: a record is on disk when :meth:`Journal.append`
returns, so the undo information of an action is durable before its effect happens (the
write-ahead rule). Records are never updated or deleted. Each record carries

    hash_i = sha256(hash_{i-1} || canonical_json(record_i))
    hmac_i = HMAC-SHA256(key, hash_i)

where the key lives in the state directory (mode 0600) and never enters a sandbox. The newest
``(seq, hash)`` is also kept, HMAC'd, in the ``meta`` table in the same transaction, so deleting
records from the end is caught as well as editing or rewriting the chain.

The ``episodes`` table is an index for listing (status, config); the records are the truth.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
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
        except sqlite3.DatabaseError as exc:
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
                self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- appending -------------------------------------------------------------------------

    def append(self, **fields: Any) -> Record:
        """Append one record durably and return it (with its seq and hash)."""
        return self.append_many([fields])[0]

    def append_many(self, batch: Iterable[dict[str, Any]]) -> list[Record]:
        """Append several records in one durable transaction (one fsync)."""
        out: list[Record] = []
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
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
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise JournalError(f"cannot append to the journal at {self.path}: {exc}") from exc
        if self._on_record is not None:
            for rec in out:
                self._on_record(rec)
        return out

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

    def put_episode(self, episode_id: str, status: str, config: dict[str, Any]) -> None:
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO episodes (id, created_at, updated_at, status, config) "
                "VALUES (?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET status=excluded.status, "
                "updated_at=excluded.updated_at",
                (episode_id, now, now, status, canonical(config)),
            )

    def set_episode_status(self, episode_id: str, status: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE episodes SET status=?, updated_at=? WHERE id=?",
                (status, time.time(), episode_id),
            )

    def episode(self, episode_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, created_at, updated_at, status, config FROM episodes WHERE id=?",
                (episode_id,),
            ).fetchone()
        return _episode_row(row) if row else None

    def episodes(self, status: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT id, created_at, updated_at, status, config FROM episodes"
        args: tuple[Any, ...] = ()
        if status is not None:
            query += " WHERE status=?"
            args = (status,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY created_at", args).fetchall()
        return [_episode_row(r) for r in rows]

    def find_episode(self, prefix: str) -> list[str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM episodes WHERE id LIKE ? ORDER BY created_at",
                (prefix.replace("%", "").replace("_", "\\_") + "%",),
            ).fetchall()
        return [r[0] for r in rows]

    # ---- reading ---------------------------------------------------------------------------

    def records(self, episode_id: str | None = None) -> list[Record]:
        with self._lock:
            if episode_id is None:
                rows = self._db.execute("SELECT * FROM records ORDER BY seq").fetchall()
            else:
                rows = self._db.execute(
                    "SELECT * FROM records WHERE episode_id=? ORDER BY seq", (episode_id,)
                ).fetchall()
        return [_record_row(r) for r in rows]

    def verify(self) -> VerifyReport:
        """Recompute the hash chain and HMACs over one consistent snapshot of the journal.

        Returns a report naming the first broken record; never raises for a damaged chain.
        """
        with self._lock:
            try:
                self._db.execute("BEGIN")
            except sqlite3.Error as exc:
                return VerifyReport(False, 0, 1, f"unreadable journal: {exc}")
            try:
                return self._verify_locked()
            finally:
                try:
                    self._db.execute("COMMIT")
                except sqlite3.Error:  # a damaged file can fail to end the read: drop it
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")

    def _verify_locked(self) -> VerifyReport:
        prev = GENESIS
        expected_seq = 1
        checked = 0
        try:
            for row in self._db.execute("SELECT * FROM records ORDER BY seq"):
                rec, mac = _record_row(row), row[16]
                if rec.seq != expected_seq:
                    return VerifyReport(False, checked, expected_seq,
                                        f"record {expected_seq} is missing (next is {rec.seq})")
                if rec.prev_hash != prev:
                    return VerifyReport(False, checked, rec.seq,
                                        "prev_hash does not match the previous record's hash")
                content = {name: getattr(rec, name) for name in _HASHED_FIELDS}
                content["status"] = str(rec.status)
                if record_hash(prev, content) != rec.hash:
                    return VerifyReport(False, checked, rec.seq,
                                        "content does not match its hash (record edited)")
                if not hmac.compare_digest(self._mac(rec.hash), mac):
                    return VerifyReport(False, checked, rec.seq,
                                        "HMAC does not match (chain rewritten without the key)")
                prev = rec.hash
                expected_seq += 1
                checked += 1
            row = self._db.execute("SELECT value FROM meta WHERE key='head'").fetchone()
        except (sqlite3.Error, json.JSONDecodeError, ValueError) as exc:
            return VerifyReport(False, checked, expected_seq, f"unreadable record: {exc}")
        if row is None:
            if checked:
                return VerifyReport(False, checked, None, "the head marker is missing")
            return VerifyReport(True, 0)
        head = json.loads(row[0])
        if not hmac.compare_digest(self._mac(f"{head['seq']}:{head['hash']}"), head["hmac"]):
            return VerifyReport(False, checked, None, "the head marker's HMAC does not match")
        if head["seq"] != checked or head["hash"] != prev:
            return VerifyReport(
                False, checked, checked + 1,
                f"records after {checked} are missing (the head says {head['seq']})",
            )
        damage = self._integrity_problem()
        if damage is not None:  # pages the chain does not read (indexes, episodes) are damaged
            return VerifyReport(False, checked, None, f"the journal file is damaged: {damage}")
        return VerifyReport(True, checked)

    def _integrity_problem(self) -> str | None:
        try:
            rows = self._db.execute("PRAGMA integrity_check(5)").fetchall()
        except sqlite3.Error as exc:
            return str(exc)
        return None if rows == [("ok",)] else "; ".join(str(r[0]) for r in rows)


def _episode_row(row: tuple[Any, ...]) -> dict[str, Any]:
    return {"id": row[0], "created_at": row[1], "updated_at": row[2], "status": row[3],
            "config": json.loads(row[4])}


def _record_row(row: tuple[Any, ...]) -> Record:
    return Record(
        seq=row[0], episode_id=row[1], action_seq=row[2], kind=row[3], target=row[4],
        status=_STATUS.get(row[5]) or Status(row[5]), decision=row[6], rule=row[7],
        params=_obj(row[8]), undo=_obj(row[9]), result=_obj(row[10]), error=row[11],
        refers_to=row[12], ts=row[13], prev_hash=row[14], hash=row[15],
    )


_STATUS = {str(s): s for s in Status}


def _obj(text: str) -> dict[str, Any]:
    # most records leave two of params/undo/result empty: skip the JSON parser for those
    if text == "{}":
        return {}
    value: dict[str, Any] = json.loads(text)
    return value


def load_or_create_key(path: Path) -> bytes:
    """The HMAC key, created once with mode 0600."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    try:
        key = os.urandom(32)
        os.write(fd, key)
        os.fsync(fd)
        return key
    finally:
        os.close(fd)
