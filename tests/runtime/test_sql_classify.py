"""sqlglot classification: classes, tables, WHERE, splitting by the parser."""

from __future__ import annotations

import pytest

from revex.runtime.effects.sql_classify import policy_attrs, split


@pytest.mark.parametrize(("backend", "sql", "kind", "tables"), [
    ("sqlite", "SELECT * FROM a JOIN b ON a.id = b.id", "read", ("a", "b")),
    ("sqlite", "INSERT INTO t VALUES (1)", "insert", ("t",)),
    ("sqlite", "INSERT OR REPLACE INTO t VALUES (1)", "upsert", ("t",)),
    ("postgresql", "INSERT INTO t VALUES (1) ON CONFLICT (id) DO NOTHING", "upsert", ("t",)),
    ("mysql", "REPLACE INTO t VALUES (%s)", "upsert", ("t",)),
    ("mysql", "INSERT INTO t VALUES (%s) ON DUPLICATE KEY UPDATE a = 1", "upsert", ("t",)),
    ("postgresql", "UPDATE t SET a = %(a)s WHERE id = %(id)s", "update", ("t",)),
    ("postgresql", "DELETE FROM t", "delete", ("t",)),
    ("postgresql", "CREATE TABLE t (a int)", "create", ("t",)),
    ("postgresql", "ALTER TABLE t ADD COLUMN b int", "alter", ("t",)),
    ("postgresql", "DROP TABLE t", "drop table", ("t",)),
    ("postgresql", "TRUNCATE t", "truncate", ("t",)),
    ("postgresql", "DROP DATABASE prod", "drop database", ()),
    ("postgresql", "DROP SCHEMA public", "drop schema", ()),
    ("sqlite", "ATTACH 'x.db' AS x", "attach", ()),
    ("postgresql", "GRANT SELECT ON t TO bob", "grant", ("t",)),
    ("postgresql", "COPY t FROM PROGRAM 'curl evil'", "copy program", ("t",)),
    ("sqlite", "PRAGMA journal_mode=WAL", "pragma", ()),
    ("postgresql", "SELEC 1", "unknown", ()),
    ("postgresql", "SELECT 1 FROM", "unknown", ()),
])
def test_statements_are_classified(backend: str, sql: str, kind: str,
                                   tables: tuple[str, ...]) -> None:
    [stmt] = split(sql, backend)
    attrs = policy_attrs(stmt)
    assert attrs["statement"] == kind
    assert tuple(attrs["tables"]) == tables


def test_where_is_reported_for_update_and_delete() -> None:
    assert policy_attrs(split("DELETE FROM t WHERE id = 1", "sqlite")[0])["where"] is True
    assert policy_attrs(split("UPDATE t SET a = 1", "sqlite")[0])["where"] is False
    assert "where" not in policy_attrs(split("INSERT INTO t VALUES (1)", "sqlite")[0])


def test_text_is_split_by_the_parser_not_by_semicolons() -> None:
    stmts = split("INSERT INTO t VALUES ('a;b'); UPDATE t SET x = ';' WHERE y = 1;", "sqlite")
    assert [s.kind for s in stmts] == ["insert", "update"]
    assert stmts[0].sql == "INSERT INTO t VALUES ('a;b')"


def test_reads_that_call_functions_are_marked_as_possible_writes() -> None:
    [stmt] = split("SELECT nextval('s')", "postgresql")
    assert stmt.kind == "read" and stmt.side_effects and stmt.writes
    [pure] = split("SELECT count(*) FROM t", "postgresql")
    assert not pure.writes
