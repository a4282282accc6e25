"""The connection that drift checks and undos of a server database run on (issue 15): one per
database, kept until the episode's database closes, and left by every undo as it came (a new
PyMySQL connection alone costs 20-25 ms: most of a small MariaDB rollback used to be connects).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sql_cases import committed_episode, drift_then, run_sql
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from revex.errors import ConflictError
from revex.runtime.effects.sql_dump import canonical_dump
from revex.runtime.effects.sql_engine import Database
from revex.runtime.runtime import Runtime


def _count_connects(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    connect = Database.raw_connection

    def counted(self: Database) -> Any:
        calls.append(1)
        return connect(self)
    monkeypatch.setattr(Database, "raw_connection", counted)
    return calls


@pytest.mark.parametrize("server", ["pg_url", "mysql_url"])
def test_checks_and_undos_of_a_server_database_share_one_connection(
        request: pytest.FixtureRequest, server: str, state_dir: Path, workspace: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    url: str = request.getfixturevalue(server)
    run_sql(url, "CREATE TABLE t (id INT PRIMARY KEY, v INT)",
            "INSERT INTO t VALUES (1, 0), (2, 0)")
    before = canonical_dump(url)
    with Runtime(state_dir, policy="permissive", audit=None) as rt:
        episode = committed_episode(rt, url, workspace, "UPDATE t SET v = 1 WHERE id = 1",
                                    "UPDATE t SET v = 2 WHERE id = 2", "DELETE FROM t")
        connects = _count_connects(monkeypatch)
        assert rt.undo(episode) == 3
    assert canonical_dump(url) == before
    assert len(connects) == 1  # the drift check before and three undos, each checked after


def test_sqlite_checks_open_the_file_anew(sqlite_url: str, state_dir: Path, workspace: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A SQLite file may be replaced between two undos: each check opens what is there now."""
    run_sql(sqlite_url, "CREATE TABLE t (id INT PRIMARY KEY, v INT)",
            "INSERT INTO t VALUES (1, 0)")
    with Runtime(state_dir, policy="permissive", audit=None) as rt:
        episode = committed_episode(rt, sqlite_url, workspace, "UPDATE t SET v = 1",
                                    "UPDATE t SET v = 2")
        connects = _count_connects(monkeypatch)
        assert rt.undo(episode) == 2
    assert len(connects) >= 3


def test_a_refused_mariadb_undo_leaves_the_kept_session_as_it_came(
        mysql_url: str, state_dir: Path, workspace: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An undo turns foreign key checks off on its session; refused for drift it finds in its
    own transaction, it turns them back on before the kept session serves the next check."""
    run_sql(mysql_url, "CREATE TABLE t (id INT PRIMARY KEY, v INT)",
            "INSERT INTO t VALUES (1, 0)")
    with Runtime(state_dir, policy="permissive", audit=None) as rt, \
            rt.episode(workspace=workspace, databases={"app": mysql_url}) as ep:
        ep.sql("app").execute("UPDATE t SET v = 1")
        # someone else, after the check before the rollback, before the undo
        drift_then(monkeypatch, lambda: run_sql(mysql_url, "UPDATE t SET v = 7"))
        with pytest.raises(ConflictError, match="changed since the episode wrote it"):
            ep.rollback()
        kept = ep.sql("app")._db._checks
        assert kept is not None
        cur = kept.cursor()
        cur.execute("SELECT @@session.foreign_key_checks")
        assert cur.fetchone()[0] == 1
        kept.rollback()
        monkeypatch.undo()
        run_sql(mysql_url, "UPDATE t SET v = 1")  # the drift goes away: the undo goes through
        ep.rollback()
    engine = create_engine(mysql_url, poolclass=NullPool)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT v FROM t")).scalar() == 0
    engine.dispose()


def _triggers(url: str) -> list[str]:
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as conn:
        names = [r[0] for r in conn.execute(text(
            "SELECT trigger_name FROM information_schema.triggers WHERE trigger_schema = "
            "DATABASE() AND trigger_name NOT LIKE '\\_revex%' ORDER BY 1"))]
    engine.dispose()
    return names


def _audited(url: str) -> None:
    run_sql(url, "CREATE TABLE t (id INT PRIMARY KEY, v INT)",
            "CREATE TABLE audit (msg VARCHAR(40))",
            "CREATE TRIGGER t_audit AFTER INSERT ON t FOR EACH ROW "
            "INSERT INTO audit VALUES (CONCAT('new ', NEW.id))",
            "INSERT INTO t VALUES (1, 0), (2, 0)")


def test_mariadb_triggers_an_undo_dropped_come_back_after_its_session_died(
        mysql_url: str, state_dir: Path, workspace: Path) -> None:
    """An undo drops the table's own triggers while it puts rows back (MariaDB cannot disable
    them) and re-creates them after: both commit implicitly. A session that dies in between
    (here: it holds and drops them, then disconnects, as a killed process does) leaves them
    held; the next undo on the database re-creates them before anything else."""
    from revex.runtime.effects.sqlcapture.mysql import MySQLBackend

    _audited(mysql_url)
    with Runtime(state_dir, policy="permissive", audit=None) as rt:
        episode = committed_episode(rt, mysql_url, workspace, "DELETE FROM t WHERE id = 2")
        engine = create_engine(mysql_url, poolclass=NullPool)
        dead = engine.raw_connection()
        assert MySQLBackend()._user_triggers(dead.cursor(), "t")  # held and dropped
        dead.close()  # the session is gone before it re-created them
        assert _triggers(mysql_url) == []
        assert rt.undo(episode) == 1
    assert _triggers(mysql_url) == ["t_audit"]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM _revex_held_triggers")).scalar() == 0
        # the row came back without firing the user's trigger (2 rows: the set-up's inserts)
        assert conn.execute(text("SELECT COUNT(*) FROM audit")).scalar() == 2
        assert conn.execute(text("SELECT COUNT(*) FROM t")).scalar() == 2
    engine.dispose()


def test_mariadb_triggers_held_by_a_live_session_are_left_to_it(
        mysql_url: str, state_dir: Path, workspace: Path) -> None:
    """Another undo in progress holds its triggers on purpose: an undo beside it leaves them
    dropped (re-creating them would fire them during that undo's restore)."""
    from revex.runtime.effects.sqlcapture.mysql import MySQLBackend

    _audited(mysql_url)
    run_sql(mysql_url, "CREATE TABLE other (id INT PRIMARY KEY)")
    with Runtime(state_dir, policy="permissive", audit=None) as rt:
        episode = committed_episode(rt, mysql_url, workspace, "INSERT INTO other VALUES (1)")
        engine = create_engine(mysql_url, poolclass=NullPool)
        live = engine.raw_connection()
        try:
            held = MySQLBackend()._user_triggers(live.cursor(), "t")
            assert rt.undo(episode) == 1
            assert _triggers(mysql_url) == []  # still the live session's to put back
            cur = live.cursor()
            for sql in held:
                cur.execute(sql)
        finally:
            live.close()
        engine.dispose()
    assert _triggers(mysql_url) == ["t_audit"]
