"""PostgreSQL's set-based undo (``sqlcapture.pg_undo``): one compare-and-set UPDATE/DELETE, one
INSERT and one verification query per table over images parsed once. It must be what undo
runs for a plain bulk change, restore every shape of change exactly, catch drift that happens
after the check before the undo (the compare-and-set itself), and leave tables it cannot handle
to the general path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sql_cases import committed_episode, drift_then, run_sql, spy_restore
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from revex.errors import ConflictError
from revex.runtime.effects.sql_dump import canonical_dump
from revex.runtime.effects.sqlcapture.postgres import PostgresBackend
from revex.runtime.journal import Status
from revex.runtime.runtime import Runtime


@pytest.fixture
def general_path(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tables the general path restored (PostgresBackend.restore), recorded."""
    return spy_restore(monkeypatch, PostgresBackend)


def test_a_bulk_update_and_delete_are_undone_set_based_and_exactly(
        pg_url: str, state_dir: Path, workspace: Path, general_path: list[str]) -> None:
    run_sql(pg_url, "CREATE TABLE a (id INT PRIMARY KEY, v DOUBLE PRECISION, s TEXT, b BYTEA)",
         "INSERT INTO a SELECT i, i / 3.0, CASE WHEN i % 5 = 0 THEN NULL ELSE 'r' || i END, "
         "CASE WHEN i % 7 = 0 THEN NULL ELSE '\\x000aff'::bytea END "
         "FROM generate_series(1, 3000) i")
    before = canonical_dump(pg_url)
    with Runtime(state_dir, policy="permissive", audit=None) as rt:
        episode = committed_episode(rt, pg_url, workspace, "UPDATE a SET v = -v, s = s || '!'",
                             "DELETE FROM a WHERE id > 2000")
        assert rt.undo(episode) == 2
    assert canonical_dump(pg_url) == before
    assert general_path == []  # both went the set-based way


def test_one_statement_that_updates_deletes_and_inserts_rolls_back_exactly(
        pg_url: str, state_dir: Path, workspace: Path, general_path: list[str]) -> None:
    # table and column names that the undo's own aliases and CTEs use
    run_sql(pg_url, 'CREATE TABLE z (id INT PRIMARY KEY, "value" TEXT, x INT)',
         "INSERT INTO z SELECT i, 'v' || i, i FROM generate_series(1, 100) i")
    before = canonical_dump(pg_url)
    with Runtime(state_dir, policy="permissive", audit=None) as rt:
        episode = committed_episode(
            rt, pg_url, workspace,
            "WITH d AS (DELETE FROM z WHERE id <= 10 RETURNING id) "
            "INSERT INTO z SELECT id + 1000, 'new', 0 FROM d UNION ALL "
            "SELECT i, 'upserted', -1 FROM generate_series(50, 60) i "
            'ON CONFLICT (id) DO UPDATE SET "value" = excluded."value", x = z.x * 2')
        assert rt.undo(episode) == 1
    assert canonical_dump(pg_url) == before
    assert general_path == []


@pytest.mark.parametrize("column", [
    "n INT GENERATED ALWAYS AS IDENTITY",  # UPDATE cannot set it: deleted and inserted
    "g INT GENERATED ALWAYS AS (v * 2) STORED",  # computed: the general path
])
def test_identity_and_generated_columns_roll_back_exactly(
        pg_url: str, state_dir: Path, workspace: Path, column: str) -> None:
    run_sql(pg_url, f"CREATE TABLE gen (id INT PRIMARY KEY, v INT, {column})",
         "INSERT INTO gen (id, v) SELECT i, i FROM generate_series(1, 50) i")
    before = canonical_dump(pg_url)
    with Runtime(state_dir, policy="permissive", audit=None) as rt:
        episode = committed_episode(rt, pg_url, workspace, "UPDATE gen SET v = v + 1",
                             "DELETE FROM gen WHERE id > 40")
        assert rt.undo(episode) == 2
    assert canonical_dump(pg_url) == before


def test_drift_after_the_check_is_caught_by_the_compare_and_set(
        pg_url: str, state_dir: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Someone changes a row after the drift check before the undo and before its own
    transaction reads it: the UPDATE's condition sees it, nothing is undone."""
    run_sql(pg_url, "CREATE TABLE t (id INT PRIMARY KEY, v INT)",
         "INSERT INTO t SELECT i, 0 FROM generate_series(1, 500) i")
    with Runtime(state_dir, policy="permissive", audit=None) as rt:
        episode = committed_episode(rt, pg_url, workspace, "UPDATE t SET v = 1")
        drift_then(monkeypatch, lambda: run_sql(pg_url, "UPDATE t SET v = 7 WHERE id = 250"))
        with pytest.raises(ConflictError, match=r"key \(id=250\): changed since"):
            rt.undo(episode)
        assert not [r for r in rt.journal.records(episode) if r.status is Status.UNDONE]
    engine = create_engine(pg_url, poolclass=NullPool)
    with engine.connect() as conn:
        values = dict(conn.execute(text("SELECT v, count(*) FROM t GROUP BY v")).all())
    engine.dispose()
    assert values == {1: 499, 7: 1}  # nothing was undone


def test_the_check_before_a_rollback_and_the_undo_parse_the_images_once(
        pg_url: str, state_dir: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The drift check stages each side's images in the session the undo then runs on; and
    that session is closed with the episode."""
    import psycopg

    run_sql(pg_url, "CREATE TABLE t (id INT PRIMARY KEY, v INT)",
         "INSERT INTO t SELECT i, 0 FROM generate_series(1, 500) i")
    before = canonical_dump(pg_url)
    staged: list[str] = []
    execute = psycopg.Cursor.execute

    def spy(self: Any, query: Any, params: Any = None, **kw: Any) -> Any:
        if str(query).startswith("CREATE TEMP TABLE"):
            staged.append(str(query).split()[3])
        return execute(self, query, params, **kw)
    monkeypatch.setattr(psycopg.Cursor, "execute", spy)
    with Runtime(state_dir, policy="permissive", audit=None) as rt:
        with rt.episode(workspace=workspace, databases={"app": pg_url},
                        on_exit="commit") as ep:
            ep.sql("app").execute("UPDATE t SET v = 1")
            ep.rollback()
        assert len(staged) == 2 and staged[0].startswith("_revex_post_")  # one per side
        engine = create_engine(pg_url, poolclass=NullPool)
        with engine.connect() as conn:
            others = conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = "
                                       "current_database() AND pid <> pg_backend_pid()"))
            assert others.scalar() == 0  # the kept session went with the episode
        engine.dispose()
    assert canonical_dump(pg_url) == before
