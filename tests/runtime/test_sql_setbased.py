"""Set-based capture and undo (issue 15): statements of many rows, awkward keys and values, the
batched log reads (PostgreSQL's and MariaDB's newline-joined images, MariaDB's fallback when a
batch is cut), SQLite's engine-side drift check with its exact re-check, and PostgreSQL tables
in an inheritance tree (row triggers)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sql_cases import BLOB, DOUBLE, backend_of
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from revex.errors import ConflictError
from revex.runtime.effects.sql_dump import canonical_dump
from revex.runtime.effects.sqlcapture.base import Event, net_effect
from revex.runtime.runtime import Runtime

ROWS = 2_500  # more than one batch of 1,000 images


def _run(url: str, *stmts: str, params: list[dict[str, Any]] | None = None) -> None:
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as conn:
        for stmt in stmts:
            conn.execute(text(stmt), params or {})
    engine.dispose()


@pytest.fixture
def awkward(db_url: str, workspace: Path) -> Any:
    """``k``: a composite key (int, text) and floats, unicode, newlines, quotes, backslashes,
    blobs (with newline bytes) and NULLs; returns the dump before any episode."""
    url = db_url
    b = backend_of(url)
    _run(url, f"CREATE TABLE k (a INT NOT NULL, b VARCHAR(20) NOT NULL, f {DOUBLE[b]}, "
              f"t VARCHAR(60), bl {BLOB[b]}, n INT, PRIMARY KEY (a, b))")
    floats = [0.1, 1e300, -2.5e-300, 1 / 3, 123456789.123456789, None]
    texts = ["ünï©ødé ✓", "line\nbreak\r\n\ttab", "it's \"quoted\" \\ back", "", None,
             "\u2028\U0001f600"]
    rows = [{"a": i, "b": f"k{i % 7}\n'\"", "f": floats[i % 6], "t": texts[i % 6],
             "bl": None if i % 5 == 0 else bytes([i % 256, 10, 0, 255]),
             "n": None if i % 4 == 0 else i} for i in range(ROWS)]
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO k VALUES (:a, :b, :f, :t, :bl, :n)"), rows)
    engine.dispose()
    return canonical_dump(url)


def _committed(rt: Runtime, url: str, workspace: Path, *stmts: str) -> tuple[str, list[int]]:
    """Run ``stmts`` in a committed episode; its id and each statement's row count."""
    with rt.episode(workspace=workspace, databases={"app": url}, on_exit="commit") as ep:
        counts = [ep.sql("app").execute(stmt) for stmt in stmts]
    return ep.id, counts


def _refused(rt: Runtime, url: str, episode: str) -> str:
    """Undo of ``episode`` is a conflict that changes nothing; its message."""
    drifted = canonical_dump(url)
    with pytest.raises(ConflictError) as info:
        rt.undo(episode)
    assert canonical_dump(url) == drifted  # nothing was undone
    return str(info.value)


def test_bulk_update_delete_insert_of_awkward_rows_roll_back_exactly(
        db_url: str, awkward: Any, state_dir: Path, workspace: Path) -> None:
    with Runtime(state_dir, policy="permissive", audit=None) as rt:
        episode, counts = _committed(
            rt, db_url, workspace, "UPDATE k SET f = f * 2, n = a, t = b",
            "DELETE FROM k WHERE a < 1200",
            "INSERT INTO k VALUES (-1, 'new\nrow', 0.5, 'x', NULL, NULL)")
        assert counts == [ROWS, 1200, 1]
        assert canonical_dump(db_url) != awkward
        assert rt.undo(episode) == 3
    assert canonical_dump(db_url) == awkward


def test_drift_in_a_bulk_change_is_found_by_key_and_nothing_is_undone(
        db_url: str, awkward: Any, state_dir: Path, workspace: Path) -> None:
    with Runtime(state_dir, policy="permissive", audit=None) as rt:
        episode, _ = _committed(rt, db_url, workspace, "UPDATE k SET n = -a",
                                "DELETE FROM k WHERE a >= 2000")
        # someone else changes a row the episode updated and re-creates one it deleted
        _run(db_url, "UPDATE k SET t = 'human' WHERE a = 1500",
             "INSERT INTO k (a, b) VALUES (2001, :b)", params=[{"b": "k6\n'\""}])
        message = _refused(rt, db_url, episode)
        assert "a=1500" in message and "a=2001" in message
        _run(db_url, "DELETE FROM k WHERE a = 2001")
        assert rt.undo(episode, force=True) == 2  # force: the human's change is overwritten
    assert canonical_dump(db_url) == awkward


@pytest.mark.parametrize("key", ["REAL", "BLOB", "TEXT"])
def test_sqlite_keys_json_cannot_match_still_undo_and_still_catch_drift(
        sqlite_url: str, state_dir: Path, workspace: Path, key: str) -> None:
    """The engine-side check reads keys back from JSON; a key it cannot match (a blob, a
    real) only makes the image a suspect for the exact check: no false conflict, no miss."""
    values = {"REAL": [0.1, 1e300, 2.0, -0.0], "BLOB": [b"\x00", b"\n\xff", b"", b"ab"],
              "TEXT": ["1", "a'b", '"', "ü"]}[key]
    _run(sqlite_url, f'CREATE TABLE "o""dd k" (k {key} PRIMARY KEY, "v\'" INT)')
    engine = create_engine(sqlite_url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text('INSERT INTO "o""dd k" VALUES (:k, 0)'), [{"k": v} for v in values])
    engine.dispose()
    before = canonical_dump(sqlite_url)
    with Runtime(state_dir, policy="permissive", audit=None) as rt:
        episode, _ = _committed(rt, sqlite_url, workspace, 'UPDATE "o""dd k" SET "v\'" = 1',
                                'DELETE FROM "o""dd k" WHERE "v\'" = 1 AND rowid = 1')
        _run(sqlite_url, 'UPDATE "o""dd k" SET "v\'" = 5 WHERE k = :k',
             params=[{"k": values[1]}])
        assert "changed since" in _refused(rt, sqlite_url, episode)
        _run(sqlite_url, 'UPDATE "o""dd k" SET "v\'" = 1 WHERE k = :k',
             params=[{"k": values[1]}])
        assert rt.undo(episode) == 2
    assert canonical_dump(sqlite_url) == before


def test_postgres_inheritance_tree_keeps_row_triggers_and_is_captured_once(
        pg_url: str, state_dir: Path, workspace: Path) -> None:
    _run(pg_url, "CREATE TABLE p (id INT PRIMARY KEY, v INT)",
         "CREATE TABLE c (extra TEXT) INHERITS (p)", "CREATE TABLE plain (id INT PRIMARY KEY)",
         "INSERT INTO p VALUES (1, 0), (2, 0)", "INSERT INTO c VALUES (3, 0, 'x')",
         "INSERT INTO plain VALUES (1)")
    before = canonical_dump(pg_url)
    with Runtime(state_dir, policy="permissive", audit=None) as rt:
        with rt.episode(workspace=workspace, databases={"app": pg_url},
                        on_exit="commit") as ep:
            db = ep.sql("app")
            assert db.execute("UPDATE p SET v = v + 1") == 3  # parent and child rows
            db.execute("DELETE FROM plain")
            triggers = {(t, n) for t, n in db.query(
                "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = "
                "t.tgrelid WHERE t.tgname LIKE '\\_revex%'")}
        assert {("p", "_revex_row"), ("c", "_revex_row"), ("plain", "_revex_upd")} <= triggers
        assert ("p", "_revex_upd") not in triggers
        assert rt.undo(ep.id) == 2
    assert canonical_dump(pg_url) == before


def test_mariadb_log_batch_too_long_for_one_row_is_read_row_by_row(
        mysql_url: str, state_dir: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of 1,000 images of 10 KB does not fit one GROUP_CONCAT of 8 MiB (2,000 are
    left of 2,200 after the first 200 are taken, so one batch is full): the cut batch is
    noticed by its length and the log is read row by row."""
    from revex.runtime.effects.sqlcapture.mysql import MySQLBackend

    batched = MySQLBackend._read_batched
    reads: list[bool] = []

    def spy(self: MySQLBackend, cur: Any, tag: str) -> Any:
        events = batched(self, cur, tag)
        reads.append(events is not None)
        return events

    monkeypatch.setattr(MySQLBackend, "_read_batched", spy)
    _run(mysql_url, "CREATE TABLE big (id INT PRIMARY KEY, t MEDIUMTEXT)")
    engine = create_engine(mysql_url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO big VALUES (:i, :t)"),
                     [{"i": i, "t": f"{i}\n" + "x" * 10_000} for i in range(2_200)])
    engine.dispose()
    before = canonical_dump(mysql_url)
    with Runtime(state_dir, policy="permissive", audit=None) as rt:
        with rt.episode(workspace=workspace, databases={"app": mysql_url},
                        on_exit="commit") as ep:
            assert ep.sql("app").execute("UPDATE big SET t = CONCAT(t, 'z') WHERE id = 1") == 1
            assert ep.sql("app").execute("UPDATE big SET t = CONCAT(t, 'y')") == 2_200
        # the 1-row log is taken whole by DELETE ... RETURNING, the cut batch row by row
        assert reads == [False]
        assert rt.undo(ep.id) == 2
    assert canonical_dump(mysql_url) == before


@pytest.mark.parametrize("rows", [199, 200, 201, 1_250])
def test_mariadb_small_log_in_one_round_trip_and_a_full_one_merged_with_its_batches(
        mysql_url: str, state_dir: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch,
        rows: int) -> None:
    """A log of fewer than 200 rows is read and deleted by one ``DELETE ... RETURNING``; a
    longer one also goes through the batched read, and both parts make up the action's
    change: the undo is exact and revex's log is empty after every statement."""
    from revex.runtime.effects.sqlcapture import mysql

    batched = mysql.MySQLBackend._read_batched
    reads: list[int] = []

    def spy(self: Any, cur: Any, tag: str) -> Any:
        reads.append(1)
        return batched(self, cur, tag)

    monkeypatch.setattr(mysql.MySQLBackend, "_read_batched", spy)
    _run(mysql_url, "CREATE TABLE r (id INT PRIMARY KEY, v INT, t VARCHAR(20))")
    engine = create_engine(mysql_url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO r VALUES (:i, 0, :t)"),
                     [{"i": i, "t": f"row\n{i}"} for i in range(rows)])
    before = canonical_dump(mysql_url)
    with Runtime(state_dir, policy="permissive", audit=None) as rt:
        episode, counts = _committed(rt, mysql_url, workspace, "UPDATE r SET v = id + 1",
                                     "DELETE FROM r WHERE id % 3 = 0")
        assert counts == [rows, len(range(0, rows, 3))]
        # 2 images per updated row: the UPDATE's log always has `rows` log rows
        assert len(reads) == (rows >= mysql._FIRST) + (len(range(0, rows, 3)) >= mysql._FIRST)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT COUNT(*) FROM _revex_log")).scalar() == 0
        assert rt.undo(episode) == 2
    engine.dispose()
    assert canonical_dump(mysql_url) == before


_IMAGES = st.sampled_from(["a", "b", "c", "d"])


@given(st.lists(st.tuples(st.none() | _IMAGES, st.none() | _IMAGES), max_size=12))
@settings(max_examples=300, deadline=None)
def test_net_effect_is_the_event_by_event_cancellation(steps: list[tuple[Any, Any]]) -> None:
    """The set-based net effect equals applying the events one by one, as capture did before:
    an old image cancels a pending new one else is removed, a new one cancels a pending
    removal else is added."""
    removed: Counter[str] = Counter()
    added: Counter[str] = Counter()
    for old, new in steps:
        if old is not None:
            if added[old]:
                added[old] -= 1
            else:
                removed[old] += 1
        if new is not None:
            if removed[new]:
                removed[new] -= 1
            else:
                added[new] += 1
    got = net_effect(Event("t", "U", old, new) for old, new in steps).get(
        "t", {"removed": [], "added": []})
    assert Counter(got["removed"]) == +removed and Counter(got["added"]) == +added
