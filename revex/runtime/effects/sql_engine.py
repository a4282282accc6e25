"""One database of an episode: its engine, the forward connection, capture and undo.

The forward connection is the SQLAlchemy Connection the agent's statements run on; a
``do_execute`` hook sends each of them through the episode's pipeline. Undo after commit runs
on a fresh connection of its own, in one transaction per action.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from revex.errors import ActionFailed, ConfigError, EpisodeClosed
from revex.runtime.effects.sql_classify import DDL, TRUNCATE, Statement, split
from revex.runtime.effects.sqlcapture import backend_for
from revex.runtime.effects.sqlcapture.base import ACTIONS, mark, net_change
from revex.runtime.effects.sqlcapture.checks import not_restored, row_drift, unverified
from revex.runtime.effects.sqlcapture.counters import Counters

if TYPE_CHECKING:
    from revex.runtime.effects.sql import SqlDatabase


def safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


class Database:
    """Capture and undo for one configured database (``name`` -> ``url``)."""

    def __init__(self, name: str, url: str, mode: str, episode_id: str) -> None:
        self.name = name
        self.url = url
        self.mode = mode
        self.episode_id = episode_id
        try:
            self.engine = create_engine(url, poolclass=NullPool)
        except (SQLAlchemyError, ImportError) as exc:
            raise ConfigError(f"database {name!r}: cannot use {safe_url(url)}: {exc}") from exc
        self.backend = backend_for(self.engine.dialect.name)
        self.backend_name = self.engine.dialect.name
        self.dbapi = self.engine.dialect.loaded_dbapi
        self.escapes_percent = self.engine.dialect.paramstyle in ("format", "pyformat")
        """The driver reads ``%`` as a placeholder: text sent with parameters has ``%%``."""
        event.listen(self.engine, "connect", self._on_connect)
        self._conn: Connection | None = None
        self._facade: SqlDatabase | None = None
        self._live: list[int] = []
        self._hooked = False
        self._pending_commit = False
        self._checks: Any = None
        """The kept connection of :meth:`_session`."""
        self.counters = Counters(self.backend)

    # ---- connections -------------------------------------------------------------------------

    def _on_connect(self, dbapi_conn: Any, record: Any) -> None:
        self.backend.connect_setup(dbapi_conn)

    def raw_connection(self) -> Any:
        """A new DBAPI connection (for undo); ConfigError if the server cannot be reached."""
        try:
            return self.engine.raw_connection()
        except DBAPIError as exc:
            raise ConfigError(f"cannot connect to database {self.name!r} at "
                              f"{safe_url(self.url)}: {exc.orig}") from exc

    def connection(self, facade: SqlDatabase) -> Connection:
        if self._conn is None:
            try:
                conn = self.engine.connect()
            except DBAPIError as exc:
                raise ConfigError(f"cannot connect to database {self.name!r} at "
                                  f"{safe_url(self.url)}: {exc.orig}") from exc
            raw = conn.connection.dbapi_connection
            assert raw is not None
            cur = raw.cursor()
            self.backend.install(cur)
            raw.commit()
            self._conn = conn
            if not self._hooked:
                event.listen(self.engine, "do_execute", self._do_execute)
                event.listen(self.engine, "do_execute_no_params", self._do_execute_no_params)
                event.listen(self.engine, "do_executemany", self._do_executemany)
                event.listen(conn, "commit", self._forget_savepoints)
                event.listen(conn, "rollback", self._forget_savepoints)
                self._hooked = True
        self._facade = facade
        return self._conn

    def _raw(self) -> Any:
        assert self._conn is not None
        return self._conn.connection.dbapi_connection

    def _forget_savepoints(self, conn: Any) -> None:
        self._live.clear()

    def commit_forward(self) -> None:
        self._flush_pending()
        if self._conn is not None:
            self._raw().commit()
            self._live.clear()
            self._rewind_pending()

    def close(self) -> None:
        self._flush_pending()
        if self._conn is not None:
            raw = self._raw()
            if self.mode == "transactional" or getattr(raw, "in_transaction", False):
                raw.rollback()
            self._live.clear()
            self._rewind_pending()
            self._conn.close()
            self._conn = None
        self._live.clear()
        if self._checks is not None:
            self._checks.close()
            self._checks = None
        self.engine.dispose()

    # ---- the execution hook ------------------------------------------------------------------

    def _do_execute(self, cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
        return self._dispatch(cursor, statement, parameters, many=False)

    def _do_execute_no_params(self, cursor: Any, statement: str, context: Any) -> bool:
        return self._dispatch(cursor, statement, None, many=False)

    def _do_executemany(self, cursor: Any, statement: str, parameters: Any,
                        context: Any) -> bool:
        return self._dispatch(cursor, statement, parameters, many=True)

    def _dispatch(self, cursor: Any, statement: str, parameters: Any, *, many: bool) -> bool:
        facade = self._facade
        if facade is None or facade._ep.status != "active":
            raise EpisodeClosed(f"database {self.name!r} belongs to an episode that is closed")
        # a format/pyformat driver given parameters turns %% into %: classify what it runs
        escaped = parameters is not None and self.escapes_percent
        stmts = split(statement, self.backend_name, escaped=escaped)
        if len(stmts) > 1 and parameters:
            raise ConfigError("parameters can only be given with a single statement; use "
                              "script() for several")
        for stmt in stmts:
            facade._run_statement(stmt, cursor, parameters if len(stmts) == 1 else None, many)
        return True

    def run(self, cursor: Any, stmt: Statement, parameters: Any, many: bool) -> None:
        """Execute ``stmt`` on the caller's cursor; ActionFailed if the database rejects it."""
        try:
            if many:
                cursor.executemany(stmt.sql, parameters)
            elif parameters is None:
                cursor.execute(stmt.sql)
            else:
                cursor.execute(stmt.sql, parameters)
        except self.dbapi.Error as exc:
            raise ActionFailed(f"database {self.name!r} rejected {stmt.shown[:200]!r}: "
                               f"{exc}") from exc

    # ---- forward path ------------------------------------------------------------------------

    def _tag(self, seq: int) -> str:
        return f"{self.episode_id}:{seq}"

    def _ddl(self, stmt: Statement) -> bool:
        return stmt.kind in DDL and not (stmt.kind == TRUNCATE
                                          and self.backend.truncate_by_trigger)

    def forward(self, cursor: Any, stmt: Statement, parameters: Any, many: bool,
                seq: int) -> dict[str, Any]:
        """Run ``stmt`` uncommitted with capture on; returns the undo information."""
        self._flush_pending()
        raw = self._raw()
        b = self.backend
        cap = raw.cursor()
        b.begin(cap, raw)
        info: dict[str, Any] = {"db": self.name, "seq": seq, "mode": self.mode}
        if self._ddl(stmt) and not b.transactional_ddl:
            # MariaDB commits DDL implicitly: snapshot now, run it in apply after the INTENT
            raw.commit()
            self._live.clear()
            info["deferred"] = b.ddl_before(cap, stmt, self._tag(seq))
            info.update(changes={}, seqs={}, _rows=0)
            return info
        if self.mode == "transactional":
            cap.execute(f"SAVEPOINT revex_{seq}")
            self._live.append(seq)
            info["savepoint"] = seq
        seqs: dict[str, list[Any]] | None = None
        tag = self._tag(seq)
        try:
            if not self._ddl(stmt):
                # DML: the backend's capture around it (PostgreSQL: a round trip on each side)
                seqs = b.open_capture(cap, tag)
                cascade = b.cascade_before(cap, stmt)
                self.run(cursor, stmt, parameters, many)
                info["_rowcount"] = cursor.rowcount
                log, after = b.close_capture(cap, tag, self.episode_id, seq)
                changes = net_change(log)
                changes.update(b.cascade_after(cap, cascade))
                self._captured(info, changes, seqs, after)
                return info
            seqs = b.sequences(cap)
            ddl = b.ddl_before(cap, stmt, tag)
            b.set_tag(cap, tag)
            if not ddl.pop("replaced", False):
                self.run(cursor, stmt, parameters, many)
                info["_rowcount"] = cursor.rowcount
            changes = net_change(b.read_log(cap, tag))
            b.set_tag(cap, None)
            info["ddl"] = b.ddl_after(cap, stmt, ddl)
            for table in (*info["ddl"].get("pre", {}), *info["ddl"].get("post", {})):
                changes.pop(table, None)
            b.sync(cap)
            self._captured(info, changes, seqs, b.sequences(cap))
            self._mark(cap, seq)
        except BaseException:
            self.abandon(seq, counters=seqs)
            raise
        return info

    def _captured(self, info: dict[str, Any], changes: dict[str, dict[str, list[str]]],
                  seqs: dict[str, list[Any]], after: dict[str, list[Any]]) -> None:
        info["seqs"] = self.counters.moved(seqs, after)
        info["changes"] = changes
        info["_rows"] = sum(len(c["added"]) + len(c["removed"]) for c in changes.values())

    def finish(self, cursor: Any, stmt: Statement, parameters: Any, many: bool,
               undo: dict[str, Any]) -> dict[str, Any]:
        """Make the statement take effect (COMMIT in durable mode). Returns extra post-state."""
        raw = self._raw()
        if "deferred" in undo:
            cap = raw.cursor()
            self.run(cursor, Statement(stmt.sql, stmt.kind, stmt.tables), parameters, many)
            post = self.backend.ddl_after(cap, stmt, undo["deferred"])
            self.backend.sync(cap)
            self._mark(cap, undo["seq"])
            raw.commit()
            return {"ddl": post}
        if self.mode == "durable":
            if self.backend_name == "sqlite" and cursor.description is not None:
                # SQLite cannot COMMIT while the caller still reads rows (RETURNING): commit
                # before the next action. A crash before that loses the statement, and the
                # missing marker row tells undo there is nothing to undo.
                self._pending_commit = True
            else:
                raw.commit()
        return {}

    def _flush_pending(self) -> None:
        if self._pending_commit and self._conn is not None:
            self._pending_commit = False
            self._raw().commit()

    def abandon(self, seq: int, counters: dict[str, list[Any]] | None = None,
                moved: dict[str, list[Any]] | None = None) -> None:
        """Roll back what the action ``seq`` did in the forward transaction, and rewind the
        counters it moved (``moved``, or a diff against ``counters``, all of them as read
        before it ran): no ROLLBACK gives back ids a statement consumed (PostgreSQL
        sequences, InnoDB AUTO_INCREMENT)."""
        raw = self._raw()
        cap = raw.cursor()
        live = seq in self._live
        if live:
            cap.execute(f"ROLLBACK TO SAVEPOINT revex_{seq}")
            self._live = [s for s in self._live if s < seq]
        else:
            raw.rollback()
            self._live.clear()
        self.backend.set_tag(raw.cursor(), None)
        if counters is not None:
            now = self.backend.sequences(cap)
            moved = {k: [counters.get(k), v] for k, v in now.items() if counters.get(k) != v}
        if moved:
            self._rewind(cap, seq, moved, live=live)
            if not live:
                raw.commit()

    # ---- markers -----------------------------------------------------------------------------

    def _mark(self, cur: Any, seq: int) -> None:
        mark(cur, self.backend.param, self.episode_id, seq)

    def _marked(self, cur: Any, seq: int) -> bool:
        p = self.backend.param
        cur.execute(f"SELECT 1 FROM {ACTIONS} WHERE episode = {p} AND seq = {p}",
                    (self.episode_id, seq))
        return cur.fetchone() is not None

    def _unmark(self, cur: Any, seq: int) -> None:
        p = self.backend.param
        cur.execute(f"DELETE FROM {ACTIONS} WHERE episode = {p} AND seq = {p}",
                    (self.episode_id, seq))

    # ---- backward path -----------------------------------------------------------------------

    def savepoint_live(self, info: dict[str, Any]) -> bool:
        return self._conn is not None and info.get("savepoint") in self._live

    def _session(self) -> Any:
        """The connection for drift checks and undos. A server backend keeps one per database
        until close (PostgreSQL must: what the check before a rollback staged is there for the
        undo after it); SQLite gets a new one each time."""
        if not self.backend.keeps_session:
            return self.raw_connection()
        if self._checks is None:
            self._checks = self.raw_connection()
        return self._checks

    def _done_with(self, conn: Any, *, failed: bool = False) -> None:
        """``conn`` (from :meth:`_session`) is not needed any more: closed unless it is the
        kept one and still sound."""
        if conn is self._checks and not failed:
            return
        if conn is self._checks:
            self._checks = None
        conn.close()

    def drift(self, info: dict[str, Any], only: set[str] | None = None) -> list[str]:
        self._flush_pending()
        conn = self._session()
        failed = True
        try:
            cur = conn.cursor()
            if not self._marked(cur, info["seq"]):
                return []
            out = []
            ddl = info.get("ddl")
            if ddl and only is not None:
                ddl = {**ddl, "post": {t: v for t, v in ddl["post"].items() if t in only},
                       "quarantined": {t: v for t, v in ddl.get("quarantined", {}).items()
                                       if t in only},
                       "pre": {t: v for t, v in ddl["pre"].items() if t in only}}
            if ddl:
                out += self.backend.ddl_drift(cur, ddl)
            changes = {t: c for t, c in info.get("changes", {}).items()
                       if only is None or t in only}
            out += row_drift(self.backend, cur, changes)[0]
            failed = False
            return out
        finally:
            if failed:
                conn.rollback()
            else:  # it only read; what it staged stays for the undo
                conn.commit()
            self._done_with(conn, failed=failed)

    def undo(self, info: dict[str, Any], *, force: bool) -> list[str]:
        """Undo one action; returns conflict lines (and changes nothing) on drift."""
        seq = info["seq"]
        self._flush_pending()
        if self.savepoint_live(info):
            cap = self._raw().cursor()
            cap.execute(f"ROLLBACK TO SAVEPOINT revex_{seq}")
            self._live = [s for s in self._live if s < seq]
            self._rewind(cap, seq, info.get("seqs") or {}, live=True)
            return []
        if self._conn is not None:
            # transactional: every newer action is undone by now, what the forward
            # transaction still holds belongs to them; durable: it holds only reads. Either
            # way its locks (MariaDB's metadata locks too) would block the undo connection.
            self._raw().rollback()
            self._live.clear()
            self._rewind_pending()
        conn = self._session()
        failed = True
        try:
            cur = conn.cursor()
            self.backend.undo_begin(cur, conn)
            if not self._marked(cur, seq):
                self.counters.restore(cur, info.get("seqs") or {})
                self.backend.undo_end(cur, conn)  # a kept session leaves as it came
                conn.commit()
                failed = False
                return []
            changes = info.get("changes", {})
            done: set[str] = set()
            if not force and not info.get("ddl"):
                # checked, restored and verified in one go where the backend can
                done = {t for t, c in changes.items() if self.backend.undo_checked(cur, t, c)}
            rest = {t: c for t, c in changes.items() if t not in done}
            if not force:
                conflicts = []
                if info.get("ddl"):
                    conflicts += self.backend.ddl_drift(cur, info["ddl"])
                lines, back = row_drift(self.backend, cur, rest)
                done |= back
                conflicts += lines
                if conflicts:
                    self.backend.undo_end(cur, conn)
                    conn.rollback()
                    failed = False
                    return conflicts
            if info.get("ddl"):
                self.backend.ddl_undo(cur, info["ddl"])
            for table, change in changes.items():
                if table not in done:
                    self.backend.restore(cur, table, change, force=force)
            # verify before UNDONE (what undo_checked did, it verified)
            problems = not_restored(self.backend, cur, {**info, "changes": rest})
            if problems:
                conn.rollback()
                raise unverified(self.backend, self.name, seq, problems)
            self._unmark(cur, seq)
            if not self.backend.sequence_is_ddl:
                self.counters.restore(cur, info.get("seqs") or {})
            self.backend.undo_end(cur, conn)
            conn.commit()
            if self.backend.sequence_is_ddl:  # commits implicitly: after the rows are back
                self.counters.restore(cur, info.get("seqs") or {})
                conn.commit()
            failed = False
        except self.dbapi.Error as exc:
            conn.rollback()
            raise ActionFailed(f"undo of action #{seq} on database {self.name!r} failed: "
                               f"{exc}") from exc
        finally:
            self._done_with(conn, failed=failed)
        return []

    def _rewind(self, cur: Any, seq: int, seqs: dict[str, Any], *, live: bool) -> None:
        """Rewind the counters action ``seq`` moved; ``live``: ``cur`` is the forward
        transaction, which may still hold earlier actions' work."""
        if not live or not self.counters.defer(seq, seqs):
            self.counters.restore(cur, seqs)
        elif not self._live:  # nothing of the episode is left in it: end it, rewind now
            self._raw().rollback()
            self._rewind_pending()

    def _rewind_pending(self) -> None:
        """The forward transaction has just ended: rewind what waited for that."""
        if self._conn is not None and self.counters.flush(self._raw().cursor()):
            self._raw().commit()

    def probe(self, info: dict[str, Any]) -> dict[str, Any] | None:
        """After a crash: the post-state if the action committed, else None."""
        conn = self.raw_connection()
        try:
            cur = conn.cursor()
            if self._marked(cur, info["seq"]):
                if "deferred" in info:  # DDL ran and was marked; its post-state was not kept
                    return {"ddl": self.backend.ddl_after(cur, None, info["deferred"]),
                            "probed": True}
                return {"probed": True}
            if "deferred" in info:
                before = info["deferred"]
                post = self.backend.ddl_after(cur, None, before)
                if post["post"] != {t: s["objects"] for t, s in before["pre"].items()}:
                    self._mark(cur, info["seq"])
                    conn.commit()
                    return {"ddl": post, "probed": True}
            return None
        finally:
            conn.close()
