"""DDL undo by snapshot and rebuild, for engines whose CREATE text can be read back (SQLite's
``sqlite_master``, MariaDB's ``SHOW CREATE TABLE``).

Before DDL runs, every table it names (an index's table for CREATE/DROP INDEX) is snapshotted:
its objects (CREATE text of table, indexes, triggers) and its rows. After it runs, the objects of
those tables and of any new table are kept as the post-state. Undo checks that post-state
(compare-and-set), drops those tables and rebuilds the snapshotted ones with their rows.
"""

from __future__ import annotations

from typing import Any

from revex.runtime.effects.sqlcapture.base import Cursor


class Rebuilder:
    """Mixin: generic DDL capture for backends that provide the primitives below."""

    def tables(self, cur: Cursor) -> list[str]:
        raise NotImplementedError

    def snapshot_rows(self, cur: Cursor, table: str) -> list[str]:
        raise NotImplementedError

    def objects(self, cur: Cursor, table: str) -> list[list[str]]:
        raise NotImplementedError

    def fingerprint(self, objects: list[list[str]]) -> list[list[str]]:
        """What must be equal for compare-and-set (MariaDB drops the AUTO_INCREMENT value)."""
        return objects

    def table_of_index(self, cur: Cursor, name: str) -> str | None:
        raise NotImplementedError

    def drop_table(self, cur: Cursor, table: str) -> None:
        raise NotImplementedError

    def create_objects(self, cur: Cursor, objects: list[list[str]], table: str,
                       rows: list[str]) -> None:
        raise NotImplementedError

    def _names(self, cur: Cursor, stmt: Any) -> set[str]:
        names = set()
        for name in (*stmt.tables, *stmt.names):
            owner = self.table_of_index(cur, name)
            names.add(owner or name)
        return names

    def ddl_before(self, cur: Cursor, stmt: Any, tag: str) -> dict[str, Any]:
        existing = self.tables(cur)
        names = self._names(cur, stmt)
        pre = {t: {"objects": self.objects(cur, t), "rows": self.snapshot_rows(cur, t)}
               for t in sorted(names) if t in existing}
        return {"existing": existing, "names": sorted(names), "pre": pre}

    def ddl_after(self, cur: Cursor, stmt: Any, before: dict[str, Any]) -> dict[str, Any]:
        existing = self.tables(cur)
        affected = set(before["names"]) | (set(existing) - set(before["existing"]))
        post = {t: self.objects(cur, t) for t in sorted(affected) if t in existing}
        return {"pre": before["pre"], "post": post}

    def ddl_drift(self, cur: Cursor, info: dict[str, Any]) -> list[str]:
        """Tables in neither the post-state nor the pre-state. A missing table, or one back
        in its pre-state, is an undo in progress (MariaDB commits each DDL step): the
        rebuild is redone from the snapshot, which is idempotent."""
        out = []
        existing = set(self.tables(cur))
        for table in sorted({*info["post"], *info["pre"]}):
            if table not in existing:
                continue
            now = self.fingerprint(self.objects(cur, table))
            post = info["post"].get(table)
            pre = info["pre"].get(table)
            if post is not None and now == self.fingerprint(post):
                continue
            if pre is not None and _table(now) == _table(self.fingerprint(pre["objects"])):
                continue  # rebuilt (perhaps without its triggers yet): redone from the snapshot
            out.append(f"table {table}: schema changed since the episode's DDL"
                       if post is not None else
                       f"table {table}: re-created since the episode dropped it")
        return out

    def shape_drift(self, cur: Cursor, info: dict[str, Any]) -> list[str]:
        """After :meth:`ddl_undo`: each snapshotted table has its objects and rows again,
        and a table the DDL created is gone."""
        out = []
        existing = set(self.tables(cur))
        for table in info["post"]:
            if table not in info["pre"] and table in existing:
                out.append(f"table {table}: still exists after undoing its creation")
        for table, snap in info["pre"].items():
            if table not in existing:
                out.append(f"table {table}: missing after undo")
            elif self.fingerprint(self.objects(cur, table)) != self.fingerprint(
                    snap["objects"]):
                out.append(f"table {table}: schema differs from before the episode's DDL "
                           "after undo")
            elif sorted(self.snapshot_rows(cur, table)) != sorted(snap["rows"]):
                out.append(f"table {table}: rows differ from before the episode's DDL "
                           "after undo")
        return out

    def ddl_undo(self, cur: Cursor, info: dict[str, Any]) -> None:
        for table in info["post"]:
            self.drop_table(cur, table)
        for table, snap in info["pre"].items():
            self.drop_table(cur, table)
            self.create_objects(cur, snap["objects"], table, snap["rows"])


def _table(objects: list[list[str]]) -> list[list[str]]:
    return [o for o in objects if o[0] == "table"]
