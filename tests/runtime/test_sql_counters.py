"""Counters come back with the rows (issue 11.3): after rollback or undo, MariaDB's
AUTO_INCREMENT, PostgreSQL's sequences and SQLite's ``sqlite_sequence`` hold what they held
before the episode, and the next insert gets the id it would have got before it. Checked by
reading the counters and by inserting, not only by comparing rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sql_cases import backend_of, create_schema
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from revex.errors import ActionFailed, PolicyViolation
from revex.runtime.effects.sql_dump import canonical_dump
from revex.runtime.runtime import Runtime


def _raw(url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = create_engine(url, poolclass=NullPool)
    try:
        conn = engine.raw_connection()
        try:
            cur = conn.cursor()
            cur.execute(sql)
            rows = [tuple(r) for r in cur.fetchall()] if cur.description else []
            conn.commit()
            return rows
        finally:
            conn.close()
    finally:
        engine.dispose()


def counters(url: str) -> dict[str, Any]:
    """Every counter of the database, as the engine reports it."""
    b = backend_of(url)
    if b == "sqlite":
        return dict(_raw(url, "SELECT name, seq FROM sqlite_sequence"))
    if b == "postgresql":
        names = [r[0] for r in _raw(url, "SELECT relname FROM pg_class WHERE relkind = 'S' "
                                         "AND relnamespace = current_schema()::regnamespace "
                                         "AND relname NOT LIKE '\\_revex%'")]
        return {n: _raw(url, f'SELECT last_value, is_called FROM "{n}"')[0] for n in names}
    return dict(_raw(url, "SELECT table_name, auto_increment FROM information_schema.tables "
                          "WHERE table_schema = DATABASE() AND auto_increment IS NOT NULL "
                          "AND table_name NOT LIKE '\\_revex%'"))


def expected_next_audit_id(url: str, before: dict[str, Any]) -> int:
    b = backend_of(url)
    if b == "sqlite":
        return int(before.get("audit", 0)) + 1
    if b == "postgresql":
        last, called = before["audit_id_seq"]
        return int(last) + 1 if called else int(last)
    return int(before["audit"])


def insert_probe(url: str) -> int:
    """Insert one audit row outside revex; its id."""
    if backend_of(url) == "postgresql":
        return int(_raw(url, "INSERT INTO audit (msg) VALUES ('probe') RETURNING id")[0][0])
    engine = create_engine(url, poolclass=NullPool)
    try:
        conn = engine.raw_connection()
        try:
            cur = conn.cursor()
            cur.execute("INSERT INTO audit (msg) VALUES ('probe')")
            conn.commit()
            return int(cur.lastrowid)
        finally:
            conn.close()
    finally:
        engine.dispose()


def _bump_counters(db: Any, b: str) -> None:
    db.execute("INSERT INTO audit (msg) VALUES ('a'), ('b')")
    db.execute("INSERT INTO parent VALUES (60, 'sixty', NULL, 6)")  # a user trigger inserts
    auto = "DEFAULT" if b == "postgresql" else "NULL"
    with pytest.raises(ActionFailed):  # consumes ids (PG, MariaDB) and fails: a dup key
        db.execute(f"INSERT INTO audit (id, msg) VALUES ({auto}, 'x'), (1, 'dup')")
    db.execute("DELETE FROM audit WHERE msg = 'b'")
    db.execute("INSERT INTO audit (msg) VALUES ('c')")
    if b == "postgresql":
        db.query("SELECT nextval('counter')")


@pytest.mark.parametrize("mode", ["durable", "transactional"])
def test_rollback_and_undo_rewind_every_counter(db_url: str, mode: str, state_dir: Path,
                                                workspace: Path) -> None:
    create_schema(db_url)
    b = backend_of(db_url)
    before, dump = counters(db_url), canonical_dump(db_url)
    expected = expected_next_audit_id(db_url, before)
    with Runtime(state_dir, policy="permissive", audit=None) as rt:
        on_exit = "commit" if mode == "durable" else "rollback"
        with rt.episode(workspace=workspace, databases={"app": db_url}, sql_mode=mode,
                        on_exit=on_exit) as ep:
            _bump_counters(ep.sql("app"), b)
        if mode == "durable":
            assert counters(db_url) != before, "the episode moved no counter"
            with Runtime(state_dir, policy="permissive", audit=None) as rt2:
                assert rt2.undo(ep.id) > 0
    assert canonical_dump(db_url) == dump
    assert counters(db_url) == before
    assert insert_probe(db_url) == expected


@pytest.mark.parametrize("mode", ["durable", "transactional"])
def test_committed_transactional_and_durable_undo_rewind_counters(
        db_url: str, mode: str, state_dir: Path, workspace: Path) -> None:
    create_schema(db_url)
    b = backend_of(db_url)
    before = counters(db_url)
    expected = expected_next_audit_id(db_url, before)
    with Runtime(state_dir, policy="permissive", audit=None) as rt:
        with rt.episode(workspace=workspace, databases={"app": db_url}, sql_mode=mode,
                        on_exit="commit") as ep:
            _bump_counters(ep.sql("app"), b)
        assert counters(db_url) != before
        assert rt.undo(ep.id) > 0
    assert counters(db_url) == before
    assert insert_probe(db_url) == expected


def test_rollback_to_a_checkpoint_after_a_read_rewinds_and_does_not_block(
        db_url: str, state_dir: Path, workspace: Path) -> None:
    """Durable mode: the episode's connection still has the read's transaction open when
    rollback runs; MariaDB's ALTER TABLE ... AUTO_INCREMENT must not wait on it."""
    create_schema(db_url)
    with Runtime(state_dir, policy="permissive", audit=None) as rt, rt.episode(
            workspace=workspace, databases={"app": db_url}, on_exit="commit") as ep:
        db = ep.sql("app")
        db.execute("INSERT INTO audit (msg) VALUES ('kept')")
        cp = ep.checkpoint()
        at_checkpoint = counters(db_url)
        db.execute("INSERT INTO audit (msg) VALUES ('gone 1'), ('gone 2')")
        assert db.query("SELECT count(*) FROM audit WHERE msg LIKE 'gone%'")[0][0] == 2
        assert ep.rollback(to=cp) == 1
        assert counters(db_url) == at_checkpoint
        db.execute("INSERT INTO audit (msg) VALUES ('next')")
        ids = [r[0] for r in db.query("SELECT id FROM audit WHERE msg IN ('kept', 'next') "
                                      "ORDER BY id")]
        assert ids == [ids[0], ids[0] + 1]  # no gap where the undone rows were


def test_a_statement_refused_by_quota_gives_its_ids_back(db_url: str, state_dir: Path,
                                                        workspace: Path, tmp_path: Path) -> None:
    create_schema(db_url)
    before = counters(db_url)
    expected = expected_next_audit_id(db_url, before)
    policy = tmp_path / "p.toml"
    policy.write_text('[policy]\nname = "q"\ndefault = "allow"\n[quotas]\nrows_changed = 3\n')
    with Runtime(state_dir, policy=policy, audit=None) as rt, rt.episode(
            workspace=workspace, databases={"app": db_url}, on_exit="commit") as ep:
        with pytest.raises(PolicyViolation, match="rows_changed"):
            ep.sql("app").execute("INSERT INTO audit (msg) VALUES ('1'), ('2'), ('3'), ('4')")
        assert counters(db_url) == before
    assert insert_probe(db_url) == expected


def test_postgres_dml_capture_is_two_round_trips_and_keeps_uncalled_sequences_exact(
        pg_url: str, state_dir: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A DML statement on PostgreSQL is captured in one round trip before it and one after
    it (sequences and tag; log, tag, marker and sequences). A sequence never called has no
    last value in ``pg_sequence_last_value``: it is read on its own, and one set with
    ``setval(s, 5, false)`` comes back as exactly that."""
    from revex.runtime.effects.sqlcapture.postgres import PostgresBackend

    _raw(pg_url, "CREATE SEQUENCE fresh START 3")
    _raw(pg_url, "CREATE SEQUENCE parked")
    _raw(pg_url, "SELECT setval('parked', 5, false)")
    _raw(pg_url, "CREATE SEQUENCE used")
    _raw(pg_url, "SELECT nextval('used')")
    _raw(pg_url, "CREATE TABLE t (id BIGINT PRIMARY KEY)")
    before = counters(pg_url)
    assert before == {"fresh": (3, False), "parked": (5, False), "used": (1, True)}
    calls: list[str] = []

    def spied(name: str) -> Any:
        real = getattr(PostgresBackend, name)

        def spy(self: Any, *args: Any) -> Any:
            calls.append(name)
            return real(self, *args)
        return spy
    for name in ("sequences", "set_tag", "read_log", "open_capture", "close_capture"):
        monkeypatch.setattr(PostgresBackend, name, spied(name))
    with Runtime(state_dir, policy="permissive", audit=None) as rt:
        with rt.episode(workspace=workspace, databases={"app": pg_url},
                        on_exit="commit") as ep:
            db = ep.sql("app")
            db.execute("INSERT INTO t VALUES (nextval('fresh')), (nextval('parked')), "
                       "(nextval('used'))")
            assert calls == ["open_capture", "close_capture"]
            db.execute("INSERT INTO t VALUES (nextval('parked'))")
        assert counters(pg_url) == {"fresh": (3, True), "parked": (6, True), "used": (2, True)}
        assert sorted(r[0] for r in _raw(pg_url, "SELECT id FROM t")) == [2, 3, 5, 6]
        assert rt.undo(ep.id) == 2
    assert counters(pg_url) == before
    assert _raw(pg_url, "SELECT id FROM t") == []
    assert _raw(pg_url, "SELECT nextval('parked'), nextval('fresh')") == [(5, 3)]
