"""PostgreSQL: put a table back in the shape its catalog snapshot recorded before a DDL action
(:func:`revert_table`): its columns in their order, types, defaults, constraints, indexes and
comments, and the values of columns the DDL dropped or retyped.

PostgreSQL cannot reorder columns, and ADD COLUMN appends: a column an episode dropped would
come back at the end, so ``SELECT *`` and positional ``INSERT ... VALUES`` would differ. To
restore the order, each column that must follow it is moved to the end too, in the original
order: a copy is added, filled, the original dropped and the copy renamed. The table keeps its
identity (OID), so views on other columns, triggers, grants and the table's comment stay.

What hangs on a moved column is carried over: its type, collation, default, NOT NULL and
comment, the sequence it owns (``serial``), and the foreign keys that reference it (other
tables' keys are dropped first and re-added once this table's own keys are back). The table's
own indexes and constraints come back from its snapshot. A column that a view uses, an
identity or a generated column cannot be moved this way: ActionFailed names it (nothing is
changed; the undo transaction is rolled back).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from revex.errors import ActionFailed
from revex.runtime.effects.sqlcapture.base import PREFIX, Cursor

if TYPE_CHECKING:
    from revex.runtime.effects.sqlcapture.postgres import PostgresBackend

_MOVING = f"{PREFIX}_moving"


def _q(ident: str) -> str:
    return '"' + ident.replace('"', '""') + '"'


def array(images: Iterable[str]) -> str:
    """A JSON array of row images (for ``jsonb_populate_recordset``)."""
    return "[" + ",".join(images) + "]"


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def revert_table(pg: PostgresBackend, cur: Cursor, table: str, was: dict[str, Any],
                 now: dict[str, Any]) -> list[list[str]]:
    """Put ``table`` back from its post-DDL shape ``now`` to ``was``; returns other
    tables' foreign keys that had to be dropped, for the caller to re-add last."""
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
    # lost columns are added where they were: the columns after them move to the end
    foreign = reorder(cur, table, was)
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
        _put_back_columns(pg, cur, table, lost + retyped, was["rows"])
    for name in lost + retyped:
        if old_cols[name][2]:
            cur.execute(f"ALTER TABLE {t} ALTER COLUMN {_q(name)} SET NOT NULL")
    old_cons = was.get("constraints", {})
    new_cons = pg._catalog(cur, table)["constraints"]  # moved columns lost theirs
    for name, definition in new_cons.items():
        if old_cons.get(name) != definition:
            cur.execute(f"ALTER TABLE {t} DROP CONSTRAINT IF EXISTS {_q(name)}")
    # keys before the foreign keys that may reference them (a table referencing itself)
    for name, definition in sorted(old_cons.items(),
                                   key=lambda c: c[1].startswith("FOREIGN KEY")):
        if new_cons.get(name) != definition:
            cur.execute(f"ALTER TABLE {t} ADD CONSTRAINT {_q(name)} {definition}")
    set_comments(cur, table, was)
    current = pg._catalog(cur, table)["indexes"]
    for name, definition in current.items():
        if was["indexes"].get(name) != definition:
            cur.execute(f"DROP INDEX IF EXISTS {_q(name)}")
    for name, definition in was["indexes"].items():
        if current.get(name) != definition:
            cur.execute(definition)
    return foreign


def _put_back_columns(pg: PostgresBackend, cur: Cursor, table: str, columns: list[str],
                      rows: list[str]) -> None:
    t, pk = _q(table), pg.pk(cur, table)
    if pk:
        sets = ", ".join(f"{_q(c)} = r.{_q(c)}" for c in columns)
        on = " AND ".join(f"_revex_x.{_q(c)} = r.{_q(c)}" for c in pk)
        cur.execute(f"UPDATE {t} _revex_x SET {sets} FROM jsonb_populate_recordset("
                    f"NULL::{t}, %s::jsonb) r WHERE {on}", (array(rows),))
    else:
        cur.execute(f"DELETE FROM {t}")
        cur.execute(f"INSERT INTO {t} SELECT * FROM jsonb_populate_recordset("
                    f"NULL::{t}, %s::jsonb)", (array(rows),))


def column_extras(cur: Cursor, table: str) -> dict[str, dict[str, str]]:
    """``{"comments": {column: text}, "collations": {column: name}}`` of ``table``: what
    ``format_type`` does not say about its columns (non-default collations only)."""
    cur.execute("SELECT a.attname, col_description(a.attrelid, a.attnum), CASE WHEN "
                "a.attcollation <> ty.typcollation THEN (SELECT quote_ident(n.nspname) || '.' "
                "|| quote_ident(c.collname) FROM pg_collation c JOIN pg_namespace n ON n.oid "
                "= c.collnamespace WHERE c.oid = a.attcollation) END FROM pg_attribute a JOIN "
                "pg_type ty ON ty.oid = a.atttypid WHERE a.attrelid = %s::regclass AND "
                "a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum", (_q(table),))
    comments, collations = {}, {}
    for name, comment, collation in cur.fetchall():
        if comment is not None:
            comments[name] = comment
        if collation is not None:
            collations[name] = collation
    return {"comments": comments, "collations": collations}


def current_order(cur: Cursor, table: str) -> list[str]:
    cur.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
                "AND NOT attisdropped ORDER BY attnum", (_q(table),))
    return [r[0] for r in cur.fetchall()]


def reorder(cur: Cursor, table: str, was: dict[str, Any]) -> list[list[str]]:
    """Give ``table`` the columns of its snapshot ``was``, in its order: columns it lacks are
    added (type, collation, default; NOT NULL and their values are the caller's), columns out
    of place are moved to the end in order. Returns the foreign keys of other tables that were
    dropped on the way, ``[table, name, definition]``, for the caller to re-add.

    Raises ActionFailed for a column that cannot be moved (see the module docstring).
    """
    wanted = [c[0] for c in was["columns"]]
    defs = {c[0]: c for c in was["columns"]}
    collations = was.get("collations", {})
    now = current_order(cur, table)
    start = 0
    while start < min(len(now), len(wanted)) and now[start] == wanted[start]:
        start += 1
    dropped_fks: list[list[str]] = []
    t = _q(table)
    for name in wanted[start:]:
        if name in now:
            dropped_fks += _move_to_end(cur, table, name)
            continue
        _, typ, _notnull, default = defs[name]
        collate = f" COLLATE {collations[name]}" if name in collations else ""
        cur.execute(f"ALTER TABLE {t} ADD COLUMN {_q(name)} {typ}{collate}"
                    + (f" DEFAULT {default}" if default else ""))
    return dropped_fks


def _move_to_end(cur: Cursor, table: str, name: str) -> list[list[str]]:
    t, c = _q(table), _q(name)
    cur.execute("SELECT a.attnum, format_type(a.atttypid, a.atttypmod), a.attnotnull, "
                "pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated FROM "
                "pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = "
                "a.attnum WHERE a.attrelid = %s::regclass AND a.attname = %s", (t, name))
    attnum, typ, notnull, default, identity, generated = cur.fetchone()
    if identity or generated:
        kind = "an identity" if identity else "a generated"
        raise ActionFailed(f"cannot put the columns of table {table} back in their order: "
                           f"column {name} is {kind} column, which revex cannot move")
    cur.execute("SELECT DISTINCT v.oid::regclass::text FROM pg_depend d JOIN pg_rewrite r ON "
                "r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class WHERE d.classid = "
                "'pg_rewrite'::regclass AND d.refobjid = %s::regclass AND d.refobjsubid = %s "
                "AND v.oid <> %s::regclass ORDER BY 1", (t, attnum, t))
    views = [r[0] for r in cur.fetchall()]
    if views:
        raise ActionFailed(f"cannot put the columns of table {table} back in their order: "
                           f"view(s) {', '.join(views)} use column {name}; drop them, undo, "
                           "and create them again")
    extras = column_extras(cur, table)
    cur.execute("SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid), "
                "conrelid = %s::regclass FROM pg_constraint WHERE contype = 'f' AND confrelid "
                "= %s::regclass AND %s = ANY(confkey) ORDER BY 1, 2", (t, t, attnum))
    fks = cur.fetchall()
    for owner, con, _, _ in fks:
        cur.execute(f"ALTER TABLE {owner} DROP CONSTRAINT {_q(con)}")
    cur.execute("SELECT d.objid::regclass::text FROM pg_depend d JOIN pg_class s ON s.oid = "
                "d.objid WHERE d.classid = 'pg_class'::regclass AND d.refobjid = %s::regclass "
                "AND d.refobjsubid = %s AND d.deptype = 'a' AND s.relkind = 'S'", (t, attnum))
    owned = [r[0] for r in cur.fetchall()]
    for seq in owned:  # dropping the column would drop the sequence it owns
        cur.execute(f"ALTER SEQUENCE {seq} OWNED BY NONE")
    collation = extras["collations"].get(name)
    cur.execute(f"ALTER TABLE {t} ADD COLUMN {_MOVING} {typ}"
                + (f" COLLATE {collation}" if collation else ""))
    cur.execute(f"UPDATE {t} SET {_MOVING} = {c}")
    cur.execute(f"ALTER TABLE {t} DROP COLUMN {c}")
    cur.execute(f"ALTER TABLE {t} RENAME COLUMN {_MOVING} TO {c}")
    if default:
        cur.execute(f"ALTER TABLE {t} ALTER COLUMN {c} SET DEFAULT {default}")
    if notnull:
        cur.execute(f"ALTER TABLE {t} ALTER COLUMN {c} SET NOT NULL")
    if name in extras["comments"]:
        cur.execute(f"COMMENT ON COLUMN {t}.{c} IS {_lit(extras['comments'][name])}")
    for seq in owned:
        cur.execute(f"ALTER SEQUENCE {seq} OWNED BY {t}.{c}")
    # the table's own keys come back from its snapshot; other tables' after them
    return [[owner, con, definition] for owner, con, definition, own in fks if not own]


def set_comments(cur: Cursor, table: str, was: dict[str, Any]) -> None:
    """Column comments as in the snapshot ``was`` (snapshots older than this have none)."""
    if "comments" not in was:
        return
    now = column_extras(cur, table)["comments"]
    for name in current_order(cur, table):
        if now.get(name) != was["comments"].get(name):
            text = was["comments"].get(name)
            cur.execute(f"COMMENT ON COLUMN {_q(table)}.{_q(name)} IS "
                        + (_lit(text) if text is not None else "NULL"))
