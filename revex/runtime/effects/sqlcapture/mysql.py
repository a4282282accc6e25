"""MariaDB/MySQL capture: AFTER row triggers writing ``JSON_OBJECT`` images into ``_revex_log``
when the session variable ``@revex_action`` is set.

MariaDB fires no triggers for FK cascades, so before a DELETE/UPDATE/upsert the tables reachable
through CASCADE / SET NULL / SET DEFAULT foreign keys (``information_schema``) are snapshotted
and diffed after the statement. DDL commits implicitly, so it is never run inside prepare: the
table (SHOW CREATE TABLE, its triggers and rows) is snapshotted into the INTENT first, the DDL
runs in apply, and undo rebuilds the table from the snapshot. TRUNCATE is DDL here too.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from decimal import Decimal
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
    chunks,
    key_in,
    log_of,
    mark,
    missing_copies,
    multiset_diff,
)
from revex.runtime.effects.sqlcapture.rebuild import Rebuilder

_BINARY = {"blob", "tinyblob", "mediumblob", "longblob", "binary", "varbinary", "bit",
           "geometry", "point", "linestring", "polygon"}
_FLOAT = {"double", "float", "real"}
_CASCADING = {"CASCADE", "SET NULL", "SET DEFAULT"}
_BATCH_TEXT = 8 << 20
"""group_concat_max_len for reading the log in batches: under the default max_allowed_packet
(16 MiB), so a batch too long comes back cut (and is read row by row), never as an error."""


_COUNTERS = ("SELECT table_name, auto_increment FROM information_schema.tables WHERE "
             "table_schema = DATABASE() AND table_type = 'BASE TABLE' AND auto_increment IS "
             "NOT NULL AND table_name NOT LIKE %s")
"""Each user table's AUTO_INCREMENT counter (one parameter: :data:`NOT_OURS`)."""
HELD = f"{PREFIX}_held_triggers"
"""User triggers an undo dropped and has not re-created yet, by the session that holds them."""
_HELD_TABLE = (f"CREATE TABLE IF NOT EXISTS {HELD} (id BIGINT AUTO_INCREMENT PRIMARY KEY, "
               "holder BIGINT NOT NULL, tbl VARCHAR(64) NOT NULL, name VARCHAR(64) NOT NULL, "
               "body LONGTEXT NOT NULL) ENGINE=InnoDB")
_HOLD = "revex_held_triggers_"
"""Named lock ``_HOLD<connection id>``: held while that session's triggers are dropped."""
_FIRST = 200
"""Log rows a MariaDB statement reads with ``DELETE ... RETURNING`` before batching."""


def _mariadb(cur: Cursor) -> bool:
    """The server is MariaDB (``DELETE ... RETURNING``); MySQL has no RETURNING. The driver
    knows the server's version from the handshake: no round trip."""
    info = getattr(cur.connection, "get_server_info", None)
    return info is not None and "mariadb" in str(info()).lower()


def _q(ident: str) -> str:
    return "`" + ident.replace("`", "``") + "`"


def _lit(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


class MySQLBackend(Rebuilder):
    name = "mysql"
    param = "%s"
    transactional_ddl = False
    truncate_by_trigger = False
    sequence_is_ddl = True
    keeps_session = True

    def __init__(self) -> None:
        self._memo: dict[tuple[tuple[str, str], ...], dict[str, dict[str, Any]]] = {}

    def quote(self, ident: str) -> str:
        return _q(ident)

    def connect_setup(self, dbapi_conn: Any) -> None:
        return None

    def begin(self, cur: Cursor, dbapi_conn: Any) -> None:
        return None  # autocommit is off: the first statement opens a transaction

    # ---- schema ------------------------------------------------------------------------------

    def tables(self, cur: Cursor) -> list[str]:
        cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = "
                    "DATABASE() AND table_type = 'BASE TABLE' AND table_name NOT LIKE %s "
                    "ORDER BY 1", (NOT_OURS,))
        return [r[0] for r in cur.fetchall()]

    def columns(self, cur: Cursor, table: str) -> list[tuple[str, str]]:
        cur.execute("SELECT column_name, data_type FROM information_schema.columns WHERE "
                    "table_schema = DATABASE() AND table_name = %s ORDER BY ordinal_position",
                    (table,))
        return [(r[0], r[1].lower()) for r in cur.fetchall()]

    def pk(self, cur: Cursor, table: str) -> list[str]:
        cur.execute("SELECT column_name FROM information_schema.key_column_usage WHERE "
                    "table_schema = DATABASE() AND table_name = %s AND constraint_name = "
                    "'PRIMARY' ORDER BY ordinal_position", (table,))
        return [r[0] for r in cur.fetchall()]

    def image_expr(self, cols: list[tuple[str, str]], ref: str) -> str:
        parts = []
        for name, typ in cols:
            col = f"{ref}.{_q(name)}"
            parts.append(f"{_lit(name)}, " + (f"HEX({col})" if typ in _BINARY else col))
        return "JSON_OBJECT(" + ", ".join(parts) + ")"

    def decode(self, cols: list[tuple[str, str]], image: str) -> dict[str, Any]:
        row = json.loads(image, parse_float=Decimal)
        types = dict(cols)
        out = {}
        for c, v in row.items():
            if v is not None and types.get(c) in _BINARY:
                v = bytes.fromhex(v)
            elif isinstance(v, Decimal) and types.get(c) in _FLOAT:
                v = float(v)
            out[c] = v
        return out

    def decoder(self, cols: list[tuple[str, str]]) -> Any:
        """:meth:`decode` for ``cols``, remembering what it decoded: the checks before an
        undo, the undo and the check after it read the same images (up to 50,000 kept)."""
        if sum(map(len, self._memo.values())) > 50_000:
            self._memo.clear()
        memo = self._memo.setdefault(tuple(cols), {})

        def decode(image: str) -> dict[str, Any]:
            row = memo.get(image)
            if row is None:
                row = memo[image] = self.decode(cols, image)
            return row
        return decode

    # ---- capture -----------------------------------------------------------------------------

    def install(self, cur: Cursor) -> None:
        cur.execute(f"CREATE TABLE IF NOT EXISTS {LOG} (id BIGINT AUTO_INCREMENT PRIMARY KEY, "
                    "tag VARCHAR(100) NOT NULL, tbl VARCHAR(64) NOT NULL, op CHAR(1) NOT NULL, "
                    "old LONGTEXT, new LONGTEXT, KEY (tag)) ENGINE=InnoDB")
        cur.execute(f"CREATE TABLE IF NOT EXISTS {ACTIONS} (episode VARCHAR(64) NOT NULL, "
                    "seq INT NOT NULL, PRIMARY KEY (episode, seq)) ENGINE=InnoDB")
        cur.execute(_HELD_TABLE)
        self.sync(cur)

    def _trigger_name(self, table: str, op: str) -> str:
        name = f"{PREFIX}_{op[0].lower()}_{table}"
        if len(name) > 64:
            name = name[:50] + hashlib.sha1(table.encode()).hexdigest()[:14]
        return name

    def _body(self, table: str, op: str, cols: list[tuple[str, str]]) -> str:
        old = self.image_expr(cols, "OLD") if op != "INSERT" else "NULL"
        new = self.image_expr(cols, "NEW") if op != "DELETE" else "NULL"
        return (f"IF @revex_action IS NOT NULL THEN INSERT INTO {LOG} (tag, tbl, op, old, new) "
                f"VALUES (@revex_action, {_lit(table)}, '{op[0]}', {old}, {new}); END IF")

    def sync(self, cur: Cursor, tables: Iterable[str] | None = None) -> None:
        cur.execute("SELECT trigger_name, action_statement FROM information_schema.triggers "
                    "WHERE trigger_schema = DATABASE() AND trigger_name LIKE %s",
                    (NOT_OURS,))
        have = dict(cur.fetchall())
        for table in self.tables(cur) if tables is None else tables:
            cols = self.columns(cur, table)
            if not cols:
                continue
            for op in ("INSERT", "UPDATE", "DELETE"):
                name, body = self._trigger_name(table, op), self._body(table, op, cols)
                if have.get(name) == body:
                    continue
                if name in have:
                    cur.execute(f"DROP TRIGGER IF EXISTS {_q(name)}")
                cur.execute(f"CREATE TRIGGER {_q(name)} AFTER {op} ON {_q(table)} FOR EACH ROW "
                            + body)

    def drop_capture(self, cur: Cursor, tables: Iterable[str]) -> None:
        return None

    def uninstall(self, cur: Cursor) -> None:
        return None

    def set_tag(self, cur: Cursor, tag: str | None) -> None:
        cur.execute("SET @revex_action = %s", (tag,))

    def read_log(self, cur: Cursor, tag: str) -> Log:
        first: list[Any] = []
        if _mariadb(cur):
            # a small log (most statements) in one round trip: its first rows read and deleted
            # at once; only a log that fills them is read in batches as well
            cur.execute(f"DELETE FROM {LOG} WHERE tag = %s ORDER BY id LIMIT {_FIRST} "
                        "RETURNING tbl, op, old, new", (tag,))
            first = list(cur.fetchall())
            if len(first) < _FIRST:
                return log_of(first)
        log = self._read_batched(cur, tag)
        if log is None:
            cur.execute(f"SELECT tbl, op, old, new FROM {LOG} WHERE tag = %s", (tag,))
            log = log_of(cur.fetchall())
        cur.execute(f"DELETE FROM {LOG} WHERE tag = %s", (tag,))
        for table, (olds, news) in log_of(first).items():  # a multiset: order is free
            sides = log.get(table) or log.setdefault(table, ([], []))
            sides[0].extend(olds)
            sides[1].extend(news)
        return log

    def _read_batched(self, cur: Cursor, tag: str) -> Log | None:
        """The log of ``tag`` read 1,000 images to a row (PyMySQL parses each result row in
        Python), newline-joined: JSON_OBJECT escapes every control character, so an image
        holds no newline. None (read it row by row) unless every batch splits back into as
        many images, of as many characters, as the engine counted (a cut GROUP_CONCAT)."""
        parts = []
        for side in ("old", "new"):
            parts.append(f"COUNT({side}), SUM(CHAR_LENGTH({side})), "
                         f"GROUP_CONCAT({side} ORDER BY id SEPARATOR '\\n')")
        # SET STATEMENT: the session's own group_concat_max_len (the agent's) stays as it was
        cur.execute(f"SET STATEMENT group_concat_max_len = {_BATCH_TEXT} FOR SELECT tbl, "
                    f"{', '.join(parts)} FROM {LOG} WHERE tag = %s GROUP BY tbl, id DIV 1000",
                    (tag,))
        log: Log = {}
        for table, n_old, len_old, old, n_new, len_new, new in cur.fetchall():
            sides = log.get(table) or log.setdefault(table, ([], []))
            for n, length, text, images_of in ((n_old, len_old, old, sides[0]),
                                               (n_new, len_new, new, sides[1])):
                if not n:
                    continue
                images = text.split("\n")
                if len(images) != n or sum(map(len, images)) != int(length):
                    return None
                images_of.extend(images)
        return log

    def sequences(self, cur: Cursor) -> dict[str, list[Any]]:
        """Each table's AUTO_INCREMENT counter: InnoDB never rolls it back, so undo must."""
        cur.execute(_COUNTERS, (NOT_OURS,))
        return {r[0]: [int(r[1])] for r in cur.fetchall()}

    def _tag_and_counters(self, cur: Cursor, tag: str | None) -> dict[str, list[Any]]:
        """:meth:`set_tag` and :meth:`sequences` in one round trip (the counters come back as
        text beside the tag's row)."""
        cur.execute("SELECT NULL, @revex_action := %s UNION ALL " + _COUNTERS, (tag, NOT_OURS))
        return {r[0]: [int(r[1])] for r in cur.fetchall() if r[0] is not None}

    def open_capture(self, cur: Cursor, tag: str) -> dict[str, list[Any]]:
        return self._tag_and_counters(cur, tag)

    def close_capture(self, cur: Cursor, tag: str, episode: str, seq: int
                      ) -> tuple[Log, dict[str, list[Any]]]:
        log = self.read_log(cur, tag)
        after = self._tag_and_counters(cur, None)
        mark(cur, self.param, episode, seq)
        return log, after

    def set_sequence(self, cur: Cursor, name: str, value: list[Any] | None) -> None:
        """ALTER TABLE ... AUTO_INCREMENT (commits implicitly). InnoDB raises a value below
        max(id) + 1 to that, so a counter never goes under rows someone else kept."""
        if value is None or name not in self.tables(cur):
            return  # created by the action (its DDL undo drops it) or dropped since
        cur.execute(f"ALTER TABLE {_q(name)} AUTO_INCREMENT = {int(value[0])}")

    # ---- FK cascades (no triggers fire for them) ---------------------------------------------

    def cascade_before(self, cur: Cursor, stmt: Any) -> dict[str, list[str]] | None:
        if stmt.kind not in ("delete", "update", "upsert"):
            return None
        cur.execute("SELECT table_name, referenced_table_name, delete_rule, update_rule FROM "
                    "information_schema.referential_constraints WHERE constraint_schema = "
                    "DATABASE()")
        children: dict[str, set[str]] = {}
        for child, parent, on_delete, on_update in cur.fetchall():
            if on_delete in _CASCADING or on_update in _CASCADING:
                children.setdefault(parent, set()).add(child)
        reach: set[str] = set()
        todo = list(stmt.tables)
        while todo:
            for child in children.get(todo.pop(), ()):
                if child not in reach:
                    reach.add(child)
                    todo.append(child)
        return {t: self.snapshot_rows(cur, t) for t in sorted(reach)} or None

    def cascade_after(self, cur: Cursor, before: dict[str, list[str]] | None
                      ) -> dict[str, dict[str, list[str]]]:
        return {t: multiset_diff(rows, self.snapshot_rows(cur, t))
                for t, rows in (before or {}).items()}

    # ---- rows --------------------------------------------------------------------------------

    def snapshot_rows(self, cur: Cursor, table: str) -> list[str]:
        cols = self.columns(cur, table)
        cur.execute(f"SELECT {self.image_expr(cols, '_revex_x')} FROM {_q(table)} _revex_x")
        return [r[0] for r in cur.fetchall()]

    def _current(self, cur: Cursor, table: str, expr: str, pk: list[str],
                 row: dict[str, Any]) -> str | None:
        where = " AND ".join(f"_revex_x.{_q(c)} <=> %s" for c in pk)
        cur.execute(f"SELECT {expr} FROM {_q(table)} _revex_x WHERE {where}",
                    [row[c] for c in pk])
        found = cur.fetchone()
        return found[0] if found else None

    def _current_many(self, cur: Cursor, table: str, expr: str, pk: list[str],
                      rows: list[dict[str, Any]], decode: Any) -> dict[tuple[str, ...], str]:
        """Current images of many rows by primary key, in batches of 500 read as one
        newline-joined row each (see :meth:`_read_batched`), keyed by the text of the key
        values ``decode`` reads from each image, as the caller keys its own images."""
        out: dict[tuple[str, ...], str] = {}
        keys = list({tuple(r.get(c) for c in pk) for r in rows})
        for part in chunks(keys, 500):
            where = key_in(pk, lambda c: "_revex_x." + _q(c), len(part), "%s")
            args = [v for key in part for v in key]
            cur.execute(f"SET STATEMENT group_concat_max_len = {_BATCH_TEXT} FOR SELECT "
                        "COUNT(*), SUM(CHAR_LENGTH(j)), GROUP_CONCAT(j SEPARATOR '\\n') FROM "
                        f"(SELECT {expr} AS j FROM {_q(table)} _revex_x WHERE {where}) s", args)
            n, length, text = cur.fetchone()
            images = text.split("\n") if n else []
            if len(images) != n or sum(map(len, images)) != int(length or 0):  # cut: rows
                cur.execute(f"SELECT {expr} FROM {_q(table)} _revex_x WHERE {where}", args)
                images = [r[0] for r in cur.fetchall()]
            for image in images:
                row = decode(image)
                out[tuple(str(row.get(c)) for c in pk)] = image
        return out

    def drift(self, cur: Cursor, table: str, change: dict[str, list[str]], *,
              undone: bool = False) -> list[str]:
        if table not in self.tables(cur):
            return [f"table {table}: no longer exists"]
        cols, pk = self.columns(cur, table), self.pk(cur, table)
        decode = self.decoder(cols)
        expr = self.image_expr(cols, "_revex_x")
        if not pk:  # rows are their images: each must be there as often as listed
            return [_conflict(table, pk, decode(image), "deleted", undone)
                    for image in missing_copies(cur, f"{_q(table)} _revex_x", expr, "%s",
                                                change["added"])]
        out = []
        rows = [decode(i) for i in change["added"]]
        added = {tuple(str(r.get(c)) for c in pk) for r in rows}
        found = self._current_many(cur, table, expr, pk, rows, decode)
        for row, image in zip(rows, change["added"], strict=True):
            key = tuple(str(row.get(c)) for c in pk)
            # a key whose text differs from the image's (DATETIME, DECIMAL) is looked up alone
            now = found[key] if key in found else self._current(cur, table, expr, pk, row)
            if now != image and (now is None or json.loads(now) != json.loads(image)):
                out.append(_conflict(table, pk, row, "changed" if now else "deleted", undone))
        back = [r for r in (decode(i) for i in change["removed"])
                if tuple(str(r.get(c)) for c in pk) not in added]
        there = self._current_many(cur, table, expr, pk, back, decode) if back else {}
        for row in back:
            if tuple(str(row.get(c)) for c in pk) in there:
                out.append(_conflict(table, pk, row, "re-created by someone else", undone))
        return out

    def restore(self, cur: Cursor, table: str, change: dict[str, list[str]], *,
                force: bool) -> None:
        cols, pk = self.columns(cur, table), self.pk(cur, table)
        decode = self.decoder(cols)
        names = [c for c, _ in cols]
        triggers = self._user_triggers(cur, table) if change["added"] or change["removed"] \
            else []
        if pk:
            gone = change["added"] + (change["removed"] if force else [])
            keys = [[decode(i).get(c) for c in pk] for i in gone]
            for part in chunks(keys, 500):
                cur.execute(f"DELETE FROM {_q(table)} WHERE "
                            + key_in(pk, _q, len(part), "%s"), [v for k in part for v in k])
        else:
            expr = self.image_expr(cols, _q(table))
            for image in change["added"]:
                cur.execute(f"DELETE FROM {_q(table)} WHERE {expr} = %s LIMIT 1", (image,))
        if change["removed"]:
            rows = [[decode(i).get(c) for c in names] for i in change["removed"]]
            marks = ", ".join("%s" for _ in names)
            cur.executemany(f"INSERT INTO {_q(table)} ({', '.join(map(_q, names))}) "
                            f"VALUES ({marks})", rows)
        if triggers:
            cur.connection.commit()
            for sql in triggers:
                cur.execute(sql)
            cur.execute(f"DELETE FROM {HELD} WHERE holder = CONNECTION_ID() AND tbl = %s",
                        (table,))
            cur.connection.commit()
            cur.execute(f"DO RELEASE_LOCK(CONCAT('{_HOLD}', CONNECTION_ID()))")

    def _user_triggers(self, cur: Cursor, table: str) -> list[str]:
        """Drop ``table``'s own triggers (they cannot be disabled) and return their SQL.

        Dropping a trigger commits implicitly, and so does re-creating it after the rows are
        back: a crash between the two would lose it. So each trigger's SQL is first committed
        into ``_revex_held_triggers`` under this session's id, while the session holds the
        named lock of that id; the next undo on the database (after a crash, recovery's)
        re-creates what a session that is gone still held (:meth:`_release_held`)."""
        cur.execute("SELECT trigger_name FROM information_schema.triggers WHERE trigger_schema "
                    "= DATABASE() AND event_object_table = %s AND trigger_name NOT LIKE %s "
                    "ORDER BY action_order", (table, NOT_OURS))
        names = [r[0] for r in cur.fetchall()]
        out = []
        for name in names:
            cur.execute(f"SHOW CREATE TRIGGER {_q(name)}")
            out.append(cur.fetchone()[2])
        if not names:
            return out
        cur.execute(_HELD_TABLE)  # a database revex set up before this table existed
        cur.execute(f"SELECT GET_LOCK(CONCAT('{_HOLD}', CONNECTION_ID()), 0)")
        if cur.fetchone()[0] != 1:
            raise ActionFailed(f"cannot take the lock that guards table {table}'s triggers "
                               "while they are dropped for the undo; nothing was changed")
        cur.executemany(f"INSERT INTO {HELD} (holder, tbl, name, body) VALUES "
                        "(CONNECTION_ID(), %s, %s, %s)",
                        [(table, n, sql) for n, sql in zip(names, out, strict=True)])
        cur.connection.commit()
        for name in names:
            cur.execute(f"DROP TRIGGER {_q(name)}")
        return out

    def _release_held(self, cur: Cursor) -> None:
        """Re-create the user triggers an undo dropped and a session that no longer exists
        (killed, crashed: its named lock went with it) did not put back, then forget them."""
        try:
            cur.execute(f"SELECT id, name, body FROM {HELD} WHERE IS_USED_LOCK(CONCAT("
                        f"'{_HOLD}', holder)) IS NULL ORDER BY id")
        except Exception as exc:  # the driver's error: no such table, nothing was held
            if not exc.args or exc.args[0] != 1146:
                raise
            return
        held = cur.fetchall()
        if not held:
            return
        cur.execute("SELECT trigger_name FROM information_schema.triggers WHERE "
                    "trigger_schema = DATABASE()")
        there = {r[0] for r in cur.fetchall()}
        for _, name, body in held:
            if name not in there:
                cur.execute(body)  # commits implicitly
        cur.execute(f"DELETE FROM {HELD} WHERE id IN ({', '.join('%s' for _ in held)})",
                    [r[0] for r in held])
        cur.connection.commit()

    def undo_checked(self, cur: Cursor, table: str, change: dict[str, list[str]]) -> bool:
        return False  # the general path: drift, restore, verify

    def undo_begin(self, cur: Cursor, dbapi_conn: Any) -> None:
        # undo runs DDL (rebuilds, AUTO_INCREMENT): a session holding the table must make it
        # fail in bounded time, not wait for the server's default of a day
        cur.execute("SET SESSION lock_wait_timeout = 60")
        self._release_held(cur)
        cur.execute("SET FOREIGN_KEY_CHECKS = 0")

    def undo_end(self, cur: Cursor, dbapi_conn: Any) -> None:
        cur.execute("SET FOREIGN_KEY_CHECKS = 1")

    # ---- DDL (see Rebuilder) -----------------------------------------------------------------

    def objects(self, cur: Cursor, table: str) -> list[list[str]]:
        cur.execute(f"SHOW CREATE TABLE {_q(table)}")
        out = [["table", table, cur.fetchone()[1]]]
        cur.execute("SELECT trigger_name FROM information_schema.triggers WHERE trigger_schema "
                    "= DATABASE() AND event_object_table = %s AND trigger_name NOT LIKE %s "
                    "ORDER BY action_order", (table, NOT_OURS))
        for (name,) in cur.fetchall():
            cur.execute(f"SHOW CREATE TRIGGER {_q(name)}")
            out.append(["trigger", name, cur.fetchone()[2]])
        return out

    def fingerprint(self, objects: list[list[str]]) -> list[list[str]]:
        return [[t, n, re.sub(r" AUTO_INCREMENT=\d+", "", s)] for t, n, s in objects]

    def table_of_index(self, cur: Cursor, name: str) -> str | None:
        cur.execute("SELECT table_name FROM information_schema.statistics WHERE table_schema = "
                    "DATABASE() AND index_name = %s LIMIT 1", (name,))
        row = cur.fetchone()
        return row[0] if row else None

    def drop_table(self, cur: Cursor, table: str) -> None:
        cur.execute(f"DROP TABLE IF EXISTS {_q(table)}")

    def create_objects(self, cur: Cursor, objects: list[list[str]], table: str,
                       rows: list[str]) -> None:
        for typ, _, sql in objects:
            if typ == "table":
                cur.execute(sql)
        self.restore(cur, table, {"added": [], "removed": rows}, force=False)
        cur.connection.commit()
        for typ, _, sql in objects:
            if typ == "trigger":
                cur.execute(sql)
        self.sync(cur, [table])


def _conflict(table: str, pk: list[str], row: dict[str, Any], what: str,
              undone: bool = False) -> str:
    cols = pk or list(row)[:4]
    key = ", ".join(f"{c}={row.get(c)!r}" for c in cols)
    return f"table {table} key ({key}): " + (AFTER_UNDO[what] if undone else
                                               f"{what} since the episode wrote it")
