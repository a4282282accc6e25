"""PostgreSQL capture: statement-level AFTER triggers with transition tables (and a BEFORE
TRUNCATE trigger) writing ``to_jsonb`` images into revex's log tables, active only in a session
that set ``revex.action`` for its transaction.

Set-based: one ``INSERT ... SELECT`` per statement and table copies the transition table's
images, 1,000 to a log row, newline-separated (``jsonb::text`` escapes every control character,
so an image never holds a newline), into the UNLOGGED ``_revex_images`` (its rows never outlive
the action's transaction: they are read and deleted before COMMIT). A table in an inheritance
tree (partitions too) keeps row triggers into ``_revex_log``: a statement trigger on a parent
would see its children's rows as its own.

FK cascades and rows written by user triggers fire the capture triggers of the tables they
touch. Undo runs with ``session_replication_role = replica`` (no user triggers, no FK actions)
and is set-based: ``jsonb_populate_recordset`` turns images back into rows in the engine; a
table with a primary key is checked, restored and verified in one pass over its images
(``pg_undo``).
Sequences are read before and after each statement. DDL is transactional; for undo after
commit, DROP TABLE becomes a move into the ``_revex_quarantine`` schema (indexes, triggers,
owned sequences and incoming FKs move with it), and CREATE/ALTER/indexes are inverted from a
catalog snapshot (a dropped column comes back in its place: see ``pg_columns``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from revex.errors import ActionFailed
from revex.runtime.effects.sqlcapture.base import (
    ACTIONS,
    AFTER_UNDO,
    LOG,
    NOT_OURS,
    PREFIX,
    Cursor,
    Log,
    log_of,
)
from revex.runtime.effects.sqlcapture.pg_columns import array, column_extras, revert_table
from revex.runtime.effects.sqlcapture.pg_undo import columns, drift_rows, undo_checked

QUARANTINE = "_revex_quarantine"
IMAGES = f"{PREFIX}_images"
_CHUNK = 1000
"""Images per ``_revex_images`` row."""
_STATEMENT = {f"{PREFIX}_ins": ("INSERT", "NEW TABLE AS _revex_new"),
              f"{PREFIX}_upd": ("UPDATE", "OLD TABLE AS _revex_old NEW TABLE AS _revex_new"),
              f"{PREFIX}_del": ("DELETE", "OLD TABLE AS _revex_old")}
"""Statement-level capture triggers: name -> (event, transition tables)."""
_ROW = f"{PREFIX}_row"
_TRUNCATE = f"{PREFIX}_truncate"

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

_SET_FUNCTION = f"""
CREATE OR REPLACE FUNCTION {PREFIX}_capture_set() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE tag text := current_setting('revex.action', true);
BEGIN
  IF tag IS NULL OR tag = '' THEN RETURN NULL; END IF;
  IF TG_OP <> 'INSERT' THEN
    INSERT INTO {IMAGES} (tag, tbl, old) SELECT tag, TG_TABLE_NAME, string_agg(j, E'\\n')
      FROM (SELECT to_jsonb(_revex_x)::text AS j, (row_number() OVER ()) / {_CHUNK} AS g
            FROM _revex_old _revex_x) s GROUP BY g;
  END IF;
  IF TG_OP <> 'DELETE' THEN
    INSERT INTO {IMAGES} (tag, tbl, new) SELECT tag, TG_TABLE_NAME, string_agg(j, E'\\n')
      FROM (SELECT to_jsonb(_revex_x)::text AS j, (row_number() OVER ()) / {_CHUNK} AS g
            FROM _revex_new _revex_x) s GROUP BY g;
  END IF;
  RETURN NULL;
END $$
"""


_SEQUENCES = ("FROM pg_class WHERE relkind = 'S' AND relnamespace = "
              "current_schema()::regnamespace AND relname NOT LIKE %s")
"""The sequences of the current schema, not revex's own (one parameter: :data:`NOT_OURS`)."""
_LAST = "pg_sequence_last_value(oid)::text"
"""A sequence's last value as text, NULL while it was never called."""
_TAKE_LOGS = (f"WITH r AS (DELETE FROM {LOG} WHERE tag = %s RETURNING tbl, op, old::text AS "
              f"old, new::text AS new), s AS (DELETE FROM {IMAGES} WHERE tag = %s RETURNING "
              "tbl, old, new)")
"""Both logs of a tag, deleted (two parameters: the tag twice); :data:`_LOG_ROWS` reads them."""
_LOG_ROWS = "SELECT 0, tbl, op, old, new FROM r UNION ALL SELECT 1, tbl, '', old, new FROM s"
"""Row events (0) and newline-joined batches (1, no op) of :data:`_TAKE_LOGS`."""


def _q(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


class PostgresBackend:
    name = "postgresql"
    param = "%s"
    transactional_ddl = True
    truncate_by_trigger = True
    sequence_is_ddl = False
    keeps_session = True

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
        cur.execute(f"CREATE UNLOGGED TABLE IF NOT EXISTS {IMAGES} (id bigserial PRIMARY KEY, "
                    "tag text NOT NULL, tbl text NOT NULL, old text, new text)")
        cur.execute(f"CREATE SCHEMA IF NOT EXISTS {QUARANTINE}")
        cur.execute(_FUNCTION)
        cur.execute(_SET_FUNCTION)
        self.sync(cur)

    def tables(self, cur: Cursor) -> list[str]:
        cur.execute("SELECT relname FROM pg_class WHERE relnamespace = "
                    "current_schema()::regnamespace AND relkind IN ('r', 'p') AND relname "
                    "NOT LIKE %s ORDER BY 1", (NOT_OURS,))
        return [r[0] for r in cur.fetchall()]

    def sync(self, cur: Cursor, tables: Iterable[str] | None = None) -> None:
        """Give every user table the capture triggers its place calls for: statement triggers,
        or row triggers for a table with an inheritance parent or child (its kind can change
        with DDL, so the wrong kind is dropped)."""
        cur.execute("SELECT c.relname, EXISTS (SELECT 1 FROM pg_inherits i WHERE c.oid IN "
                    "(i.inhrelid, i.inhparent)), ARRAY(SELECT t.tgname::text FROM pg_trigger t "
                    "WHERE t.tgrelid = c.oid AND t.tgname LIKE %s) FROM pg_class c WHERE "
                    "c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r' AND "
                    "c.relname NOT LIKE %s", (NOT_OURS,
                                              NOT_OURS))
        for table, inherits, have in cur.fetchall():
            want = {_ROW, _TRUNCATE} if inherits else {*_STATEMENT, _TRUNCATE}
            for name in set(have) - want:
                cur.execute(f"DROP TRIGGER {_q(name)} ON {_q(table)}")
            for name in sorted(want - set(have)):
                if name == _TRUNCATE:
                    cur.execute(f"CREATE TRIGGER {name} BEFORE TRUNCATE ON {_q(table)} FOR "
                                f"EACH STATEMENT EXECUTE FUNCTION {PREFIX}_capture()")
                elif name == _ROW:
                    cur.execute(f"CREATE TRIGGER {name} AFTER INSERT OR UPDATE OR DELETE ON "
                                f"{_q(table)} FOR EACH ROW EXECUTE FUNCTION {PREFIX}_capture()")
                else:
                    event, referencing = _STATEMENT[name]
                    cur.execute(f"CREATE TRIGGER {name} AFTER {event} ON {_q(table)} "
                                f"REFERENCING {referencing} FOR EACH STATEMENT EXECUTE "
                                f"FUNCTION {PREFIX}_capture_set()")

    def drop_capture(self, cur: Cursor, tables: Iterable[str]) -> None:
        return None

    def uninstall(self, cur: Cursor) -> None:
        return None  # inert outside revex sessions; other episodes may share them

    def set_tag(self, cur: Cursor, tag: str | None) -> None:
        cur.execute("SELECT set_config('revex.action', %s, true)", (tag or "",))

    def cascade_before(self, cur: Cursor, stmt: Any) -> Any:
        return None

    def cascade_after(self, cur: Cursor, before: Any) -> dict[str, dict[str, list[str]]]:
        return {}

    def sequences(self, cur: Cursor) -> dict[str, list[Any]]:
        cur.execute(f"SELECT relname, {_LAST} {_SEQUENCES}", (NOT_OURS,))
        return self._sequence_values(cur, cur.fetchall())

    def _sequence_values(self, cur: Cursor, rows: Iterable[Any]) -> dict[str, list[Any]]:
        """``[last_value, is_called]`` per sequence from ``(name, last value as text or None)``
        rows (:data:`_LAST`): ``pg_sequence_last_value`` reads the same tuple as
        ``SELECT last_value`` but is NULL until the sequence is called, so those few are read
        one by one for their exact value."""
        out: dict[str, list[Any]] = {}
        uncalled = []
        for name, value in rows:
            if value is None:
                uncalled.append(name)
            else:
                out[name] = [int(value), True]
        if uncalled:
            cur.execute(" UNION ALL ".join(
                f"SELECT %s, last_value, is_called FROM {_q(n)}" for n in uncalled), uncalled)
            out.update({r[0]: [r[1], r[2]] for r in cur.fetchall()})
        return out

    # ---- the capture of one DML statement: two round trips -----------------------------------

    def open_capture(self, cur: Cursor, tag: str) -> dict[str, list[Any]]:
        """:meth:`sequences` and :meth:`set_tag` in one round trip; the sequences."""
        cur.execute("SELECT NULL::text, set_config('revex.action', %s, true) UNION ALL SELECT "
                    f"relname::text, {_LAST} {_SEQUENCES}", (tag, NOT_OURS))
        return self._sequence_values(cur, (r for r in cur.fetchall() if r[0] is not None))

    def close_capture(self, cur: Cursor, tag: str, episode: str, seq: int
                      ) -> tuple[Log, dict[str, list[Any]]]:
        """After the statement, in one round trip: :meth:`read_log`, the tag cleared, the
        action's marker row and :meth:`sequences`; the log and the sequences."""
        cur.execute(f"{_TAKE_LOGS}, m AS (INSERT INTO {ACTIONS} (episode, seq) VALUES (%s, %s)) "
                    f"{_LOG_ROWS} UNION ALL SELECT 2, NULL, '', set_config('revex.action', '', "
                    f"true), NULL UNION ALL SELECT 3, relname::text, '', {_LAST}, NULL "
                    f"{_SEQUENCES}", (tag, tag, episode, seq, NOT_OURS))
        rows = cur.fetchall()
        return (self._log(row[1:] for row in rows if row[0] < 2),
                self._sequence_values(cur, ((row[1], row[3]) for row in rows if row[0] == 3)))

    def read_log(self, cur: Cursor, tag: str) -> Log:
        cur.execute(f"{_TAKE_LOGS} {_LOG_ROWS}", (tag, tag))
        return self._log(row[1:] for row in cur.fetchall())

    @staticmethod
    def _log(rows: Iterable[Any]) -> Log:
        """The :data:`Log` of ``(table, op, old, new)`` rows of both logs: a row event has an
        op; a batch of ``_revex_images`` has none and holds newline-joined images."""
        rows = list(rows)
        log = log_of(row for row in rows if row[1])
        for table, _, old, new in (row for row in rows if not row[1]):
            olds, news = log.get(table) or log.setdefault(table, ([], []))
            if old is not None:
                olds.extend(old.split("\n"))
            if new is not None:
                news.extend(new.split("\n"))
        return log

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

    def drift(self, cur: Cursor, table: str, change: dict[str, list[str]], *,
              undone: bool = False) -> list[str]:
        if not self._exists(cur, table):
            return [f"table {table}: no longer exists"]
        t, pk = _q(table), self.pk(cur, table)
        if pk:  # both sides in one query over images parsed once (pg_undo.stage)
            return [_conflict(table, pk, image, ("deleted" if gone else "changed")
                              if side == "a" else "re-created by someone else", undone)
                    for image, gone, side in drift_rows(cur, table, pk, change)]
        out = []
        if change["added"]:
            # rows are their images: each must be there as often as listed
            cur.execute("SELECT e.j::text FROM (SELECT j, count(*) AS n FROM "
                        "jsonb_array_elements(%s::jsonb) w(j) GROUP BY j) e LEFT JOIN "
                        f"(SELECT to_jsonb(_revex_x) AS j, count(*) AS n FROM {t} _revex_x "
                        "GROUP BY 1) h ON h.j = e.j WHERE coalesce(h.n, 0) < e.n",
                        (array(change["added"]),))
            out += [_conflict(table, pk, image, "deleted", undone)
                    for (image,) in cur.fetchall()]
        return out

    def undo_checked(self, cur: Cursor, table: str, change: dict[str, list[str]]) -> bool:
        return undo_checked(self, cur, table, change)

    def restore(self, cur: Cursor, table: str, change: dict[str, list[str]], *,
                force: bool) -> None:
        t, pk = _q(table), self.pk(cur, table)
        gone = change["added"] + (change["removed"] if force else [])
        if pk and gone:
            on = " AND ".join(f"_revex_x.{_q(c)} = r.{_q(c)}" for c in pk)
            cur.execute(f"DELETE FROM {t} _revex_x USING jsonb_populate_recordset(NULL::{t}, "
                        f"%s::jsonb) r WHERE {on}", (array(gone),))
        elif gone:
            for image in change["added"]:
                cur.execute(f"DELETE FROM {t} WHERE ctid = (SELECT ctid FROM {t} _revex_x WHERE "
                            "to_jsonb(_revex_x) = %s::jsonb LIMIT 1)", (image,))
        if change["removed"]:
            # a generated column is computed by the engine (and checked after the undo)
            cols = ", ".join(_q(c) for c, _, generated in columns(cur, table) if not generated)
            cur.execute(f"INSERT INTO {t} ({cols}) OVERRIDING SYSTEM VALUE SELECT {cols} FROM "
                        f"jsonb_populate_recordset(NULL::{t}, %s::jsonb)",
                        (array(change["removed"]),))

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
        return {"columns": columns, "indexes": indexes, "constraints": dict(cur.fetchall()),
                **column_extras(cur, table)}

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
            elif not _same_shape(self._catalog(cur, table), cat):
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
        foreign: list[list[str]] = []
        for table, was in pre.items():
            if table in post:
                foreign += revert_table(self, cur, table, was, post[table])
        for owner, name, definition in foreign:  # other tables' keys onto moved columns
            cur.execute(f"ALTER TABLE {owner} ADD CONSTRAINT {_q(name)} {definition}")

    def shape_drift(self, cur: Cursor, info: dict[str, Any]) -> list[str]:
        """After :meth:`ddl_undo`: tables not back in their pre-state (columns in order,
        types, defaults, constraints, indexes, comments; rows where the snapshot has them),
        and tables the DDL created that still exist."""
        out = []
        for table in info.get("created", []):
            if table not in info["pre"] and self._exists(cur, table):
                out.append(f"table {table}: still exists after undoing its creation")
        for table, was in info["pre"].items():
            if not self._exists(cur, table):
                out.append(f"table {table}: missing after undo")
                continue
            now = self._catalog(cur, table)
            if not _same_shape(now, was):
                diff = sorted(k for k in now if k in was and now[k] != was[k])
                out.append(f"table {table}: {', '.join(diff)} differ from before the "
                           "episode's DDL after undo")
            elif was.get("rows") is not None and sorted(self.snapshot_rows(cur, table)) \
                    != sorted(was["rows"]):
                out.append(f"table {table}: rows differ from before the episode's DDL "
                           "after undo")
        return out

    def _schema(self, cur: Cursor) -> str:
        cur.execute("SELECT current_schema()")
        return str(cur.fetchone()[0])


def _same_shape(now: dict[str, Any], snapshot: dict[str, Any]) -> bool:
    """``now`` (a catalog) matches ``snapshot`` in every part the snapshot recorded (older
    snapshots lack comments and collations; rows are compared separately)."""
    return all(now.get(k) == v for k, v in snapshot.items() if k != "rows")


def _conflict(table: str, pk: list[str], image: str, what: str, undone: bool = False) -> str:
    row = json.loads(image)
    cols = pk or list(row)[:4]
    key = ", ".join(f"{c}={row.get(c)!r}" for c in cols)
    return f"table {table} key ({key}): " + (AFTER_UNDO[what] if undone else
                                               f"{what} since the episode wrote it")
