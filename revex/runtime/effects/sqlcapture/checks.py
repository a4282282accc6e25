"""The checks around an undo, the same on every backend: drift before it (compare-and-set on
the post-images) and verification after it (the pre-state is back), both set-based per table
through :meth:`Backend.drift` and, for DDL, :meth:`Backend.ddl_drift` /
:meth:`Backend.shape_drift`.
"""

from __future__ import annotations

from typing import Any

from revex.errors import ConflictError
from revex.runtime.effects.sqlcapture.base import Backend, Cursor


def inverse(change: dict[str, list[str]]) -> dict[str, list[str]]:
    """The change that undoes ``change``: its pre-images present, its post-images gone."""
    return {"added": change["removed"], "removed": change["added"]}


def row_drift(backend: Backend, cur: Cursor, changes: dict[str, Any]
              ) -> tuple[list[str], set[str]]:
    """Conflict lines, and the tables already back in their pre-state (an undo that a crash
    interrupted after MariaDB committed part of it implicitly)."""
    out: list[str] = []
    done: set[str] = set()
    for table, change in changes.items():
        lines = backend.drift(cur, table, change)
        if lines and not backend.drift(cur, table, inverse(change)):
            done.add(table)
        else:
            out += lines
    return out, done


def not_restored(backend: Backend, cur: Cursor, info: dict[str, Any]) -> list[str]:
    """After an undo, before its commit: re-query the rows it put back and took away and, for
    DDL, each table's shape and rows; a line per table and key not in its pre-state."""
    out = backend.shape_drift(cur, info["ddl"]) if info.get("ddl") else []
    for table, change in info.get("changes", {}).items():
        out += backend.drift(cur, table, inverse(change), undone=True)
    return out


def unverified(backend: Backend, db: str, seq: int, problems: list[str]) -> ConflictError:
    """The error for an undo whose result was not its action's pre-state."""
    kept = ("it was rolled back" if backend.transactional_ddl else
            "it was rolled back as far as MariaDB allows (DDL and trigger re-creation commit "
            "implicitly)")
    return ConflictError(
        f"undo of action #{seq} on database {db!r} did not bring back the pre-state, so it is "
        f"not marked undone; {kept}. Something rewrites these rows or tables (a trigger, a "
        "rule, a changed column type?):\n  " + "\n  ".join(problems[:20]), problems)
