"""SQLite capture: TEMP triggers (only this connection's writes) into a TEMP undo log.

``recursive_triggers=ON`` makes SQLite fire DELETE triggers for rows that ``INSERT OR REPLACE``
removes; FK cascades and rows written by user triggers fire the capture triggers of the tables
they touch. Images are ``json_object`` of ``[typeof(x), value]`` pairs (blobs as hex, reals with
17 significant digits, -0.0 told from 0.0), so they round-trip exactly. SQLite DDL is
transactional, so DDL is captured as a snapshot (the CREATE text of the table and its indexes
and triggers, plus rows) and undone by rebuilding the table.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Iterable
from typing import Any

from revex.runtime.effects.sqlcapture.base import (
    ACTIONS,
    AFTER_UNDO,
    LOG,
    NOT_OURS,
    PREFIX,
    Cursor,
    Log,
    StepwiseCapture,
    chunks,
    key_in,
    log_of,
    missing_copies,
)
from revex.runtime.effects.sqlcapture.rebuild import Rebuilder


def _q(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def _enc(ref: str) -> str:
    # SQLite prints -0.0 as 0.0 (and has no portable way to see the sign of a zero in SQL):
    # ask Python, for zeros only, so that an image tells them apart and an undo puts back
    # the zero that was there
    return (f"json_array(typeof({ref}), CASE typeof({ref}) WHEN 'blob' THEN hex({ref}) "
            f"WHEN 'real' THEN CASE WHEN {ref} = 0.0 AND {PREFIX}_negzero({ref}) THEN '-0.0' "
            f"ELSE printf('%!.17g', {ref}) END ELSE {ref} END)")


def _negative_zero(value: float) -> bool:
    return value == 0.0 and math.copysign(1.0, value) < 0


def _path(col: str) -> str:
    """The SQL literal of the JSON path of column ``col`` in an image."""
    return "'$.\"" + col.replace("'", "''") + "\"'"


def _value(ref: str, col: str) -> str:
    """SQL that turns column ``col`` of the image ``ref`` (JSON text) back into its value, as
    :func:`decode` does: blobs and reals through the exact Python conversions registered by
    ``connect_setup``."""
    tag = f"json_extract({ref}, {_path(col)} || '[0]')"
    val = f"json_extract({ref}, {_path(col)} || '[1]')"
    return (f"CASE {tag} WHEN 'blob' THEN {PREFIX}_unhex({val}) WHEN 'real' THEN "
            f"{PREFIX}_real({val}) ELSE {val} END")


def _in_sql(cols: list[str]) -> bool:
    """Whether images of these columns can be read back in SQL (JSON path labels cannot hold
    a double quote or backslash)."""
    return all('"' not in c and "\\" not in c for c in cols)


def decode(image: str) -> dict[str, Any]:
    """Column -> Python value of an image."""
    out: dict[str, Any] = {}
    for col, (typ, val) in json.loads(image).items():
        if typ == "blob":
            out[col] = bytes.fromhex(val)
        elif typ == "real":
            out[col] = float(val)
        else:
            out[col] = val
    return out


class SQLiteBackend(StepwiseCapture, Rebuilder):
    name = "sqlite"
    param = "?"
    transactional_ddl = True
    truncate_by_trigger = False
    sequence_is_ddl = False
    keeps_session = False

    def quote(self, ident: str) -> str:
        return _q(ident)

    def connect_setup(self, dbapi_conn: Any) -> None:
        dbapi_conn.isolation_level = None  # revex issues BEGIN itself, also before DDL
        dbapi_conn.execute("PRAGMA foreign_keys=ON")
        dbapi_conn.execute("PRAGMA recursive_triggers=ON")
        # set-based undo reads images back in SQL with the same conversions as decode()
        dbapi_conn.create_function(f"{PREFIX}_unhex", 1, bytes.fromhex, deterministic=True)
        dbapi_conn.create_function(f"{PREFIX}_real", 1, float, deterministic=True)
        dbapi_conn.create_function(f"{PREFIX}_negzero", 1, _negative_zero, deterministic=True)

    def begin(self, cur: Cursor, dbapi_conn: Any) -> None:
        if not dbapi_conn.in_transaction:
            cur.execute("BEGIN")

    # ---- schema ------------------------------------------------------------------------------

    def tables(self, cur: Cursor) -> list[str]:
        cur.execute("SELECT name FROM main.sqlite_master WHERE type='table' "
                    "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE ? ESCAPE '\\'",
                    (NOT_OURS,))
        return [r[0] for r in cur.fetchall()]

    def columns(self, cur: Cursor, table: str) -> tuple[list[str], list[str]]:
        """(columns, primary-key columns) of ``table``."""
        cur.execute(f"PRAGMA main.table_info({_q(table)})")
        rows = cur.fetchall()
        cols = [r[1] for r in rows]
        pk = [r[1] for r in sorted((r for r in rows if r[5]), key=lambda r: r[5])]
        return cols, pk

    def image_expr(self, cur: Cursor, table: str, ref: str) -> str:
        cols, _ = self.columns(cur, table)
        return "json_object(" + ", ".join(
            f"'{c.replace(chr(39), chr(39) * 2)}', {_enc(ref + '.' + _q(c))}" for c in cols) + ")"

    # ---- capture -----------------------------------------------------------------------------

    def install(self, cur: Cursor) -> None:
        cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {LOG} (id INTEGER PRIMARY KEY, "
                    "tbl TEXT, op TEXT, old TEXT, new TEXT)")
        cur.execute(f"CREATE TABLE IF NOT EXISTS main.{ACTIONS} (episode TEXT NOT NULL, "
                    "seq INTEGER NOT NULL, PRIMARY KEY (episode, seq))")
        self.sync(cur)

    def _trigger_names(self, table: str) -> list[tuple[str, str]]:
        return [(f"{PREFIX}_{op.lower()}_{table}", op) for op in ("INSERT", "UPDATE", "DELETE")]

    def drop_capture(self, cur: Cursor, tables: Iterable[str]) -> None:
        for table in tables:
            for name, _ in self._trigger_names(table):
                cur.execute(f"DROP TRIGGER IF EXISTS temp.{_q(name)}")

    def sync(self, cur: Cursor, tables: Iterable[str] | None = None) -> None:
        wanted = self.tables(cur) if tables is None else [
            t for t in tables if t in set(self.tables(cur))]
        self.drop_capture(cur, wanted)
        for table in wanted:
            old = self.image_expr(cur, table, "OLD")
            new = self.image_expr(cur, table, "NEW")
            lit = "'" + table.replace("'", "''") + "'"
            for name, op in self._trigger_names(table):
                o = old if op != "INSERT" else "NULL"
                n = new if op != "DELETE" else "NULL"
                cur.execute(
                    f"CREATE TEMP TRIGGER {_q(name)} AFTER {op} ON main.{_q(table)} BEGIN "
                    f"INSERT INTO {LOG} (tbl, op, old, new) "
                    f"VALUES ({lit}, '{op[0]}', {o}, {n}); END")

    def uninstall(self, cur: Cursor) -> None:
        cur.execute("SELECT name FROM temp.sqlite_master WHERE type='trigger' AND name LIKE ?",
                    (PREFIX + "%",))
        for (name,) in cur.fetchall():
            cur.execute(f"DROP TRIGGER IF EXISTS temp.{_q(name)}")

    def set_tag(self, cur: Cursor, tag: str | None) -> None:
        if tag is not None:
            cur.execute(f"DELETE FROM temp.{LOG}")

    def read_log(self, cur: Cursor, tag: str) -> Log:
        cur.execute(f"SELECT tbl, op, old, new FROM temp.{LOG}")
        log = log_of(cur.fetchall())
        cur.execute(f"DELETE FROM temp.{LOG}")
        return log

    def sequences(self, cur: Cursor) -> dict[str, list[Any]]:
        """AUTOINCREMENT counters (``sqlite_sequence``), which undo of rows must rewind."""
        cur.execute("SELECT 1 FROM main.sqlite_master WHERE name = 'sqlite_sequence'")
        if cur.fetchone() is None:
            return {}
        cur.execute("SELECT name, seq FROM main.sqlite_sequence")
        return {name: [seq] for name, seq in cur.fetchall()}

    def cascade_before(self, cur: Cursor, stmt: Any) -> Any:
        return None  # FK cascades fire the capture triggers of the child tables

    def cascade_after(self, cur: Cursor, before: Any) -> dict[str, dict[str, list[str]]]:
        return {}

    def set_sequence(self, cur: Cursor, name: str, value: list[Any] | None) -> None:
        cur.execute("DELETE FROM main.sqlite_sequence WHERE name = ?", (name,))
        if value is not None:
            cur.execute("INSERT INTO main.sqlite_sequence (name, seq) VALUES (?, ?)",
                        (name, value[0]))

    # ---- rows --------------------------------------------------------------------------------

    def snapshot_rows(self, cur: Cursor, table: str) -> list[str]:
        cur.execute(f"SELECT {self.image_expr(cur, table, 'x')} FROM main.{_q(table)} AS x")
        return [r[0] for r in cur.fetchall()]

    def _current_many(self, cur: Cursor, table: str, expr: str, pk: list[str],
                      rows: list[dict[str, Any]]) -> dict[tuple[Any, ...], str | None]:
        """Current images of many rows by primary key, in batches."""
        out: dict[tuple[Any, ...], str | None] = {}
        keys = list({tuple(r.get(c) for c in pk) for r in rows})
        for part in chunks(keys, 300):
            cur.execute(f"SELECT {', '.join('x.' + _q(c) for c in pk)}, {expr} FROM "
                        f"main.{_q(table)} AS x WHERE "
                        + key_in(pk, lambda c: "x." + _q(c), len(part), "?"),
                        [v for key in part for v in key])
            found = {tuple(r[:-1]): r[-1] for r in cur.fetchall()}
            for key in part:
                out[key] = found.get(key)
        return out

    def drift(self, cur: Cursor, table: str, change: dict[str, list[str]], *,
              undone: bool = False) -> list[str]:
        if table not in set(self.tables(cur)):
            return [f"table {table}: no longer exists"]
        cols, pk = self.columns(cur, table)
        if pk and _in_sql(cols):
            # set-based in the engine; only the images it cannot vouch for (drift, or a key
            # its JSON reading does not match) go through the exact check below
            change = self._suspects(cur, table, pk, change)
            if not change["added"] and not change["removed"]:
                return []
        return self._drift_exact(cur, table, pk, change, undone)

    def _suspects(self, cur: Cursor, table: str, pk: list[str],
                  change: dict[str, list[str]]) -> dict[str, list[str]]:
        """The part of ``change`` the engine does not find in place: ``added`` images whose
        row (by key) is missing or differs, ``removed`` images whose key no added image has
        and under which a row exists."""
        expr = self.image_expr(cur, table, "x")
        by_key = " AND ".join(f"x.{_q(c)} = {_value('e.value', c)}" for c in pk)
        added: list[str] = []
        if change["added"]:
            cur.execute(f"SELECT e.value, (SELECT {expr} FROM main.{_q(table)} AS x WHERE "
                        f"{by_key} LIMIT 1) FROM json_each(?) AS e",
                        (json.dumps(change["added"]),))
            added = [image for image, now in cur.fetchall() if now != image]
        removed: list[str] = []
        if change["removed"]:
            def keys(ref: str) -> str:  # typed, as text: equal only if the values are
                return "(" + ", ".join(f"ifnull(json_extract({ref}, {_path(c)}), 'null')"
                                       for c in pk) + ")"
            cur.execute(f"SELECT e.value FROM json_each(?) AS e WHERE {keys('e.value')} NOT IN "
                        f"(SELECT {keys('a.value')[1:-1]} FROM json_each(?) AS a) AND EXISTS "
                        f"(SELECT 1 FROM main.{_q(table)} AS x WHERE {by_key})",
                        (json.dumps(change["removed"]), json.dumps(change["added"])))
            removed = [r[0] for r in cur.fetchall()]
        # the exact check of a removed image needs every added key
        return {"added": added, "removed": removed,
                **({"keys": change["added"]} if removed else {})}

    def _drift_exact(self, cur: Cursor, table: str, pk: list[str],
                     change: dict[str, list[str]], undone: bool) -> list[str]:
        expr = self.image_expr(cur, table, "x")
        if not pk:  # rows are their images: each must be there as often as listed
            return [_conflict(table, pk, decode(image), "deleted", undone) for image in
                    missing_copies(cur, f"main.{_q(table)} AS x", expr, "?", change["added"])]
        out = []
        rows = [decode(i) for i in change["added"]]
        added_keys = {tuple(decode(i).get(c) for c in pk) for i in change.get("keys", [])}
        added_keys |= {tuple(r.get(c) for c in pk) for r in rows}
        found = self._current_many(cur, table, expr, pk, rows)
        for row, image in zip(rows, change["added"], strict=True):
            now = found.get(tuple(row.get(c) for c in pk))
            if now != image:
                out.append(_conflict(table, pk, row, "changed" if now else "deleted", undone))
        back = [r for r in map(decode, change["removed"])
                if tuple(r.get(c) for c in pk) not in added_keys]
        there = self._current_many(cur, table, expr, pk, back)
        for row in back:
            if there.get(tuple(row.get(c) for c in pk)):
                out.append(_conflict(table, pk, row, "re-created by someone else", undone))
        return out

    def restore(self, cur: Cursor, table: str, change: dict[str, list[str]], *,
                force: bool) -> None:
        cols, pk = self.columns(cur, table)
        triggers = self._user_triggers(cur, table)
        expr = self.image_expr(cur, table, "x")
        fast = _in_sql(cols)
        if pk and fast:
            gone = change["added"] + (change["removed"] if force else [])
            if gone:
                key = ", ".join(_value("e.value", c) for c in pk)
                cur.execute(f"DELETE FROM main.{_q(table)} WHERE ({', '.join(map(_q, pk))}) IN "
                            f"(SELECT {key} FROM json_each(?) AS e)", (json.dumps(gone),))
        elif pk:
            keys = [tuple(decode(i).get(c) for c in pk) for i in change["added"]]
            if force:
                keys += [tuple(decode(i).get(c) for c in pk) for i in change["removed"]]
            for part in chunks(keys, 300):
                cur.execute(f"DELETE FROM main.{_q(table)} WHERE "
                            + key_in(pk, _q, len(part), "?"), [v for k in part for v in k])
        else:
            cur.executemany(
                f"DELETE FROM main.{_q(table)} WHERE rowid = (SELECT rowid FROM "
                f"main.{_q(table)} AS x WHERE {expr} = ? LIMIT 1)",
                [(i,) for i in change["added"]])
        if change["removed"] and fast:
            cur.execute(f"INSERT INTO main.{_q(table)} ({', '.join(map(_q, cols))}) SELECT "
                        + ", ".join(_value("e.value", c) for c in cols)
                        + " FROM json_each(?) AS e ORDER BY e.key",
                        (json.dumps(change["removed"]),))
        elif change["removed"]:
            marks = ", ".join("?" for _ in cols)
            rows = [[decode(i).get(c) for c in cols] for i in change["removed"]]
            cur.executemany(f"INSERT INTO main.{_q(table)} ({', '.join(map(_q, cols))}) "
                            f"VALUES ({marks})", rows)
        for sql in triggers:
            cur.execute(sql)

    def _user_triggers(self, cur: Cursor, table: str) -> list[str]:
        """Drop ``table``'s own triggers (SQLite cannot disable them) and return their SQL."""
        cur.execute("SELECT name, sql FROM main.sqlite_master WHERE type='trigger' AND "
                    "tbl_name=?", (table,))
        found = cur.fetchall()
        for name, _ in found:
            cur.execute(f"DROP TRIGGER main.{_q(name)}")
        return [sql for _, sql in found]

    def undo_checked(self, cur: Cursor, table: str, change: dict[str, list[str]]) -> bool:
        """The undo of ``change`` with its compare-and-set and verification in three
        set-based statements, inside the undo transaction (``BEGIN IMMEDIATE``: no other
        writer until its COMMIT):

        1. ``DELETE`` every row whose image is one of the post-images, looked up by key: it
           must delete one row per post-image (a missing or changed row deletes fewer);
        2. ``INSERT`` the pre-images; a row someone re-created under one of their keys makes
           it fail on the primary key;
        3. verify by re-querying: one row equal to each pre-image (what the engine made of the
           values it was given). No row is left under a key only the post-images hold: the
           key is the primary key, so step 1 deleting one row per post-image deleted every
           row under their keys, and only step 2 wrote since (user triggers are dropped for
           the undo, foreign keys off, and the transaction keeps other writers out).

        Any count that is off, or an error, rolls back to a savepoint and returns False:
        nothing was changed, and the general path (drift lines, restore, verification with
        lines) names what differs. A table without a primary key or with column names the
        JSON paths cannot hold takes the general path.
        """
        if table not in set(self.tables(cur)):
            return False
        cols, pk = self.columns(cur, table)
        if not pk or not _in_sql(cols):
            return False
        t, expr = f"main.{_q(table)}", self.image_expr(cur, table, "x")
        added, removed = json.dumps(change["added"]), json.dumps(change["removed"])
        key = "(" + ", ".join(f"x.{_q(c)}" for c in pk) + ")"

        def keys(images: str) -> str:
            return (f"SELECT {', '.join(_value('e.value', c) for c in pk)} "
                    f"FROM json_each({images}) AS e")

        def present(images: str) -> str:  # rows equal to one of ``images``, found by key
            return (f"FROM {t} AS x WHERE {key} IN ({keys(images)}) AND {expr} IN "
                    f"(SELECT value FROM json_each({images}))")

        cur.execute("SAVEPOINT revex_fast")
        try:
            triggers = self._user_triggers(cur, table)
            ok = True
            if change["added"]:
                cur.execute(f"DELETE {present(':a')}", {"a": added})
                ok = cur.rowcount == len(change["added"])
            if ok and change["removed"]:
                cur.execute(f"INSERT INTO {t} ({', '.join(map(_q, cols))}) SELECT "
                            + ", ".join(_value("e.value", c) for c in cols)
                            + " FROM json_each(:r) AS e ORDER BY e.key", {"r": removed})
                cur.execute(f"SELECT count(*) {present(':r')}", {"r": removed})
                ok = cur.fetchone()[0] == len(change["removed"])
            for sql in triggers:
                cur.execute(sql)
        except sqlite3.Error:
            ok = False  # e.g. a row re-created under a pre-image's key: the general path says
        if not ok:
            cur.execute("ROLLBACK TO SAVEPOINT revex_fast")
        cur.execute("RELEASE SAVEPOINT revex_fast")
        return ok

    def undo_begin(self, cur: Cursor, dbapi_conn: Any) -> None:
        if not dbapi_conn.in_transaction:
            cur.execute("PRAGMA foreign_keys=OFF")
            cur.execute("BEGIN IMMEDIATE")

    def undo_end(self, cur: Cursor, dbapi_conn: Any) -> None:
        return None

    # ---- DDL (see Rebuilder) -----------------------------------------------------------------

    def ddl_before(self, cur: Cursor, stmt: Any, tag: str) -> dict[str, Any]:
        before = super().ddl_before(cur, stmt, tag)
        # the table's capture triggers name its columns: drop them before ALTER/DROP touches it
        self.drop_capture(cur, before["names"])
        return before

    def objects(self, cur: Cursor, table: str) -> list[list[str]]:
        cur.execute("SELECT type, name, sql FROM main.sqlite_master WHERE tbl_name=? AND "
                    "sql IS NOT NULL ORDER BY type='table' DESC, type='index' DESC, name",
                    (table,))
        return [list(r) for r in cur.fetchall()]

    def table_of_index(self, cur: Cursor, name: str) -> str | None:
        cur.execute("SELECT tbl_name FROM main.sqlite_master WHERE type='index' AND name=?",
                    (name,))
        row = cur.fetchone()
        return row[0] if row else None

    def drop_table(self, cur: Cursor, table: str) -> None:
        cur.execute(f"DROP TABLE IF EXISTS main.{_q(table)}")

    def create_objects(self, cur: Cursor, objects: list[list[str]], table: str,
                       rows: list[str]) -> None:
        for typ, _, sql in objects:
            if typ != "trigger":
                cur.execute(sql)
        self.restore(cur, table, {"added": [], "removed": rows}, force=False)
        for typ, _, sql in objects:
            if typ == "trigger":
                cur.execute(sql)


def _conflict(table: str, pk: list[str], row: dict[str, Any], what: str,
              undone: bool = False) -> str:
    if pk:
        key = ", ".join(f"{c}={row.get(c)!r}" for c in pk)
    else:
        key = "row " + ", ".join(f"{c}={v!r}" for c, v in list(row.items())[:4])
    return f"table {table} key ({key}): " + (AFTER_UNDO[what] if undone else
                                               f"{what} since the episode wrote it")
