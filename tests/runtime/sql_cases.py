"""Schema and change scripts shared by the SQL tests, written per backend where SQL differs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

BLOB = {"sqlite": "BLOB", "postgresql": "BYTEA", "mysql": "BLOB"}
SERIAL = {"sqlite": "INTEGER PRIMARY KEY AUTOINCREMENT", "postgresql": "SERIAL PRIMARY KEY",
          "mysql": "INT AUTO_INCREMENT PRIMARY KEY"}
DOUBLE = {"sqlite": "REAL", "postgresql": "DOUBLE PRECISION", "mysql": "DOUBLE"}


def backend_of(url: str) -> str:
    if url.startswith("sqlite"):
        return "sqlite"
    return "postgresql" if url.startswith("postgresql") else "mysql"


def create_schema(url: str) -> None:
    """parent <- child <- grand (ON DELETE CASCADE chain), parent <- child2 (SET NULL), a table
    without a primary key, an audit table filled by a user trigger, a PG sequence."""
    b = backend_of(url)
    engine = create_engine(url, poolclass=NullPool)
    stmts = [
        f"CREATE TABLE parent (id INT PRIMARY KEY, name VARCHAR(50), data {BLOB[b]}, "
        f"score {DOUBLE[b]})",
        "CREATE TABLE child (id INT PRIMARY KEY, pid INT REFERENCES parent(id) ON DELETE "
        "CASCADE, note VARCHAR(50))",
        "CREATE TABLE child2 (id INT PRIMARY KEY, pid INT REFERENCES parent(id) ON DELETE "
        "SET NULL)",
        "CREATE TABLE grand (id INT PRIMARY KEY, cid INT REFERENCES child(id) ON DELETE "
        "CASCADE)",
        "CREATE TABLE nopk (a INT, b VARCHAR(20))",
        f"CREATE TABLE audit (id {SERIAL[b]}, msg VARCHAR(100))",
        "CREATE INDEX parent_name ON parent(name)",
    ]
    if b == "mysql":
        stmts[1] = ("CREATE TABLE child (id INT PRIMARY KEY, pid INT, note VARCHAR(50), "
                    "FOREIGN KEY (pid) REFERENCES parent(id) ON DELETE CASCADE)")
        stmts[2] = ("CREATE TABLE child2 (id INT PRIMARY KEY, pid INT, FOREIGN KEY (pid) "
                    "REFERENCES parent(id) ON DELETE SET NULL)")
        stmts[3] = ("CREATE TABLE grand (id INT PRIMARY KEY, cid INT, FOREIGN KEY (cid) "
                    "REFERENCES child(id) ON DELETE CASCADE)")
        stmts.append("CREATE TRIGGER parent_audit AFTER INSERT ON parent FOR EACH ROW "
                     "INSERT INTO audit (msg) VALUES (CONCAT('new ', NEW.name))")
    elif b == "postgresql":
        stmts += [
            "CREATE FUNCTION audit_fn() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "INSERT INTO audit (msg) VALUES ('new ' || NEW.name); RETURN NULL; END $$",
            "CREATE TRIGGER parent_audit AFTER INSERT ON parent FOR EACH ROW EXECUTE "
            "FUNCTION audit_fn()",
            "CREATE SEQUENCE counter",
        ]
    else:
        stmts.append("CREATE TRIGGER parent_audit AFTER INSERT ON parent BEGIN INSERT INTO "
                     "audit (msg) VALUES ('new ' || NEW.name); END")
    with engine.begin() as conn:
        for stmt in stmts:
            conn.execute(text(stmt))
        conn.execute(text("INSERT INTO parent VALUES (1, 'one', :d, 0.1), (2, 'two', NULL, "
                          "1e300), (3, 'three', :e, -0.5)"), {"d": b"\x00\xff", "e": b""})
        conn.execute(text("INSERT INTO child VALUES (10, 1, 'a'), (11, 1, 'b'), (12, 2, 'c')"))
        conn.execute(text("INSERT INTO child2 VALUES (20, 1), (21, 2)"))
        conn.execute(text("INSERT INTO grand VALUES (30, 10), (31, 11), (32, 12)"))
        conn.execute(text("INSERT INTO nopk VALUES (1, 'x'), (1, 'x'), (2, NULL), "
                          "(NULL, NULL)"))
    engine.dispose()


Case = Callable[[Any, str], None]


def _insert(db: Any, b: str) -> None:
    db.execute("INSERT INTO parent VALUES (:i, :n, :d, :s)",
               {"i": 40, "n": "ünï©ødé ✓", "d": bytes(range(256)), "s": None})


def _update_where(db: Any, b: str) -> None:
    db.execute("UPDATE parent SET name = 'u', score = 2.5 WHERE id = 1")


def _update_all(db: Any, b: str) -> None:
    db.execute("UPDATE parent SET score = score * 3")


def _delete_cascade(db: Any, b: str) -> None:
    db.execute("DELETE FROM parent WHERE id = 1")


def _delete_all(db: Any, b: str) -> None:
    db.execute("DELETE FROM grand")
    db.execute("DELETE FROM child")
    db.execute("DELETE FROM nopk")


def _update_pk(db: Any, b: str) -> None:
    db.execute("UPDATE parent SET id = id + 100 WHERE id = 3")


def _upsert(db: Any, b: str) -> None:
    if b == "sqlite":
        db.execute("INSERT OR REPLACE INTO parent VALUES (2, 'r', X'01', 2.0)")
        db.execute("INSERT INTO nopk VALUES (5, 'n') ON CONFLICT DO NOTHING")
    elif b == "postgresql":
        db.execute("INSERT INTO parent VALUES (2, 'r', NULL, 2.0), (50, 'new', NULL, 1) "
                   "ON CONFLICT (id) DO UPDATE SET name = excluded.name")
    else:
        db.execute("REPLACE INTO parent VALUES (2, 'r', X'01', 2.0)")
        db.execute("INSERT INTO parent VALUES (3, 'd', NULL, 1), (51, 'n', NULL, 1) ON "
                   "DUPLICATE KEY UPDATE name = 'dup'")


def _nopk(db: Any, b: str) -> None:
    db.execute("UPDATE nopk SET b = 'z' WHERE a = 1")
    db.execute("DELETE FROM nopk WHERE a IS NULL")


def _executemany(db: Any, b: str) -> None:
    db.executemany("INSERT INTO nopk (a, b) VALUES (:a, :b)",
                   [{"a": i, "b": f"r{i}"} for i in range(50)])
    db.executemany("UPDATE parent SET name = :n WHERE id = :i",
                   [{"n": "m1", "i": 1}, {"n": "m2", "i": 2}])


def _create_table(db: Any, b: str) -> None:
    db.execute("CREATE TABLE fresh (id INT PRIMARY KEY, v VARCHAR(10))")
    db.execute("INSERT INTO fresh VALUES (1, 'a'), (2, 'b')")
    db.execute("CREATE INDEX fresh_v ON fresh(v)")


def _drop_table(db: Any, b: str) -> None:
    db.execute("DROP TABLE nopk")
    db.execute("DROP TABLE grand")
    db.execute("DROP TABLE child")


def _alter(db: Any, b: str) -> None:
    db.execute("ALTER TABLE nopk ADD COLUMN c INT")
    db.execute("UPDATE nopk SET c = 7 WHERE a = 1")
    db.execute("ALTER TABLE nopk RENAME COLUMN b TO bb")
    db.execute("ALTER TABLE child DROP COLUMN note")


def _drop_middle_column(db: Any, b: str) -> None:
    # not the last column: it must come back in its place (SELECT *, positional INSERT)
    db.execute("ALTER TABLE parent DROP COLUMN data")
    db.execute("INSERT INTO parent VALUES (70, 'seventy', 7.5)")


def _index(db: Any, b: str) -> None:
    db.execute("CREATE INDEX parent_score ON parent(score)")
    db.execute("DROP INDEX parent_name" + (" ON parent" if b == "mysql" else ""))


def _truncate(db: Any, b: str) -> None:
    if b == "sqlite":
        db.execute("DELETE FROM nopk")
    else:
        db.execute("TRUNCATE TABLE nopk")
        db.execute("TRUNCATE TABLE audit")


def _sequence(db: Any, b: str) -> None:
    db.execute("INSERT INTO parent VALUES (60, 'sixty', NULL, 6)")  # trigger: audit serial
    if b == "postgresql":
        assert db.query("SELECT nextval('counter')")[0][0] == 1
        db.query("SELECT nextval('counter')")


def _odd_identifiers(db: Any, b: str) -> None:
    q = (lambda n: "`" + n.replace("`", "``") + "`") if b == "mysql" else (
        lambda n: '"' + n.replace('"', '""') + '"')
    table, col = q('we"ird `tbl é'), q("sp ace")
    db.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, {col} VARCHAR(10))")
    db.execute(f"INSERT INTO {table} VALUES (1, 'a'), (2, 'b')")
    db.execute(f"UPDATE {table} SET {col} = 'c' WHERE id = 1")
    db.execute("UPDATE parent SET name = 'it''s' WHERE id = 1")


def _alter_types_constraints(db: Any, b: str) -> None:
    if b == "postgresql":
        db.execute("ALTER TABLE parent ALTER COLUMN name TYPE VARCHAR(100)")
        db.execute("ALTER TABLE parent ADD CONSTRAINT parent_name_uq UNIQUE (name)")
        db.execute("ALTER TABLE child2 DROP CONSTRAINT child2_pkey")
    elif b == "mysql":
        db.execute("ALTER TABLE parent MODIFY COLUMN name VARCHAR(100)")
        db.execute("ALTER TABLE parent ADD CONSTRAINT parent_name_uq UNIQUE (name)")
    else:
        db.execute("ALTER TABLE parent ADD COLUMN extra TEXT DEFAULT 'd' NOT NULL")
    db.execute("INSERT INTO audit (msg) VALUES ('bump')")  # AUTOINCREMENT / serial


CASES: dict[str, Case] = {
    "alter_types_and_constraints": _alter_types_constraints,
    "odd_identifiers": _odd_identifiers,
    "insert_blob_unicode_null": _insert, "update_where": _update_where,
    "update_all": _update_all, "delete_cascade_set_null": _delete_cascade,
    "delete_all": _delete_all, "update_primary_key": _update_pk, "upsert": _upsert,
    "no_primary_key": _nopk, "executemany": _executemany, "create_table": _create_table,
    "drop_table_with_data": _drop_table, "alter_add_rename_drop_column": _alter,
    "drop_middle_column": _drop_middle_column, "create_drop_index": _index,
    "truncate": _truncate, "trigger_rows_and_sequences": _sequence,
}


# ---- helpers of the set-based undo tests (test_sql_pg_undo, test_sql_sqlite_undo) --------------

def run_sql(url: str, *stmts: str) -> None:
    """Run ``stmts`` outside revex, in one transaction (someone else's change)."""
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as conn:
        for stmt in stmts:
            conn.execute(text(stmt))
    engine.dispose()


def committed_episode(rt: Any, url: str, workspace: Any, *stmts: str) -> str:
    """Run ``stmts`` in a committed episode on database ``app`` = ``url``; its id."""
    with rt.episode(workspace=workspace, databases={"app": url}, on_exit="commit") as ep:
        for stmt in stmts:
            ep.sql("app").execute(stmt)
    return str(ep.id)


def spy_restore(monkeypatch: Any, backend: type) -> list[str]:
    """The tables ``backend``'s general path restores from now on, recorded (the real
    restore runs)."""
    calls: list[str] = []
    restore = backend.restore

    def spy(self: Any, cur: Any, table: str, change: Any, *, force: bool) -> None:
        calls.append(table)
        restore(self, cur, table, change, force=force)
    monkeypatch.setattr(backend, "restore", spy)
    return calls


def drift_then(monkeypatch: Any, meanwhile: Callable[[], None]) -> None:
    """Run ``meanwhile`` right after every drift check (before a rollback, ahead of the undo
    and its own transaction): someone else's change in between."""
    from revex.runtime.effects.sql_engine import Database

    drift = Database.drift

    def late(self: Any, info: dict[str, Any], only: Any = None) -> list[str]:
        lines = drift(self, info, only)
        meanwhile()
        return lines
    monkeypatch.setattr(Database, "drift", late)
