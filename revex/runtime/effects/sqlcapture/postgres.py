"""PostgreSQL capture: row triggers (and a BEFORE TRUNCATE trigger) writing ``to_jsonb`` images
into ``_revex_log``, active only in a session that set ``revex.action`` for its transaction.

FK cascades and rows written by user triggers fire the capture triggers of the tables they
touch. Undo runs with ``session_replication_role = replica`` (no user triggers, no FK actions)
and is set-based: ``jsonb_populate_recordset`` turns images back into rows in the engine.
Sequences are read before and after each statement. DDL is transactional; for undo after
commit, DROP TABLE becomes a move into the ``_revex_quarantine`` schema (indexes, triggers,
owned sequences and incoming FKs move with it), and CREATE/ALTER/indexes are inverted from a
catalog snapshot (a dropped column comes back at the end of the table).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from revex.errors import ActionFailed
from revex.runtime.effects.sqlcapture.base import ACTIONS, LOG, PREFIX, Cursor, Event

QUARANTINE = "_revex_quarantine"

_FUNCTION = f"""
CREATE OR REPLACE FUNCTION {PREFIX}_capture() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE tag text := current_setting('revex.action', true);
BEGIN
  IF tag IS NULL OR tag = '' THEN RETURN NULL; END IF;
  IF TG_OP = 'TRUNCATE' THEN
    EXECUTE format('INSERT INTO {LOG} (tag, tbl, op, old) SELECT $1, $2, ''D'', to_jsonb(_revex_x) '
                   'FROM %I.%I _revex_x', TG_TABLE_SCHEMA, TG_TABLE_NAME) USING tag, TG_TABLE_NAME;
    RETURN NULL;
  END IF;
  INSERT INTO {LOG} (tag, tbl, op, old, new) VALUES (tag, TG_TABLE_NAME, left(TG_OP, 1),
    CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
    CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END);
  RETURN NULL;
END $$
"""


def _q(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def _array(images: Iterable[str]) -> str:
    return "[" + ",".join(images) + "]"


class PostgresBackend:
    name = "postgresql"
    param = "%s"
    transactional_ddl = True
    truncate_by_trigger = True

    def quote(self, ident: str) -> str:
        return _q(ident)

    def connect_setup(self, dbapi_conn: Any) -> None:
        return None

    def begin(self, cur: Cursor, dbapi_conn: Any) -> None:
        return None  # psycopg opens a transaction on the first statement

    # ---- capture -----------------------------------------------------------------------------

    def install(self, cur: Cursor) -> None:
        cur.execute(f"CREATE TABLE IF NOT EXISTS {LOG} (id bigserial PRIMARY KEY, tag text NOT "
                    "NULL, tbl text NOT NULL, op text NOT NULL, old jsonb, new jsonb)")
        cur.execute(f"CREATE TABLE IF NOT EXISTS {ACTIONS} (episode text NOT NULL, seq int NOT "
                    "NULL, PRIMARY KEY (episode, seq))")
        cur.execute(f"CREATE SCHEMA IF NOT EXISTS {QUARANTINE}")
        cur.execute(_FUNCTION)
        self.sync(cur)

    def tables(self, cur: Cursor) -> list[str]:
        cur.execute("SELECT relname FROM pg_class WHERE relnamespace = "
                    "current_schema()::regnamespace AND relkind IN ('r', 'p') AND relname "
                    "NOT LIKE %s ORDER BY 1", (PREFIX.replace("_", "\\_") + "%",))
        return [r[0] for r in cur.fetchall()]

    def sync(self, cur: Cursor, tables: Iterable[str] | None = None) -> None:
        cur.execute("SELECT c.relname FROM pg_class c WHERE c.relnamespace = "
                    "current_schema()::regnamespace AND c.relkind = 'r' AND c.relname NOT "
                    "LIKE %s AND NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = "
                    "c.oid AND t.tgname = %s)", (PREFIX.replace("_", "\\_") + "%",
                                                 f"{PREFIX}_row"))
        for (table,) in cur.fetchall():
            cur.execute(f"CREATE TRIGGER {PREFIX}_row AFTER INSERT OR UPDATE OR DELETE ON "
                        f"{_q(table)} FOR EACH ROW EXECUTE FUNCTION {PREFIX}_capture()")
            cur.execute(f"CREATE TRIGGER {PREFIX}_truncate BEFORE TRUNCATE ON {_q(table)} "
                        f"FOR EACH STATEMENT EXECUTE FUNCTION {PREFIX}_capture()")

    def drop_capture(self, cur: Cursor, tables: Iterable[str]) -> None:
        return None

    def uninstall(self, cur: Cursor) -> None:
        return None  # inert outside revex sessions; other episodes may share them

    def set_tag(self, cur: Cursor, tag: str | None) -> None:
        cur.execute("SELECT set_config('revex.action', %s, true)", (tag or "",))

    def read_log(self, cur: Cursor, tag: str) -> list[Event]:
        cur.execute(f"DELETE FROM {LOG} WHERE tag = %s RETURNING id, tbl, op, old::text, "
                    "new::text", (tag,))
        return [Event(*row[1:]) for row in sorted(cur.fetchall())]

    def cascade_before(self, cur: Cursor, stmt: Any) -> Any:
        return None

    def cascade_after(self, cur: Cursor, before: Any) -> dict[str, dict[str, list[str]]]:
        return {}

    def sequences(self, cur: Cursor) -> dict[str, list[Any]]:
        cur.execute("SELECT relname FROM pg_class WHERE relkind = 'S' AND relnamespace = "
                    "current_schema()::regnamespace AND relname NOT LIKE %s",
                    (PREFIX.replace("_", "\\_") + "%",))
        names = [r[0] for r in cur.fetchall()]
        if not names:
            return {}
        cur.execute(" UNION ALL ".join(
            f"SELECT %s, last_value, is_called FROM {_q(n)}" for n in names), names)
        return {r[0]: [r[1], r[2]] for r in cur.fetchall()}

    def set_sequence(self, cur: Cursor, name: str, value: list[Any] | None) -> None:
        if value is None:
            return  # created by the action: dropped with its table
        cur.execute("SELECT setval(%s::regclass, %s, %s)", (_q(name), value[0], value[1]))

    # ---- rows --------------------------------------------------------------------------------

    def pk(self, cur: Cursor, table: str) -> list[str]:
        cur.execute("SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = "
                    "i.indrelid AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass "
                    "AND i.indisprimary ORDER BY array_position(i.indkey::int2[], a.attnum)",
                    (_q(table),))
        return [r[0] for r in cur.fetchall()]

    def snapshot_rows(self, cur: Cursor, table: str) -> list[str]:
        cur.execute(f"SELECT to_jsonb(_revex_x)::text FROM {_q(table)} _revex_x")
        return [r[0] for r in cur.fetchall()]

    def _exists(self, cur: Cursor, table: str) -> bool:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (_q(table),))
        return bool(cur.fetchone()[0])

    def drift(self, cur: Cursor, table: str, change: dict[str, list[str]]) -> list[str]:
        if not self._exists(cur, table):
            return [f"table {table}: no longer exists"]
        t, pk = _q(table), self.pk(cur, table)
        out = []
        if change["added"]:
            if pk:
                on = " AND ".join(f"_revex_x.{_q(c)} = r.{_q(c)}" for c in pk)
                cur.execute(f"SELECT e.j::text, _revex_x.ctid IS NULL FROM jsonb_array_elements("
                            f"%s::jsonb) e(j) CROSS JOIN LATERAL jsonb_populate_record("
                            f"NULL::{t}, e.j) r LEFT JOIN {t} _revex_x ON {on} "
                            "WHERE _revex_x.ctid IS NULL OR to_jsonb(_revex_x) <> e.j",
                            (_array(change["added"]),))
            else:
                cur.execute(f"SELECT e.j::text, true FROM jsonb_array_elements(%s::jsonb) e(j) "
                            f"WHERE NOT EXISTS (SELECT 1 FROM {t} _revex_x WHERE "
                            "to_jsonb(_revex_x) = e.j)",
                            (_array(change["added"]),))
            for image, gone in cur.fetchall():
                out.append(_conflict(table, pk, image, "deleted" if gone else "changed"))
        if pk and change["removed"]:
            added = {_key(i, pk) for i in change["added"]}
            back = [i for i in change["removed"] if _key(i, pk) not in added]
            if back:
                on = " AND ".join(f"_revex_x.{_q(c)} = r.{_q(c)}" for c in pk)
                cur.execute(f"SELECT e.j::text FROM jsonb_array_elements(%s::jsonb) e(j) "
                            f"CROSS JOIN LATERAL jsonb_populate_record(NULL::{t}, e.j) r "
                            f"JOIN {t} _revex_x ON {on}", (_array(back),))
                for (image,) in cur.fetchall():
                    out.append(_conflict(table, pk, image, "re-created by someone else"))
        return out

    def restore(self, cur: Cursor, table: str, change: dict[str, list[str]], *,
                force: bool) -> None:
        t, pk = _q(table), self.pk(cur, table)
        gone = change["added"] + (change["removed"] if force else [])
        if pk and gone:
            on = " AND ".join(f"_revex_x.{_q(c)} = r.{_q(c)}" for c in pk)
            cur.execute(f"DELETE FROM {t} _revex_x USING jsonb_populate_recordset(NULL::{t}, "
                        f"%s::jsonb) r WHERE {on}", (_array(gone),))
        elif gone:
            for image in change["added"]:
                cur.execute(f"DELETE FROM {t} WHERE ctid = (SELECT ctid FROM {t} _revex_x WHERE "
                            "to_jsonb(_revex_x) = %s::jsonb LIMIT 1)", (image,))
        if change["removed"]:
            cur.execute(f"INSERT INTO {t} OVERRIDING SYSTEM VALUE SELECT * FROM "
                        f"jsonb_populate_recordset(NULL::{t}, %s::jsonb)",
                        (_array(change["removed"]),))

    def undo_begin(self, cur: Cursor, dbapi_conn: Any) -> None:
        cur.execute("SET LOCAL session_replication_role = replica")

    def undo_end(self, cur: Cursor, dbapi_conn: Any) -> None:
        return None

    # ---- DDL ---------------------------------------------------------------------------------

    def _catalog(self, cur: Cursor, table: str) -> dict[str, Any]:
        cur.execute("SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, "
                    "pg_get_expr(d.adbin, d.adrelid) FROM pg_attribute a LEFT JOIN pg_attrdef "
                    "d ON d.adrelid = a.attrelid AND d.adnum = a.attnum WHERE a.attrelid = "
                    "%s::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                    (_q(table),))
        columns = [list(r) for r in cur.fetchall()]
        cur.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = "
                    "current_schema() AND tablename = %s ORDER BY 1", (table,))
        indexes = dict(cur.fetchall())
        cur.execute("SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE "
                    "conrelid = %s::regclass ORDER BY 1", (_q(table),))
        return {"columns": columns, "indexes": indexes, "constraints": dict(cur.fetchall())}

    def _index_table(self, cur: Cursor, name: str) -> str | None:
        cur.execute("SELECT tablename FROM pg_indexes WHERE schemaname = current_schema() AND "
                    "indexname = %s", (name,))
        row = cur.fetchone()
        return row[0] if row else None

    def ddl_before(self, cur: Cursor, stmt: Any, tag: str) -> dict[str, Any]:
        existing = self.tables(cur)
        names = {self._index_table(cur, n) or n for n in (*stmt.tables, *stmt.names)}
        pre = {t: self._catalog(cur, t) for t in sorted(names) if t in existing}
        if stmt.kind == "alter" and re.search(r"\b(DROP|TYPE)\b", stmt.sql, re.IGNORECASE):
            for t in pre:
                pre[t]["rows"] = self.snapshot_rows(cur, t)
        info: dict[str, Any] = {"existing": existing, "names": sorted(names), "pre": pre}
        if stmt.detail == "drop table":
            info["quarantined"] = self._quarantine(cur, stmt, [t for t in names if t in pre],
                                                   tag)
            info["replaced"] = True
        return info

    def _quarantine(self, cur: Cursor, stmt: Any, tables: list[str],
                    tag: str) -> dict[str, Any]:
        if re.search(r"\bCASCADE\b", stmt.sql, re.IGNORECASE):
            raise ActionFailed("DROP TABLE ... CASCADE cannot be undone by revex on PostgreSQL; "
                               "drop the dependent objects first")
        import psycopg

        cur.execute("SAVEPOINT revex_trial")
        try:
            cur.execute(stmt.shown)  # the real DROP, to fail exactly as it would
        except psycopg.Error as exc:
            cur.execute("ROLLBACK TO SAVEPOINT revex_trial")
            raise ActionFailed(f"{stmt.shown[:200]!r} failed: {exc}") from exc
        cur.execute("ROLLBACK TO SAVEPOINT revex_trial")
        moved = {}
        for i, table in enumerate(tables):
            qname = f"{PREFIX}_q_{tag.replace(':', '_').replace('-', '_')}_{i}"[:63]
            # a dropped table must not keep holding the tables it references: its FKs go
            # (and come back on undo)
            cur.execute("SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE "
                        "conrelid = %s::regclass AND contype = 'f' ORDER BY 1", (_q(table),))
            fks = [list(r) for r in cur.fetchall()]
            for name, _ in fks:
                cur.execute(f"ALTER TABLE {_q(table)} DROP CONSTRAINT {_q(name)}")
            cur.execute(f"ALTER TABLE {_q(table)} RENAME TO {_q(qname)}")
            cur.execute(f"ALTER TABLE {_q(qname)} SET SCHEMA {QUARANTINE}")
            moved[table] = {"name": qname, "fks": fks}
        return moved

    def ddl_after(self, cur: Cursor, stmt: Any, before: dict[str, Any]) -> dict[str, Any]:
        existing = self.tables(cur)
        affected = set(before["names"]) | (set(existing) - set(before["existing"]))
        post = {t: self._catalog(cur, t) for t in sorted(affected) if t in existing}
        return {**{k: v for k, v in before.items() if k != "existing"},
                "created": sorted(set(existing) - set(before["existing"])), "post": post}

    def ddl_drift(self, cur: Cursor, info: dict[str, Any]) -> list[str]:
        out = []
        for table, cat in info["post"].items():
            if not self._exists(cur, table):
                out.append(f"table {table}: dropped since the episode's DDL")
            elif self._catalog(cur, table) != cat:
                out.append(f"table {table}: schema changed since the episode's DDL")
        for table in info.get("quarantined", {}):
            if self._exists(cur, table):
                out.append(f"table {table}: re-created since the episode dropped it")
        return out

    def ddl_undo(self, cur: Cursor, info: dict[str, Any]) -> None:
        pre, post = info["pre"], info["post"]
        gone = [t for t in pre if t not in post and t not in info.get("quarantined", {})]
        for table in info["created"]:
            if gone and len(gone) == 1 and len(info["created"]) == 1:
                cur.execute(f"ALTER TABLE {_q(table)} RENAME TO {_q(gone[0])}")  # a rename
            else:
                cur.execute(f"DROP TABLE IF EXISTS {_q(table)}")
        for table, moved in info.get("quarantined", {}).items():
            qname = moved["name"]
            cur.execute(f"ALTER TABLE {QUARANTINE}.{_q(qname)} SET SCHEMA "
                        f"{_q(self._schema(cur))}")
            cur.execute(f"ALTER TABLE {_q(qname)} RENAME TO {_q(table)}")
        for table, moved in info.get("quarantined", {}).items():  # all back before FKs
            for name, definition in moved["fks"]:
                cur.execute(f"ALTER TABLE {_q(table)} ADD CONSTRAINT {_q(name)} {definition}")
        for table, was in pre.items():
            if table in post:
                self._revert_table(cur, table, was, post[table])

    def _schema(self, cur: Cursor) -> str:
        cur.execute("SELECT current_schema()")
        return str(cur.fetchone()[0])

    def _revert_table(self, cur: Cursor, table: str, was: dict[str, Any],
                      now: dict[str, Any]) -> None:
        t = _q(table)
        old_cols = {c[0]: c for c in was["columns"]}
        new_cols = {c[0]: c for c in now["columns"]}
        lost = [c for c in old_cols if c not in new_cols]
        extra = [c for c in new_cols if c not in old_cols]
        if len(lost) == 1 and len(extra) == 1 and old_cols[lost[0]][1:] == new_cols[extra[0]][1:]:
            cur.execute(f"ALTER TABLE {t} RENAME COLUMN {_q(extra[0])} TO {_q(lost[0])}")
            lost, extra = [], []
        for name in extra:
            cur.execute(f"ALTER TABLE {t} DROP COLUMN {_q(name)}")
        for name in lost:
            _, typ, _notnull, default = old_cols[name]
            cur.execute(f"ALTER TABLE {t} ADD COLUMN {_q(name)} {typ}"
                        + (f" DEFAULT {default}" if default else ""))
        retyped = []
        for name, (_, typ, notnull, default) in old_cols.items():
            if name in new_cols and new_cols[name][1:] != [typ, notnull, default]:
                retyped.append(name)
                cur.execute(f"ALTER TABLE {t} ALTER COLUMN {_q(name)} DROP DEFAULT")
                cur.execute(f"ALTER TABLE {t} ALTER COLUMN {_q(name)} DROP NOT NULL")
                cur.execute(f"ALTER TABLE {t} ALTER COLUMN {_q(name)} TYPE {typ} USING "
                            f"{_q(name)}::{typ}")
                if default:
                    cur.execute(f"ALTER TABLE {t} ALTER COLUMN {_q(name)} SET DEFAULT {default}")
        if (lost or retyped) and was.get("rows"):
            self._put_back_columns(cur, table, lost + retyped, was["rows"])
        for name in lost + retyped:
            if old_cols[name][2]:
                cur.execute(f"ALTER TABLE {t} ALTER COLUMN {_q(name)} SET NOT NULL")
        old_cons, new_cons = was.get("constraints", {}), now.get("constraints", {})
        for name, definition in new_cons.items():
            if old_cons.get(name) != definition:
                cur.execute(f"ALTER TABLE {t} DROP CONSTRAINT IF EXISTS {_q(name)}")
        for name, definition in old_cons.items():
            if new_cons.get(name) != definition:
                cur.execute(f"ALTER TABLE {t} ADD CONSTRAINT {_q(name)} {definition}")
        current = self._catalog(cur, table)["indexes"]
        for name, definition in current.items():
            if was["indexes"].get(name) != definition:
                cur.execute(f"DROP INDEX IF EXISTS {_q(name)}")
        for name, definition in was["indexes"].items():
            if current.get(name) != definition:
                cur.execute(definition)

    def _put_back_columns(self, cur: Cursor, table: str, columns: list[str],
                          rows: list[str]) -> None:
        t, pk = _q(table), self.pk(cur, table)
        if pk:
            sets = ", ".join(f"{_q(c)} = r.{_q(c)}" for c in columns)
            on = " AND ".join(f"_revex_x.{_q(c)} = r.{_q(c)}" for c in pk)
            cur.execute(f"UPDATE {t} _revex_x SET {sets} FROM jsonb_populate_recordset("
                        f"NULL::{t}, %s::jsonb) r WHERE {on}", (_array(rows),))
        else:
            cur.execute(f"DELETE FROM {t}")
            cur.execute(f"INSERT INTO {t} SELECT * FROM jsonb_populate_recordset("
                        f"NULL::{t}, %s::jsonb)", (_array(rows),))


def _key(image: str, pk: list[str]) -> tuple[str, ...]:
    row = json.loads(image)
    return tuple(json.dumps(row.get(c)) for c in pk)


def _conflict(table: str, pk: list[str], image: str, what: str) -> str:
    row = json.loads(image)
    cols = pk or list(row)[:4]
    key = ", ".join(f"{c}={row.get(c)!r}" for c in cols)
    return f"table {table} key ({key}): {what} since the episode wrote it"
