"""The journal: hash chain and HMAC verification catch edits, deletions and rewrites; durability
pragmas are in effect; every record emits one JSON audit line."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from revex import Runtime
from revex.runtime.journal import GENESIS, canonical, record_hash


def _runtime_with_records(tmp_path: Path, audit: Path | str | None = None) -> Runtime:
    rt = Runtime(tmp_path / "state", audit=audit)
    with rt.episode(tmp_path / "ws") as ep:
        ep.fs.write_text("a.txt", "a")
        ep.fs.write_text("b.txt", "b")
        ep.fs.rename("a.txt", "c.txt")
    return rt


def _db(rt: Runtime) -> sqlite3.Connection:
    return sqlite3.connect(rt.state_dir / "journal.db", isolation_level=None)


def test_untouched_chain_verifies(tmp_path: Path) -> None:
    rt = _runtime_with_records(tmp_path)
    report = rt.verify()
    assert report.ok and report.checked == len(rt.journal.records()) > 5


def test_edited_record_content_is_reported(tmp_path: Path) -> None:
    rt = _runtime_with_records(tmp_path)
    _db(rt).execute("UPDATE records SET target='evil.txt' WHERE seq=3")
    report = rt.verify()
    assert not report.ok and report.first_bad_seq == 3 and "edited" in report.reason


def test_deleted_middle_record_is_reported(tmp_path: Path) -> None:
    rt = _runtime_with_records(tmp_path)
    _db(rt).execute("DELETE FROM records WHERE seq=4")
    report = rt.verify()
    assert not report.ok and report.first_bad_seq == 4 and "missing" in report.reason


def test_deleted_last_records_are_reported_by_the_head_marker(tmp_path: Path) -> None:
    rt = _runtime_with_records(tmp_path)
    total = len(rt.journal.records())
    _db(rt).execute("DELETE FROM records WHERE seq > ?", (total - 2,))
    report = rt.verify()
    assert not report.ok and report.first_bad_seq == total - 1
    assert "head" in report.reason


def test_chain_rewritten_with_recomputed_hashes_but_no_key_is_an_hmac_mismatch(
        tmp_path: Path) -> None:
    rt = _runtime_with_records(tmp_path)
    db = _db(rt)
    rows = db.execute("SELECT * FROM records ORDER BY seq").fetchall()
    cols = [d[0] for d in db.execute("SELECT * FROM records LIMIT 1").description]
    prev = GENESIS
    db.execute("BEGIN")
    for row in rows:
        rec = dict(zip(cols, row, strict=True))
        if rec["seq"] == 2:
            rec["target"] = "forged"
        content = {k: rec[k] for k in ("seq", "episode_id", "action_seq", "kind", "target",
                                       "status", "decision", "rule", "error", "refers_to",
                                       "ts")}
        for k in ("params", "undo", "result"):
            content[k] = json.loads(rec[k])
        digest = record_hash(prev, content)
        db.execute("UPDATE records SET target=?, prev_hash=?, hash=? WHERE seq=?",
                   (rec["target"], prev, digest, rec["seq"]))
        prev = digest
    db.execute("UPDATE meta SET value=? WHERE key='head'",
               (canonical({"seq": rows[-1][0], "hash": prev, "hmac": "0" * 64}),))
    db.execute("COMMIT")
    report = rt.verify()
    assert not report.ok and report.first_bad_seq == 2 and "HMAC" in report.reason


def test_wal_and_synchronous_full_are_in_effect(tmp_path: Path) -> None:
    rt = _runtime_with_records(tmp_path)
    db = rt.journal._db
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert (rt.state_dir / "journal.db-wal").exists()


def test_audit_sink_gets_one_json_line_per_record(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    rt = _runtime_with_records(tmp_path, audit=audit)
    rt.close()
    lines = audit.read_text().splitlines()
    events = [json.loads(line) for line in lines]
    records = Runtime(tmp_path / "state", audit=None).journal.records()
    assert len(events) == len(records)
    assert [e["seq"] for e in events] == [r.seq for r in records]
    assert [e["hash"] for e in events] == [r.hash for r in records]
    assert all(e["event"] == "journal.record" for e in events)
    assert {e["status"] for e in events} >= {"INTENT", "DONE", "UNDONE", "EVENT"}


def test_audit_none_spelled_as_a_string_writes_no_file(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # A CLI flag or a config file can only spell "none"; it once created ./none in the cwd.
    monkeypatch.chdir(tmp_path)
    rt = _runtime_with_records(tmp_path, audit="none")
    rt.close()
    assert not (tmp_path / "none").exists()
    assert not (rt.state_dir / "audit.jsonl").exists()
