"""PostgreSQL: the undo of one table's row change as a few set-based statements over images
parsed once (:func:`undo_checked`), and the drift check as one query (:func:`drift_rows`).

Each side of a change (``added``: post-images, ``removed``: pre-images) is sent once as a JSON
array and turned into a temporary table of typed rows next to their images
(``jsonb_array_elements`` zipped with ``jsonb_populate_recordset``: one parse, not one
``jsonb_populate_record`` call per image). Then, in the undo transaction:

1. compare-and-set and restore in one statement: ``UPDATE`` each row whose key both sides hold
   to its pre-image, only where the row still equals its post-image (``to_jsonb(row) =
   image``, the comparison the drift check makes; under READ COMMITTED the condition is
   re-checked on a row someone changed meanwhile), and ``DELETE`` the rows only the post side
   holds under the same condition. Together they must touch one row per post-image;
2. no row may exist under a key only the pre side holds (re-created by someone else);
3. ``INSERT`` the rows only the pre side holds;
4. verify by re-querying the table: one row equal to each pre-image (``to_jsonb``), none under
   a key only the post side holds.

Any count that is off rolls back to a savepoint and returns False: nothing was changed, and the
caller takes the general path (drift lines, restore, verification with lines), which names
what differs. A table without a primary key, or an undo with DDL or ``force``, always takes the
general path. Generated columns are left to the engine to compute (and verified).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from revex.runtime.effects.sqlcapture.base import PREFIX, Cursor
from revex.runtime.effects.sqlcapture.pg_columns import array

if TYPE_CHECKING:
    from revex.runtime.effects.sqlcapture.postgres import PostgresBackend

IMAGE = f"{PREFIX}_j"
"""The column holding a row's image (jsonb) next to its typed columns."""
X = f"{PREFIX}_x"
"""The alias of the user's table: a whole-row reference ``to_jsonb(x)`` would be ambiguous
next to a column named x."""


def _q(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def images_sql(t: str, ref: str) -> str:
    """A FROM item: the images of the JSON array ``ref`` zipped with their typed rows of table
    ``t`` (columns ``_revex_j`` and then the table's own)."""
    return (f"ROWS FROM (jsonb_array_elements({ref}), jsonb_populate_recordset(NULL::{t}, "
            f"{ref})) AS z({IMAGE})")


def columns(cur: Cursor, table: str) -> list[tuple[str, str, str]]:
    """(name, identity, generated) of each column of ``table``, in order."""
    cur.execute("SELECT attname, attidentity, attgenerated FROM pg_attribute WHERE attrelid = "
                "%s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                (_q(table),))
    return [tuple(r) for r in cur.fetchall()]


def _eq(key: list[str], left: str, right: str) -> str:
    return " AND ".join(f"{left}.{c} = {right}.{c}" for c in key)


def stage(cur: Cursor, table: str, pk: list[str], change: dict[str, list[str]]
          ) -> tuple[str, str]:
    """The temporary tables (post side, pre side) of ``change`` in this session, created
    unless they exist: named by a digest of the table's shape and the images, so the drift
    check before a rollback and the undo after it (on the same session) parse them once.
    Created in the caller's transaction; a rollback of it takes them away."""
    t = _q(table)
    # the table's shape too: typed rows staged before someone altered it are not reused
    cur.execute("SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' "
                "ORDER BY attnum) FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > "
                "0 AND NOT attisdropped", (t,))
    digest = hashlib.sha1(f"{table}\0{cur.fetchone()[0]}".encode())
    for side in (change["added"], change["removed"]):
        digest.update(b"\0" + array(side).encode())
    names = (f"{PREFIX}_post_{digest.hexdigest()[:20]}", f"{PREFIX}_pre_{digest.hexdigest()[:20]}")
    cur.execute("SELECT to_regclass(%s) IS NOT NULL AND to_regclass(%s) IS NOT NULL",
                tuple(f"pg_temp.{n}" for n in names))
    if cur.fetchone()[0]:
        return names
    for name, images in zip(names, (change["added"], change["removed"]), strict=True):
        cur.execute(f"DROP TABLE IF EXISTS pg_temp.{name}")
        cur.execute(f"CREATE TEMP TABLE {name} AS SELECT z.* FROM (SELECT %s::jsonb AS arr) p, "
                    f"{images_sql(t, 'p.arr')}", (array(images),))
        # without statistics the planner guesses a few rows and nests loops over 10,000
        # (of the key, which the joins use: the images' statistics cost as much again)
        cur.execute(f"ANALYZE pg_temp.{name} ({', '.join(_q(c) for c in pk)})")
    return names


def drift_rows(cur: Cursor, table: str, pk: list[str], change: dict[str, list[str]]
               ) -> list[tuple[str, bool, str]]:
    """``(image, gone, side)`` for each post-image whose row is missing (``gone``) or differs
    (side 'a'), and each pre-image under whose key, not left a row by the action, a row
    exists (side 'r'): one query over the staged images (:func:`stage`)."""
    t, key = _q(table), [_q(c) for c in pk]
    post, pre = stage(cur, table, pk, change)
    cur.execute(f"SELECT a.{IMAGE}::text, {X}.ctid IS NULL, 'a' FROM {post} a LEFT JOIN {t} {X} "
                f"ON {_eq(key, X, 'a')} WHERE {X}.ctid IS NULL OR to_jsonb({X}) <> a.{IMAGE} "
                f"UNION ALL SELECT r.{IMAGE}::text, false, 'r' FROM {pre} r JOIN {t} {X} ON "
                f"{_eq(key, X, 'r')} WHERE NOT EXISTS (SELECT 1 FROM {post} a WHERE "
                f"{_eq(key, 'a', 'r')})")
    return list(cur.fetchall())


def undo_checked(pg: PostgresBackend, cur: Cursor, table: str,
                 change: dict[str, list[str]]) -> bool:
    """Undo ``change`` on ``table`` with its compare-and-set and its verification (module
    docstring); True when done and verified, False when nothing was changed and the caller
    must take the general path."""
    if not pg._exists(cur, table):
        return False
    pk = pg.pk(cur, table)
    if not pk:
        return False
    import psycopg

    t, key = _q(table), [_q(c) for c in pk]
    added, removed = change["added"], change["removed"]
    cols = columns(cur, table)
    # a generated column is computed from the others (the verification compares it too)
    stored = [c for c, _, generated in cols if not generated]
    rest = [c for c in stored if c not in pk]
    # UPDATE cannot set an identity column GENERATED ALWAYS: delete and insert such rows
    update = bool(rest) and not any(ident == "a" for c, ident, _ in cols if c not in pk)
    cur.execute("SAVEPOINT revex_fast")
    try:
        post, pre = stage(cur, table, pk, change)
        both = update and bool(added) and bool(removed)
        not_pre = f"NOT EXISTS (SELECT 1 FROM {pre} r WHERE {_eq(key, 'a', 'r')})"
        not_post = f"NOT EXISTS (SELECT 1 FROM {post} a WHERE {_eq(key, 'a', 'r')})"
        touched = 0
        if both:  # rows under keys on both sides: compare-and-set and restore in one UPDATE
            sets = ", ".join(f"{_q(c)} = r.{_q(c)}" for c in rest)
            cur.execute(f"UPDATE {t} {X} SET {sets} FROM {post} a JOIN {pre} r ON "
                        f"{_eq(key, 'a', 'r')} WHERE {_eq(key, X, 'a')} AND to_jsonb({X}) = "
                        f"a.{IMAGE}")
            touched += cur.rowcount
        if added:
            cur.execute(f"DELETE FROM {t} {X} USING {post} a WHERE {_eq(key, X, 'a')} AND "
                        f"to_jsonb({X}) = a.{IMAGE}" + (f" AND {not_pre}" if both else ""))
            touched += cur.rowcount
        ok = touched == len(added)
        if ok and removed:  # no row under a key only the pre side holds
            cur.execute(f"SELECT EXISTS (SELECT 1 FROM {pre} r JOIN {t} {X} ON "
                        f"{_eq(key, X, 'r')}" + (f" WHERE {not_post}" if both else "") + ")")
            ok = not cur.fetchone()[0]
        if ok and removed:
            cur.execute(f"INSERT INTO {t} ({', '.join(map(_q, stored))}) OVERRIDING SYSTEM "
                        f"VALUE SELECT {', '.join('r.' + _q(c) for c in stored)} FROM {pre} r"
                        + (f" WHERE {not_post}" if both else ""))
        if ok:  # verify: re-query what is there now
            cur.execute(f"SELECT (SELECT count(*) FROM {pre} r JOIN {t} {X} ON "
                        f"{_eq(key, X, 'r')} AND to_jsonb({X}) = r.{IMAGE}), EXISTS (SELECT 1 "
                        f"FROM {post} a JOIN {t} {X} ON {_eq(key, X, 'a')} WHERE {not_pre})")
            there, left = cur.fetchone()
            ok = there == len(removed) and not left
    except psycopg.Error:
        ok = False  # e.g. no TEMP privilege, or a constraint: the general path reports it
    if not ok:
        cur.execute("ROLLBACK TO SAVEPOINT revex_fast")
        return False
    cur.execute(f"DROP TABLE pg_temp.{post}, pg_temp.{pre}")  # with the undo's COMMIT
    cur.execute("RELEASE SAVEPOINT revex_fast")
    return True
