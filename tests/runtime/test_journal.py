"""The journal: hash chain and HMAC verification catch edits, deletions and rewrites; durability
pragmas are in effect; every record emits one JSON audit line; the commit protocol (outcomes
without fsync, deferred reads, small pre-images kept in the journal) keeps the chain whole.
What a power loss may take is in test_journal_durability.py."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from revex import Runtime
from revex.errors import JournalError
from revex.runtime.journal import DEFER_MAX, INLINE_MAX, Journal
from revex.runtime.records import GENESIS, Status, canonical, encoded_record_hash, record_hash


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


# ---- the commit protocol: encoding once, outcomes without fsync, deferred reads, inline blobs --

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10)


@settings(max_examples=300, deadline=None)
@given(scalars=st.tuples(st.text(), st.integers(), st.text(), st.text(), st.text(),
                         st.none() | st.integers(), st.text(), st.integers(), st.text(),
                         st.floats(allow_nan=False)),
       fields=st.tuples(*[st.dictionaries(st.text(), _json, max_size=4)] * 3))
def test_the_hash_appending_computes_is_the_hash_verify_recomputes(
        scalars: tuple[Any, ...], fields: tuple[dict[str, Any], ...]) -> None:
    episode_id, action_seq, kind, target, status, refers_to, error, seq, rule, ts = scalars
    params, undo, result = fields
    content = {"seq": seq, "episode_id": episode_id, "action_seq": action_seq, "kind": kind,
               "target": target, "status": status, "decision": "allow", "rule": rule,
               "params": params, "undo": undo, "result": result, "error": error,
               "refers_to": refers_to, "ts": ts}
    encoded = [canonical(params), canonical(undo), canonical(result)]
    assert encoded == [json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
                       for v in (params, undo, result)]
    assert encoded_record_hash(GENESIS, content, *encoded) == record_hash(GENESIS, content)


def test_outcomes_commit_without_fsync_and_the_connection_stays_full(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db", b"k" * 32)
    levels: list[int] = []
    real = journal._db

    class Spy:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def execute(self, sql: str, *args: Any) -> Any:
            if sql == "COMMIT":
                levels.append(real.execute("PRAGMA synchronous").fetchone()[0])
            return real.execute(sql, *args)

    journal._db = Spy()  # type: ignore[assignment]
    intent = journal.append(episode_id="e", kind="fs.write", status=Status.INTENT)
    journal.append(episode_id="e", kind="fs.write", status=Status.DONE, refers_to=intent.seq,
                   durable=False)
    journal.append_many([dict(episode_id="e", kind="x", status=Status.EVENT)], durable=False)
    assert levels == [2, 1, 1]  # FULL for the INTENT, NORMAL for the rest
    assert real.execute("PRAGMA synchronous").fetchone()[0] == 2
    journal._db = real
    journal.close()


def test_a_failed_non_durable_commit_leaves_the_connection_full(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db", b"k" * 32)
    with pytest.raises(JournalError, match="not JSON"):
        journal.append(episode_id="e", kind="x", status=Status.DONE, durable=False,
                       params={"bad": object()})
    assert journal._db.execute("PRAGMA synchronous").fetchone()[0] == 2
    journal.append(episode_id="e", kind="x", status=Status.EVENT)
    assert [r.kind for r in journal.records()] == ["x"]
    journal.close()


def test_deferred_reads_are_written_in_order_before_the_next_record(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db", b"k" * 32)
    raw = sqlite3.connect(tmp_path / "j.db")
    journal.defer(episode_id="e", action_seq=1, kind="fs.read", status=Status.DONE)
    journal.defer(episode_id="e", action_seq=2, kind="fs.read", status=Status.DONE)
    assert raw.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 0  # no transaction
    journal.append(episode_id="e", action_seq=3, kind="fs.write", status=Status.INTENT)
    assert [(r.seq, r.action_seq, r.kind) for r in journal.records()] == [
        (1, 1, "fs.read"), (2, 2, "fs.read"), (3, 3, "fs.write")]
    # reading the records writes what waits; so do a full queue and close
    journal.defer(episode_id="e", action_seq=4, kind="fs.read", status=Status.DONE)
    assert len(journal.records()) == 4
    for i in range(DEFER_MAX):
        journal.defer(episode_id="e", action_seq=5 + i, kind="fs.read", status=Status.DONE)
    assert raw.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 4 + DEFER_MAX
    journal.defer(episode_id="e", action_seq=9999, kind="fs.read", status=Status.DONE)
    journal.close()
    assert raw.execute("SELECT MAX(action_seq) FROM records").fetchone()[0] == 9999
    reopened = Journal(tmp_path / "j.db", b"k" * 32)
    assert reopened.verify().ok
    reopened.close()


def test_a_deferred_record_that_is_not_json_is_refused_at_once(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db", b"k" * 32)
    with pytest.raises(JournalError, match="not JSON"):
        journal.defer(episode_id="e", kind="fs.read", status=Status.DONE,
                      result={"x": object()})
    journal.append(episode_id="e", kind="x", status=Status.EVENT)  # nothing poisoned
    journal.close()


def test_small_pre_images_live_in_the_journal_and_large_ones_in_files(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    small, large = b"s" * 100, b"L" * (INLINE_MAX + 1)
    (ws / "small").write_bytes(small)
    (ws / "large").write_bytes(large)
    rt = Runtime(tmp_path / "state", audit=None)
    with rt.episode(ws, on_exit="commit") as ep:
        ep.fs.write_bytes("small", b"new")
        ep.fs.write_bytes("large", b"new")
    small_sha, large_sha = (hashlib.sha256(d).hexdigest() for d in (small, large))
    assert rt.journal.blob_digests() == [small_sha]
    assert not rt.store.path_of(small_sha).exists() and rt.store.path_of(large_sha).exists()
    assert rt.store.has(small_sha) and rt.store.read_bytes(small_sha) == small
    assert rt.verify().ok
    assert rt.undo(ep.id) == 2
    assert (ws / "small").read_bytes() == small and (ws / "large").read_bytes() == large
    # once nothing can be undone any more, gc frees both kinds
    assert rt.gc() == (2, len(small) + len(large))
    assert rt.journal.blob_digests() == [] and not rt.store.has(small_sha)
    rt.close()


def test_verify_reports_a_damaged_pre_image_kept_in_the_journal(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a").write_bytes(b"before")
    rt = Runtime(tmp_path / "state", audit=None)
    with rt.episode(ws, on_exit="commit") as ep:
        ep.fs.write_bytes("a", b"after")
    assert rt.verify().ok
    _db(rt).execute("UPDATE blobs SET data=?", (b"bitrot",))
    report = rt.verify()
    assert not report.ok and "pre-image" in report.reason and "damaged" in report.reason
    rt.close()


def test_a_format_1_journal_is_upgraded_and_still_verifies(tmp_path: Path) -> None:
    rt = _runtime_with_records(tmp_path)
    rt.close()
    db = sqlite3.connect(tmp_path / "state" / "journal.db", isolation_level=None)
    db.execute("DROP TABLE blobs")
    db.execute("UPDATE meta SET value='1' WHERE key='format'")
    db.close()
    rt = Runtime(tmp_path / "state", audit=None)
    assert rt.verify().ok
    assert _db(rt).execute("SELECT value FROM meta WHERE key='format'").fetchone()[0] == "2"
    assert rt.journal.blob_digests() == []
    rt.close()
