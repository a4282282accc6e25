"""The SQL effect: every statement an episode sends to a database is one action.

``ep.sql("app")`` returns a :class:`SqlDatabase`. Its ``execute``/``executemany``/``script``/
``query`` and any Core or ORM code run on its ``.connection`` reach the driver through one
SQLAlchemy ``do_execute`` hook, which splits the text with sqlglot and sends each statement
through the episode's pipeline (:meth:`Episode._act`)::

    classify ─► policy ─► prepare: BEGIN [SAVEPOINT], run the statement with capture on,
                                   read the row images, insert the action's marker row
              ─► journal INTENT (the images) ─► apply: COMMIT (durable) ─► journal DONE

Undo (see :class:`SqlEffect`): inside the episode's still-open transaction it is ROLLBACK TO
SAVEPOINT; otherwise, in one database transaction: if the marker row is gone, the statement
never committed (or was already undone) and there is nothing to do; else compare-and-set the
post-images, put the pre-images back, re-query what was put back and taken away (and for DDL
the table's shape) and, only if it is the pre-state, delete the marker and commit (a mismatch
is a ConflictError); then rewind the counters the statement moved.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from revex.errors import ConfigError, ConflictError, PolicyViolation
from revex.runtime.effects.base import EffectContext, Plan, UndoItem
from revex.runtime.effects.sql_classify import Statement, policy_attrs, split
from revex.runtime.effects.sql_engine import Database
from revex.runtime.journal import Record

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Row

    from revex.runtime.episode import Episode

MODES = ("durable", "transactional")


def check_databases(databases: Any, mode: Any) -> dict[str, Any]:
    """Validate the ``databases=`` and ``sql_mode=`` episode options; returns config entries.

    Raises ConfigError naming the bad name or URL.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if mode not in MODES:
        raise ConfigError(f"sql_mode must be 'durable' or 'transactional', not {mode!r}")
    if not isinstance(databases, dict):
        raise ConfigError("databases must be a dict of name -> SQLAlchemy URL, e.g. "
                          "{'app': 'sqlite:///app.db'}")
    urls = {}
    for name, url in databases.items():
        if not isinstance(name, str) or not name:
            raise ConfigError(f"database names must be non-empty strings, not {name!r}")
        try:
            parsed = make_url(str(url))
        except ArgumentError as exc:
            raise ConfigError(f"database {name!r}: {url!r} is not a SQLAlchemy URL "
                              "(expected e.g. sqlite:///app.db or "
                              "postgresql+psycopg://user@host/db)") from exc
        if parsed.get_backend_name() not in ("sqlite", "postgresql", "mysql", "mariadb"):
            raise ConfigError(f"database {name!r}: revex supports sqlite, postgresql and "
                              f"mysql/mariadb URLs, not {parsed.get_backend_name()!r}")
        urls[name] = parsed.render_as_string(hide_password=False)
    return {"databases": urls, "sql_mode": mode}


def redact_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with database passwords hidden, for the journal and the audit log (the
    episodes index keeps them: undo from a new process needs them)."""
    from sqlalchemy.engine import make_url

    if not config.get("databases"):
        return config
    hide = {n: make_url(u).render_as_string(hide_password=True)
            for n, u in config["databases"].items()}
    forks = [make_url(u).render_as_string(hide_password=True)
             for u in config.get("sql_forks", ())]
    return {**config, "databases": hide, **({"sql_forks": forks} if forks else {})}


class SqlEffect:
    """Plans SQL actions for one episode and undoes them (also from a new process)."""

    def __init__(self, ctx: EffectContext) -> None:
        self.episode_id = ctx.episode_id
        self.urls: dict[str, str] = dict(ctx.config.get("databases") or {})
        self.mode: str = ctx.config.get("sql_mode", "durable")
        self._dbs: dict[str, Database] = {}

    def database(self, name: str) -> Database:
        """The database called ``name``; ConfigError for an unknown name or unreachable URL."""
        if name not in self._dbs:
            if name not in self.urls:
                known = ", ".join(sorted(self.urls)) or "none"
                raise ConfigError(f"no database named {name!r} in this episode (configured: "
                                  f"{known}); pass databases={{{name!r}: URL}} to rt.episode")
            self._dbs[name] = Database(name, self.urls[name], self.mode, self.episode_id)
        return self._dbs[name]

    def close(self) -> None:
        for db in self._dbs.values():
            db.close()
        self._dbs.clear()

    def commit(self) -> None:
        """The episode was committed: commit each database's open transaction."""
        for db in self._dbs.values():
            db.commit_forward()

    # ---- plans -------------------------------------------------------------------------------

    def plan(self, db: Database, ep: Episode, stmt: Statement, cursor: Any,
             parameters: Any, many: bool) -> Plan:
        attrs = policy_attrs(stmt)
        params: dict[str, Any] = {"db": db.name, "statement": attrs["statement"],
                                  "tables": list(stmt.tables), "sql": stmt.shown[:4000]}
        if many:
            params["batch"] = len(parameters)
        if not stmt.writes:
            def read(_: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
                db.run(cursor, stmt, parameters, many)
                return None, {"rows": max(cursor.rowcount, 0)}
            return Plan(kind="sql.query", target=db.name, attrs=attrs, params=params,
                        apply=read, read_only=True)
        seq = ep._action_seq
        cost: dict[str, float] = {"rows_changed": 0}
        state: dict[str, Any] = {}

        def prepare() -> dict[str, Any]:
            undo = db.forward(cursor, stmt, parameters, many, seq)
            rows = undo.pop("_rows", 0)
            state["rowcount"] = undo.pop("_rowcount", -1)
            cost["rows_changed"] = rows
            over = ep._rt.engine.over_quota(ep._used, {"rows_changed": rows})
            if over is not None:
                db.abandon(seq, moved=undo.get("seqs"))
                raise PolicyViolation(f"sql.execute {db.name!r} refused: episode quota "
                                      f"exceeded ({over})", rule="quota",
                                      action_kind="sql.execute", target=db.name)
            return undo

        def apply(undo: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            extra = db.finish(cursor, stmt, parameters, many, undo)
            count = state.get("rowcount", -1)
            return count, {"rows": count if count >= 0 else int(cost["rows_changed"]), **extra}

        def cleanup(undo: dict[str, Any]) -> None:
            db.abandon(seq, moved=undo.get("seqs"))

        return Plan(kind="sql.execute", target=db.name, attrs=attrs, params=params,
                    cost=cost, prepare=prepare, apply=apply, cleanup=cleanup)

    # ---- backward half -----------------------------------------------------------------------

    def check_undo(self, items: Sequence[UndoItem]) -> list[str]:
        """Drift on every row any of ``items`` touched, checked before anything is undone.

        For each table the row changes of all its actions are composed (oldest first) into the
        net change the episode made, so a row only an older action touched is checked too. A
        table with DDL among its actions is checked against its newest action.
        """
        out: list[str] = []
        by_table: dict[tuple[str, str], list[dict[str, Any]]] = {}
        newest: dict[tuple[str, str], UndoItem] = {}
        with_ddl: set[tuple[str, str]] = set()
        for item in items:  # newest first
            info = _info(item)
            if self.database(info["db"]).savepoint_live(info):
                continue
            for table in _touched(info):
                key = (info["db"], table)
                by_table.setdefault(key, []).append(info)
                newest.setdefault(key, item)
                if info.get("ddl"):
                    with_ddl.add(key)
        for (name, table), infos in by_table.items():
            info = infos[0]
            if len(infos) > 1 and (name, table) not in with_ddl:
                net = _compose([i.get("changes", {}).get(table) for i in reversed(infos)])
                info = {**info, "changes": {table: net}}
            lines = self.database(name).drift(info, only={table})
            out.extend(f"{newest[(name, table)].describe()}: {line}" for line in lines)
        return out

    def undo(self, item: UndoItem, *, force: bool) -> None:
        info = _info(item)
        try:
            conflicts = self.database(info["db"]).undo(info, force=force)
        except ConflictError as exc:  # the undo ran but did not verify
            raise ConflictError(f"{item.describe()}: {exc}", exc.conflicts) from None
        if conflicts:
            raise ConflictError(f"{item.describe()}: target changed since; nothing was undone "
                                "(force=True overwrites):\n  " + "\n  ".join(conflicts[:20]),
                                conflicts)

    def resolve_intent(self, intent: Record) -> dict[str, Any] | None:
        info = intent.undo
        if not info.get("db") or info["db"] not in self.urls:
            return None
        return self.database(info["db"]).probe(info)


def _compose(changes: Sequence[dict[str, list[str]] | None]) -> dict[str, list[str]]:
    """The net change of several row changes of one table, oldest first, as multisets."""
    present: Counter[str] = Counter()
    absent: Counter[str] = Counter()
    for change in changes:
        if not change:
            continue
        for image in change["removed"]:
            if present[image]:
                present[image] -= 1
            else:
                absent[image] += 1
        for image in change["added"]:
            if absent[image]:
                absent[image] -= 1
            else:
                present[image] += 1
    return {"removed": list((+absent).elements()), "added": list((+present).elements())}


def _info(item: UndoItem) -> dict[str, Any]:
    """The undo information of ``item``; DDL run after the INTENT (MariaDB) left its
    post-state in the DONE record."""
    info = dict(item.undo_info)
    if "ddl" in item.post:
        info["ddl"] = item.post["ddl"]
    return info


def _touched(info: dict[str, Any]) -> Iterable[str]:
    yield from info.get("changes", {})
    ddl = info.get("ddl") or {}
    yield from ddl.get("post", {})
    yield from ddl.get("pre", {})


class SqlDatabase:
    """``ep.sql(name)``: one database of an episode. Every statement is a journaled action.

    Raises PolicyViolation (refused, journaled DENIED), ActionFailed (the database rejected
    the statement; whatever it did was rolled back; the driver error is chained) and
    EpisodeClosed.
    """

    def __init__(self, ep: Episode, db: Database) -> None:
        self._ep = ep
        self._db = db

    @property
    def name(self) -> str:
        return self._db.name

    @property
    def connection(self) -> Connection:
        """A SQLAlchemy Connection whose every statement goes through the pipeline."""
        return self._db.connection(self)

    def _run_statement(self, stmt: Statement, cursor: Any, parameters: Any, many: bool) -> Any:
        effect = self._ep._effect("sql")
        assert isinstance(effect, SqlEffect)
        kind = "sql.execute" if stmt.writes else "sql.query"
        return self._ep._act(
            lambda: effect.plan(self._db, self._ep, stmt, cursor, parameters, many),
            kind, self._db.name)

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> int:
        """Run one statement (``:name`` placeholders); returns the rows it changed."""
        from sqlalchemy import text

        result = self.connection.execute(text(sql), params or {})
        return int(result.rowcount)

    def executemany(self, sql: str, rows: Sequence[dict[str, Any]]) -> int:
        """Run one statement once per element of ``rows`` as one action; returns rows changed."""
        from sqlalchemy import text

        if not rows:
            return 0
        result = self.connection.execute(text(sql), list(rows))
        return int(result.rowcount)

    def script(self, sql: str) -> None:
        """Run several statements (split by the parser); each is its own action."""
        for stmt in split(sql, self._db.backend_name):
            # exec_driver_sql passes (empty) parameters: a format/pyformat driver then reads
            # % as a placeholder, so the text as written is escaped for it
            text = stmt.sql.replace("%", "%%") if self._db.escapes_percent else stmt.sql
            self.connection.exec_driver_sql(text)

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[Row[Any]]:
        """Run a read and return its rows."""
        from sqlalchemy import text

        return list(self.connection.execute(text(sql), params or {}).all())


__all__ = ["MODES", "SqlDatabase", "SqlEffect", "check_databases", "redact_config"]
