"""PostgreSQL, durable mode: a dropped column that was not the last comes back in its place
(issue 11.2), with what hangs on the columns that had to move to get it there: defaults,
NOT NULL, collations, comments, constraints, indexes, owned sequences, foreign keys of other
tables, views on the table and its triggers. (All backends run a DROP of a middle column in
``test_sql_exact`` through ``sql_cases``.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from revex.errors import ActionFailed
from revex.runtime.effects.sql_dump import canonical_dump
from revex.runtime.runtime import Runtime

SCHEMA = [
    "CREATE TABLE wide (id SERIAL PRIMARY KEY, a INT DEFAULT 1 NOT NULL, b TEXT DEFAULT 'bee' "
    "NOT NULL, c INT UNIQUE, d VARCHAR(10) COLLATE \"C\", e SERIAL, f INT CHECK (f > 0), "
    "g INT REFERENCES wide(c))",
    "COMMENT ON COLUMN wide.a IS 'the a'",
    "COMMENT ON COLUMN wide.b IS 'the b'",
    "COMMENT ON TABLE wide IS 'wide table'",
    "CREATE INDEX wide_d ON wide(d)",
    "CREATE INDEX wide_bc ON wide(b, c) WHERE c > 0",
    "CREATE TABLE wide_ref (id INT PRIMARY KEY, wc INT REFERENCES wide(c) ON DELETE CASCADE)",
    "CREATE VIEW wide_ids AS SELECT id FROM wide",
    "CREATE FUNCTION wide_fn() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "NEW.f := coalesce(NEW.f, 99); RETURN NEW; END $$",
    "CREATE TRIGGER wide_default_f BEFORE INSERT ON wide FOR EACH ROW EXECUTE FUNCTION wide_fn()",
    "INSERT INTO wide (a, b, c, d, f, g) VALUES (5, 'x', 10, 'Z', 1, NULL), "
    "(6, 'y', 20, 'a', 2, 10), (7, 'z', NULL, NULL, NULL, 20)",
    "INSERT INTO wide_ref VALUES (1, 10), (2, 20)",
]


def _run(url: str, stmts: list[str]) -> None:
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as conn:
        for stmt in stmts:
            conn.execute(text(stmt))
    engine.dispose()


def _rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(text(sql))]
    engine.dispose()
    return rows


def _facts(url: str) -> dict[str, Any]:
    """What canonical_dump does not show: the view, the table comment, sequence owners."""
    return {
        "select_star": _rows(url, "SELECT * FROM wide ORDER BY id"),
        "view": _rows(url, "SELECT oid::int, pg_get_viewdef(oid) FROM pg_class WHERE relname "
                           "= 'wide_ids'"),
        "table_comment": _rows(url, "SELECT obj_description('wide'::regclass, 'pg_class')"),
        "owned": _rows(url, "SELECT pg_get_serial_sequence('wide', 'id'), "
                            "pg_get_serial_sequence('wide', 'e')"),
        "table_oid": _rows(url, "SELECT 'wide'::regclass::oid::int"),
    }


@pytest.mark.parametrize("drop", ["a", "b", "a, DROP COLUMN d", "f"])
def test_dropped_middle_column_comes_back_in_place(pg_url: str, state_dir: Path,
                                                   workspace: Path, drop: str) -> None:
    _run(pg_url, SCHEMA)
    before, facts = canonical_dump(pg_url), _facts(pg_url)
    with Runtime(state_dir, policy="permissive", audit=None) as rt:
        with rt.episode(workspace=workspace, databases={"app": pg_url},
                        on_exit="commit") as ep:
            db = ep.sql("app")
            db.execute(f"ALTER TABLE wide DROP COLUMN {drop}")
            db.execute("INSERT INTO wide_ref VALUES (3, NULL)")
        assert canonical_dump(pg_url) != before
        assert rt.undo(ep.id) == 2
    assert canonical_dump(pg_url) == before
    assert _facts(pg_url) == facts
    # positional INSERT with the original arity, and the sequences and defaults still work
    _run(pg_url, ["INSERT INTO wide VALUES (DEFAULT, DEFAULT, DEFAULT, 30, 'q', DEFAULT, "
                  "NULL, 30)"])
    assert _rows(pg_url, "SELECT id, a, b, e, f FROM wide WHERE c = 30") == [
        (4, 1, "bee", 4, 99)]
    with pytest.raises(Exception, match="violates foreign key"):
        _run(pg_url, ["INSERT INTO wide_ref VALUES (9, 12345)"])


def test_a_view_on_a_column_that_must_move_fails_clearly_and_changes_nothing(
        pg_url: str, state_dir: Path, workspace: Path) -> None:
    _run(pg_url, [*SCHEMA, "CREATE VIEW wide_cs AS SELECT c FROM wide"])
    before = canonical_dump(pg_url)
    with Runtime(state_dir, policy="permissive", audit=None) as rt:
        with rt.episode(workspace=workspace, databases={"app": pg_url},
                        on_exit="commit") as ep:
            ep.sql("app").execute("ALTER TABLE wide DROP COLUMN b")
        after = canonical_dump(pg_url)
        with pytest.raises(ActionFailed, match=r"view\(s\) wide_cs use column c"):
            rt.undo(ep.id)
        assert canonical_dump(pg_url) == after  # the undo transaction was rolled back
        _run(pg_url, ["DROP VIEW wide_cs"])
        assert rt.undo(ep.id) == 1
    assert canonical_dump(pg_url) == before
