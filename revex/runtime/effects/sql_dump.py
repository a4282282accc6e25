"""A canonical dump of a database: schema (tables, columns in order with types, defaults,
comments and collations, primary and foreign keys, indexes, triggers), every row, and
PostgreSQL sequence values. Two dumps are equal exactly when the database is the same for every
purpose revex promises to restore. revex's own objects (``_revex*``) are left out. Used by the
tests and benchmarks to prove exact undo.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool


def canonical_dump(url: str) -> dict[str, Any]:
    """The dump of the database at ``url`` (a SQLAlchemy URL)."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            name = engine.dialect.name
            if name == "sqlite":
                return _sqlite(cur)
            if name == "postgresql":
                return _postgres(cur)
            return _mysql(cur)
        finally:
            raw.rollback()
            raw.close()
    finally:
        engine.dispose()


def _dq(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def _bq(ident: str) -> str:
    return "`" + ident.replace("`", "``") + "`"


def _rows(cur: Any, sql: str) -> list[str]:
    cur.execute(sql)
    return sorted(repr(tuple(r)) for r in cur.fetchall())


def _sqlite(cur: Any) -> dict[str, Any]:
    cur.execute("SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE "
                "'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_revex%' ESCAPE '\\' "
                "ORDER BY type, name")
    schema = [tuple(r) for r in cur.fetchall()]
    data = {}
    for typ, name, _, _ in schema:
        if typ == "table":
            data[name] = _rows(cur, f"SELECT * FROM {_dq(name)}")
    cur.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'")
    if cur.fetchone():
        data["sqlite_sequence"] = _rows(cur, "SELECT name, seq FROM sqlite_sequence WHERE "
                                             "name NOT LIKE '\\_revex%' ESCAPE '\\'")
    return {"schema": schema, "rows": data}


def _postgres(cur: Any) -> dict[str, Any]:
    cur.execute("SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), "
                "a.attnotnull, pg_get_expr(d.adbin, d.adrelid), "
                "rank() OVER (PARTITION BY c.oid ORDER BY a.attnum), "
                "col_description(c.oid, a.attnum), a.attcollation::regcollation::text "
                "FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid "
                "LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum "
                "WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r' "
                "AND a.attnum > 0 AND NOT a.attisdropped AND c.relname NOT LIKE '\\_revex%' "
                "ORDER BY 1, 6")
    columns = [tuple(r) for r in cur.fetchall()]
    cur.execute("SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
                "FROM pg_constraint WHERE connamespace = current_schema()::regnamespace "
                "AND conrelid <> 0 AND conrelid::regclass::text NOT LIKE '\\_revex%' "
                "ORDER BY 1, 2")
    constraints = [tuple(r) for r in cur.fetchall()]
    cur.execute("SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = "
                "current_schema() AND tablename NOT LIKE '\\_revex%' ORDER BY 1, 2")
    indexes = [tuple(r) for r in cur.fetchall()]
    cur.execute("SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) FROM "
                "pg_trigger WHERE NOT tgisinternal AND tgname NOT LIKE '\\_revex%' AND "
                "tgrelid::regclass::text NOT LIKE '\\_revex%' ORDER BY 1, 2")
    triggers = [tuple(r) for r in cur.fetchall()]
    cur.execute("SELECT c.relname FROM pg_class c WHERE c.relkind = 'S' AND c.relnamespace = "
                "current_schema()::regnamespace AND c.relname NOT LIKE '\\_revex%' ORDER BY 1")
    sequences = {}
    for (seq,) in cur.fetchall():
        cur.execute(f"SELECT last_value, is_called FROM {_dq(seq)}")
        sequences[seq] = tuple(cur.fetchone())
    data = {}
    for table in sorted({c[0] for c in columns}):
        cur.execute(f"SELECT to_jsonb(_revex_x)::text FROM {_dq(table)} _revex_x")
        data[table] = sorted(r[0] for r in cur.fetchall())
    return {"columns": columns, "constraints": constraints, "indexes": indexes,
            "triggers": triggers, "sequences": sequences, "rows": data}


def _mysql(cur: Any) -> dict[str, Any]:
    cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = "
                "DATABASE() AND table_type = 'BASE TABLE' AND table_name NOT LIKE "
                "'\\_revex%' ORDER BY 1")
    tables = [r[0] for r in cur.fetchall()]
    schema, data = {}, {}
    for table in tables:
        cur.execute(f"SHOW CREATE TABLE {_bq(table)}")
        schema[table] = re.sub(r" AUTO_INCREMENT=\d+", "", cur.fetchone()[1])
        data[table] = _rows(cur, f"SELECT * FROM {_bq(table)}")
    cur.execute("SELECT trigger_name, event_object_table, action_timing, event_manipulation, "
                "action_statement FROM information_schema.triggers WHERE trigger_schema = "
                "DATABASE() AND trigger_name NOT LIKE '\\_revex%' ORDER BY 1")
    triggers = [tuple(r) for r in cur.fetchall()]
    return {"schema": schema, "triggers": triggers, "rows": data}
