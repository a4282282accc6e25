"""SQLite's set-based undo (``SQLiteBackend.undo_checked``): one compare-and-set DELETE, one
INSERT and one verification query per table, inside the undo's ``BEGIN IMMEDIATE``. It must be
what undo runs for a plain bulk change, restore every value type exactly, catch drift that
happens after the check before the undo (the compare-and-set itself, and a row re-created
under a pre-image's key), keep the table's own triggers, and leave tables it cannot handle to
the general path."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sql_cases import committed_episode, drift_then, spy_restore

from revex.errors import ConflictError
from revex.runtime.effects.sql_dump import canonical_dump
from revex.runtime.effects.sqlcapture.sqlite import SQLiteBackend
from revex.runtime.journal import Status
from revex.runtime.runtime import Runtime


def _run(url: str, *stmts: str) -> None:
    db = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
    for stmt in stmts:
        db.execute(stmt)
    db.close()


def _rows(url: str, query: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(url.removeprefix("sqlite:///"))
    try:
        return db.execute(query).fetchall()
    finally:
        db.close()


@pytest.fixture
def general_path(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tables the general path restored (SQLiteBackend.restore), recorded."""
    return spy_restore(monkeypatch, SQLiteBackend)


def test_a_bulk_update_and_delete_are_undone_set_based_and_exactly(
        sqlite_url: str, state_dir: Path, workspace: Path, general_path: list[str]) -> None:
    _run(sqlite_url, "CREATE TABLE a (id INT PRIMARY KEY, v REAL, s TEXT, b BLOB, n)",
         "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < 3000) "
         "INSERT INTO a SELECT i, i / 3.0, CASE WHEN i % 5 = 0 THEN NULL ELSE 'r' || i END, "
         "CASE WHEN i % 7 = 0 THEN NULL ELSE x'000aff' END, "
         "CASE i % 3 WHEN 0 THEN 1e308 WHEN 1 THEN 'text' ELSE -0.0 END FROM g")
    before = canonical_dump(sqlite_url)
    with Runtime(state_dir, policy="permissive", audit=None) as rt:
        episode = committed_episode(rt, sqlite_url, workspace, "UPDATE a SET v = -v, s = s || '!'",
                             "DELETE FROM a WHERE id > 2000",
                             "INSERT INTO a (id, v) VALUES (5000, 0.1)")
        assert rt.undo(episode) == 3
    assert canonical_dump(sqlite_url) == before
    assert general_path == []  # all three went the set-based way


def test_the_tables_own_triggers_are_kept_and_do_not_fire(
        sqlite_url: str, state_dir: Path, workspace: Path, general_path: list[str]) -> None:
    _run(sqlite_url, "CREATE TABLE t (id INTEGER PRIMARY KEY, v INT)",
         "CREATE TABLE audit (n INTEGER PRIMARY KEY, what TEXT)",
         "CREATE TRIGGER t_ins AFTER INSERT ON t BEGIN "
         "INSERT INTO audit (what) VALUES ('ins'); END",
         "CREATE TRIGGER t_del AFTER DELETE ON t BEGIN "
         "INSERT INTO audit (what) VALUES ('del'); END",
         "INSERT INTO t (v) VALUES (1), (2), (3)", "DELETE FROM audit")
    before = canonical_dump(sqlite_url)
    with Runtime(state_dir, policy="permissive", audit=None) as rt:
        episode = committed_episode(rt, sqlite_url, workspace, "DELETE FROM t WHERE id > 1")
        assert rt.undo(episode) == 1  # undoes the episode's audit rows too
    assert canonical_dump(sqlite_url) == before  # triggers there, audit empty again
    assert general_path == []


def test_drift_after_the_check_is_caught_by_the_compare_and_set(
        sqlite_url: str, state_dir: Path, workspace: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Someone changes a row after the drift check, before the undo's transaction: the
    DELETE's compare-and-set deletes one row too few, nothing is undone, and the general path
    names the row."""
    _run(sqlite_url, "CREATE TABLE t (id INT PRIMARY KEY, v INT)",
         "WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < 500) "
         "INSERT INTO t SELECT i, 0 FROM g")
    with Runtime(state_dir, policy="permissive", audit=None) as rt:
        episode = committed_episode(rt, sqlite_url, workspace, "UPDATE t SET v = 1")
        drift_then(monkeypatch, lambda: _run(sqlite_url, "UPDATE t SET v = 7 WHERE id = 250"))
        with pytest.raises(ConflictError, match=r"key \(id=250\): changed since"):
            rt.undo(episode)
        assert not [r for r in rt.journal.records(episode) if r.status is Status.UNDONE]
    assert dict(_rows(sqlite_url, "SELECT v, count(*) FROM t GROUP BY v")) == {1: 499, 7: 1}


def test_a_row_recreated_under_a_deleted_key_after_the_check_is_a_conflict(
        sqlite_url: str, state_dir: Path, workspace: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    _run(sqlite_url, "CREATE TABLE t (id INT PRIMARY KEY, v TEXT)",
         "INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c')")
    with Runtime(state_dir, policy="permissive", audit=None) as rt:
        episode = committed_episode(rt, sqlite_url, workspace, "DELETE FROM t WHERE id >= 2")
        drift_then(monkeypatch, lambda: _run(sqlite_url,
                                             "INSERT INTO t VALUES (3, 'someone else')"))
        with pytest.raises(ConflictError, match=r"key \(id=3\): re-created by someone else"):
            rt.undo(episode)
    assert _rows(sqlite_url, "SELECT * FROM t ORDER BY id") == [(1, "a"), (3, "someone else")]


def test_a_table_without_a_primary_key_takes_the_general_path_exactly(
        sqlite_url: str, state_dir: Path, workspace: Path, general_path: list[str]) -> None:
    _run(sqlite_url, "CREATE TABLE bag (v INT, s TEXT)",
         "INSERT INTO bag VALUES (1, 'x'), (1, 'x'), (2, 'y')")
    before = canonical_dump(sqlite_url)
    with Runtime(state_dir, policy="permissive", audit=None) as rt:
        episode = committed_episode(rt, sqlite_url, workspace, "UPDATE bag SET v = v + 1")
        assert rt.undo(episode) == 1
    assert canonical_dump(sqlite_url) == before
    assert general_path == ["bag"]


def test_the_sign_of_a_zero_is_captured_and_put_back(
        sqlite_url: str, state_dir: Path, workspace: Path) -> None:
    """SQLite prints -0.0 as 0.0: an image built from that text alone saw no change when a
    statement turned -0.0 into 0.0 (they compare equal in SQL), and an undo put 0.0 back
    where -0.0 had been. (A REAL column stores -0.0 as the integer 0; a column without
    affinity keeps it.)"""
    _run(sqlite_url, "CREATE TABLE z (id INT PRIMARY KEY, r)",
         "INSERT INTO z VALUES (1, -0.0), (2, 0.0), (3, -1.5)")
    before = canonical_dump(sqlite_url)
    with Runtime(state_dir, policy="permissive", audit=None) as rt:
        with rt.episode(workspace=workspace, databases={"app": sqlite_url},
                        on_exit="commit") as ep:
            ep.sql("app").execute("UPDATE z SET r = 0.0 WHERE r = 0")  # -0.0 = 0 in SQL
            ep.sql("app").execute("UPDATE z SET r = 1.5 WHERE id = 3")
        assert canonical_dump(sqlite_url) != before
        signs = [str(r) for (r,) in _rows(sqlite_url, "SELECT r FROM z ORDER BY id")]
        assert signs == ["0.0", "0.0", "1.5"]
        assert rt.undo(ep.id) == 2
    assert [str(r) for (r,) in _rows(sqlite_url, "SELECT r FROM z ORDER BY id")] == \
        ["-0.0", "0.0", "-1.5"]
    assert canonical_dump(sqlite_url) == before


@pytest.mark.parametrize("schema", [
    "CREATE TABLE s (a INT, b TEXT, v REAL, PRIMARY KEY (a, b))",
    "CREATE TABLE s (a INT, b TEXT, v REAL, PRIMARY KEY (b, a)) WITHOUT ROWID",
    "CREATE TABLE s (a INT, b TEXT COLLATE NOCASE PRIMARY KEY, v REAL)",
    "CREATE TABLE s (a INTEGER PRIMARY KEY, b TEXT, v REAL, g REAL AS (v * 2) STORED)",
    "CREATE TABLE s (a REAL PRIMARY KEY, b BLOB, v)",
])
def test_every_shape_of_key_is_undone_set_based_and_exactly(
        sqlite_url: str, state_dir: Path, workspace: Path, general_path: list[str],
        schema: str) -> None:
    _run(sqlite_url, schema,
         "INSERT INTO s (a, b, v) VALUES (1, 'One', 0.5), (2, 'two', -0.0), (3, 'x', NULL)")
    before = canonical_dump(sqlite_url)
    with Runtime(state_dir, policy="permissive", audit=None) as rt:
        episode = committed_episode(rt, sqlite_url, workspace,
                                    "UPDATE s SET v = 7 WHERE a >= 2",
                                    "DELETE FROM s WHERE a = 1",
                                    "INSERT INTO s (a, b, v) VALUES (9, 'nine', 9)")
        assert rt.undo(episode) == 3
    assert canonical_dump(sqlite_url) == before
    assert general_path == []
