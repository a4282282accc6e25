"""Checking the journal: what ``revex verify`` covers, and the checked reads rollback uses.

Rollback, undo and recovery act on what the journal says an episode did, so a record that is
missing from what they read makes an undo silently incomplete. Two defences:

- :func:`episode_slice` (every rollback, undo and recovery): an episode's records are read from
  the table in seq order from its ``episode.begin`` to the head, and that whole stretch of the
  chain is checked (no seq missing, every prev_hash links, every hash and HMAC recomputes, the
  head marker matches the last record). Any gap or edit raises JournalCorrupt: an undo refuses
  rather than undo some of the actions. A live rollback also gets the episode's records that
  its own process still holds queued, not yet written (see ``Journal.queued``): records it
  made itself, which its durable begin record then writes first.
- :func:`verify_journal` (``revex verify``): SQLite's own ``integrity_check`` (damaged pages,
  indexes that disagree with their table), the full hash chain and HMACs, the head marker, the
  index against the table (per episode), the episodes table against the chain (each
  episode's status must be the last one its records state, and its config must hash to the
  digest in its ``episode.begin`` record), and the small pre-images kept in the journal
  against their sha256.

:func:`episode_slice` hashes each record from its JSON fields as stored, the exact text that
was appended and hashed, and decodes only the episode's own records; ``verify`` decodes every
record and hashes it re-encoded, so the two checks do not share that code.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from revex.errors import JournalCorrupt
from revex.runtime.journal import describe_sqlite_error
from revex.runtime.records import (
    _HASHED_FIELDS,
    GENESIS,
    Record,
    Status,
    VerifyReport,
    config_digest,
    encoded_record_hash,
    record_from_row,
    record_hash,
)

if TYPE_CHECKING:
    from revex.runtime.journal import Journal

# the statuses of journals written before each status change was itself a record
_LEGACY_STATUS = {"episode.begin": "active", "episode.commit": "committed",
                  "episode.close": "rolled_back", "episode.undo": "undone"}
_LIFECYCLE = frozenset({*_LEGACY_STATUS, "episode.status"})


def lifecycle_status(rec: Record) -> str | None:
    """The episode status a record states, if it is a lifecycle event."""
    if rec.status is not Status.EVENT or rec.kind not in _LIFECYCLE:
        return None
    status = rec.params.get("status")
    if isinstance(status, str):
        return status
    return _LEGACY_STATUS.get(rec.kind)


def chain_status(records: Iterable[Record]) -> str | None:
    """The status of an episode as its hash-chained records state it (the last one wins)."""
    status, explicit = None, False
    for rec in records:
        explicit = explicit or ("status" in rec.params and rec.kind in _LIFECYCLE)
        if (not explicit and status == "committed" and rec.kind == "episode.rollback.begin"
                and rec.status is Status.EVENT):
            status = "rolling_back"  # a journal from before status records: an undo began
        status = lifecycle_status(rec) or status
    return status


def _legacy_equal(table: str, chained: str) -> bool:
    """Statuses a journal written before status records could hold for the same episode:
    those versions changed ``recovered``, ``conflict`` and ``rolling_back`` in the table only.
    Never equal: an episode the table calls active that its records call finished."""
    if table in ("active", "rolling_back"):
        return chained in ("active", "rolling_back")
    return (table, chained) in {("recovered", "undone"), ("conflict", "active"),
                                ("conflict", "rolling_back"), ("conflict", "committed")}


def hash_ok(rec: Record) -> bool:
    content: dict[str, Any] = {name: getattr(rec, name) for name in _HASHED_FIELDS}
    content["status"] = str(rec.status)
    return record_hash(rec.prev_hash, content) == rec.hash


def row_hash_ok(row: tuple[Any, ...]) -> bool:
    """:func:`hash_ok` of a ``SELECT *`` row, hashed from its JSON fields as stored (what
    appending hashed) without decoding them. Stricter than decoding and re-encoding: only the
    exact text that was appended matches."""
    content = {"seq": row[0], "episode_id": row[1], "action_seq": row[2], "kind": row[3],
               "target": row[4], "status": row[5], "decision": row[6], "rule": row[7],
               "error": row[11], "refers_to": row[12], "ts": row[13]}
    try:
        return encoded_record_hash(row[14], content, row[8], row[9], row[10]) == row[15]
    except (TypeError, ValueError):  # a field of the wrong type: edited
        return False


def _head(db: sqlite3.Connection, journal: Journal) -> tuple[int, str] | None:
    row = db.execute("SELECT value FROM meta WHERE key='head'").fetchone()
    if row is None:
        return None
    try:
        head = json.loads(row[0])
        seq, digest, mac = int(head["seq"]), str(head["hash"]), str(head["hmac"])
    except (TypeError, ValueError, KeyError) as exc:
        raise JournalCorrupt(f"the head marker of {journal.path} is unreadable ({exc}); "
                             "run `revex verify`") from exc
    if not hmac.compare_digest(journal.mac(f"{seq}:{digest}"), mac):
        raise JournalCorrupt(f"the head marker of {journal.path} does not match its HMAC; "
                             "run `revex verify`")
    return seq, digest


def episode_slice(journal: Journal, episode_id: str, *, queued: bool = False) -> list[Record]:
    """The records of ``episode_id``, with the chain from its first record to the head checked;
    with ``queued``, followed by the episode's records this process still holds queued (see
    :meth:`Journal.episode_records`).

    Raises JournalCorrupt naming the first problem.
    """
    def damaged(why: str) -> JournalCorrupt:
        return JournalCorrupt(
            f"the journal at {journal.path} is damaged: {why}; episode {episode_id} cannot be "
            "rolled back or undone safely (nothing was undone). Run `revex verify`; restore "
            "the state dir from a backup to undo it")

    try:
        with journal.snapshot(flush=not queued) as db:
            tail = journal.queued(episode_id) if queued else []
            row = db.execute("SELECT MIN(seq) FROM records WHERE episode_id=?",
                             (episode_id,)).fetchone()
            if row is None or row[0] is None:
                return []
            head = _head(db, journal)
            expected, prev = int(row[0]), None
            out: list[Record] = []
            # the table in rowid order, not the episode index: a row the index lost is still
            # read here, and every row in between is part of the checked stretch of the chain
            # only this episode's rows are decoded; every row is checked from its text
            for raw in db.execute("SELECT * FROM records WHERE seq >= ? ORDER BY seq",
                                  (expected,)):
                seq, digest = raw[0], raw[15]
                if seq != expected:
                    raise damaged(f"record {expected} is missing (next is {seq})")
                if prev is not None and raw[14] != prev:
                    raise damaged(f"record {seq} does not link to record {expected - 1}")
                # a row exactly as this process wrote it needs no recomputed hash and HMAC
                if not journal.wrote(raw):
                    if not (isinstance(digest, str) and row_hash_ok(raw)):
                        raise damaged(f"record {seq} does not match its hash (edited)")
                    if not (isinstance(raw[16], str)
                            and hmac.compare_digest(journal.mac(digest), raw[16])):
                        raise damaged(f"record {seq} does not match its HMAC")
                if raw[1] == episode_id:
                    out.append(record_from_row(raw, journal.path))
                prev, expected = digest, expected + 1
    except (sqlite3.Error, ValueError) as exc:  # ValueError: text that is not UTF-8
        raise damaged(f"cannot read it ({describe_sqlite_error(exc)})") from exc
    if head is None or head != (expected - 1, prev):
        raise damaged(f"records after {expected - 1} are missing (the head marker says "
                      f"{head[0] if head else 'nothing'})")
    out.extend(tail)
    _check_complete(out, damaged)
    return out


def _check_complete(records: Sequence[Record], damaged: Any) -> None:
    """An episode starts with its begin record, and every outcome refers to one of its INTENTs."""
    if not records or records[0].kind != "episode.begin":
        raise damaged("the episode's first record is not its episode.begin")
    intents = {r.seq for r in records if r.status is Status.INTENT}
    for rec in records:
        if rec.refers_to is not None and rec.refers_to not in intents:
            raise damaged(f"record {rec.seq} refers to record {rec.refers_to}, which is not an "
                          "INTENT of this episode")


def verify_journal(journal: Journal) -> VerifyReport:
    """See the module docstring. Never raises for a damaged journal."""
    try:
        with journal.snapshot() as db:
            return _verify(journal, db)
    except (sqlite3.Error, ValueError) as exc:  # ValueError: text that is not UTF-8
        return VerifyReport(False, 0, None,
                            f"the journal file is damaged: {describe_sqlite_error(exc)}")


def _verify(journal: Journal, db: sqlite3.Connection) -> VerifyReport:
    problems = [r[0] for r in db.execute("PRAGMA integrity_check(20)")]
    if problems != ["ok"]:
        return VerifyReport(False, 0, None,
                            "SQLite integrity check failed: " + "; ".join(problems[:5]))
    prev, expected, checked = GENESIS, 1, 0
    statuses: dict[str, str] = {}
    explicit: set[str] = set()  # episodes whose records state every status change
    configs: dict[str, str] = {}
    counts: dict[str, int] = {}
    try:
        for row in db.execute("SELECT * FROM records ORDER BY seq"):
            rec, mac = record_from_row(row, journal.path), row[16]
            if rec.seq != expected:
                return VerifyReport(False, checked, expected,
                                    f"record {expected} is missing (next is {rec.seq})")
            if rec.prev_hash != prev:
                return VerifyReport(False, checked, rec.seq,
                                    "prev_hash does not match the previous record's hash")
            if not hash_ok(rec):
                return VerifyReport(False, checked, rec.seq,
                                    "content does not match its hash (record edited)")
            if not hmac.compare_digest(journal.mac(rec.hash), mac):
                return VerifyReport(False, checked, rec.seq,
                                    "HMAC does not match (chain rewritten without the key)")
            status = lifecycle_status(rec)
            if status is not None:
                statuses[rec.episode_id] = status
                if "status" in rec.params:
                    explicit.add(rec.episode_id)
            elif rec.kind == "episode.rollback.begin" and rec.episode_id not in explicit \
                    and statuses.get(rec.episode_id) == "committed":
                statuses[rec.episode_id] = "rolling_back"
            if rec.kind == "episode.begin" and "config_sha256" in rec.params:
                configs[rec.episode_id] = rec.params["config_sha256"]
            counts[rec.episode_id] = counts.get(rec.episode_id, 0) + 1
            prev, expected, checked = rec.hash, expected + 1, checked + 1
        head = _head(db, journal)
    except JournalCorrupt as exc:
        return VerifyReport(False, checked, expected, f"unreadable record: {exc}")
    if head is None:
        if checked:
            return VerifyReport(False, checked, None, "the head marker is missing")
    elif head != (checked, prev):
        return VerifyReport(False, checked, checked + 1,
                            f"records after {checked} are missing (the head says {head[0]})")
    reason = (_check_index(db, counts) or _check_episodes(db, statuses, explicit, configs)
              or _check_blobs(db))
    if reason:
        return VerifyReport(False, checked, None, reason)
    return VerifyReport(True, checked)


def _check_index(db: sqlite3.Connection, counts: dict[str, int]) -> str:
    """The per-episode index (what rollback looks records up by) against the chain."""
    indexed = dict(db.execute("SELECT episode_id, COUNT(*) FROM records "
                              "INDEXED BY records_episode GROUP BY episode_id").fetchall())
    for episode_id in sorted(set(counts) | set(indexed)):
        if indexed.get(episode_id, 0) != counts.get(episode_id, 0):
            return (f"the index of episode {episode_id} lists {indexed.get(episode_id, 0)} "
                    f"records, the chain has {counts.get(episode_id, 0)}")
    return ""


def _check_blobs(db: sqlite3.Connection) -> str:
    """The small pre-images kept in the journal (what undo restores) against their digests."""
    for sha, data in db.execute("SELECT sha, data FROM blobs ORDER BY sha"):
        if not isinstance(data, bytes) or hashlib.sha256(data).hexdigest() != sha:
            return f"the pre-image {str(sha)[:16]}… kept in the journal is damaged"
    return ""


def _check_episodes(db: sqlite3.Connection, statuses: dict[str, str], explicit: set[str],
                    configs: dict[str, str]) -> str:
    """The episodes table (what recovery and `revex episodes` read) against the chain."""
    rows = db.execute("SELECT id, status, config FROM episodes ORDER BY id").fetchall()
    seen = set()
    for episode_id, status, config in rows:
        seen.add(episode_id)
        chained = statuses.get(episode_id)
        if chained is None:
            return f"episode {episode_id} is in the episodes table but has no records"
        if status != chained and (episode_id in explicit
                                  or not _legacy_equal(status, chained)):
            return (f"episode {episode_id} is '{status}' in the episodes table but its records "
                    f"say '{chained}' (the table was edited)")
        want = configs.get(episode_id)
        try:
            got = config_digest(json.loads(config))
        except (TypeError, ValueError):
            got = ""
        if want is not None and got != want:
            return (f"the config of episode {episode_id} in the episodes table does not match "
                    "its episode.begin record (the table was edited)")
    missing = sorted(set(statuses) - seen)
    if missing:
        return f"episode {missing[0]} has records but no row in the episodes table"
    return ""
