"""The SQL effect through the pipeline: policy decisions, bad input, drift, the API surface."""

from __future__ import annotations

from pathlib import Path

import pytest
from sql_cases import create_schema
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, insert, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import NullPool

from revex.errors import ActionFailed, ConfigError, ConflictError, PolicyViolation
from revex.policies.engine import ApprovalRequest
from revex.runtime.effects.sql_dump import canonical_dump
from revex.runtime.journal import Status
from revex.runtime.runtime import Runtime


class Base(DeclarativeBase):
    pass


class Audit(Base):
    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(primary_key=True)
    msg: Mapped[str | None] = mapped_column(String(100))


def _records(rt: Runtime, episode_id: str, status: Status) -> list:
    return [r for r in rt.journal.records(episode_id) if r.status is status]


# ---- policy ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("sql", "rule"), [
    ("DROP DATABASE other", "sql-no-drop-database"),
    ("DROP SCHEMA public CASCADE", "sql-no-drop-database"),
    ("GRANT SELECT ON parent TO public", "sql-no-attach-grant-program"),
    ("COPY parent FROM PROGRAM 'id'", "sql-no-attach-grant-program"),
    ("SELEC * FROM parent", "sql-unparsed"),
])
def test_default_policy_denies_and_journals(pg_url: str, state_dir: Path, workspace: Path,
                                            sql: str, rule: str) -> None:
    create_schema(pg_url)
    before = canonical_dump(pg_url)
    with Runtime(state_dir, audit=None) as rt, rt.episode(
            workspace=workspace, databases={"app": pg_url}) as ep:
        with pytest.raises(PolicyViolation) as info:
            ep.sql("app").execute(sql)
        assert info.value.rule == rule
        [denied] = _records(rt, ep.id, Status.DENIED)
        assert denied.rule == rule and denied.params["sql"] == sql
    assert canonical_dump(pg_url) == before


def test_attach_is_denied_on_sqlite(sqlite_url: str, state_dir: Path, workspace: Path) -> None:
    with Runtime(state_dir, audit=None) as rt, rt.episode(
            workspace=workspace, databases={"app": sqlite_url}) as ep, pytest.raises(
                PolicyViolation, match="sql-no-attach"):
        ep.sql("app").execute("ATTACH DATABASE '/tmp/x.db' AS x")


def test_update_without_where_needs_approval(sqlite_url: str, state_dir: Path,
                                             workspace: Path) -> None:
    create_schema(sqlite_url)
    asked: list[ApprovalRequest] = []

    def approver(request: ApprovalRequest) -> bool:
        asked.append(request)
        return request.attrs["tables"] == ["nopk"]

    with Runtime(state_dir, audit=None, approver=approver) as rt, rt.episode(
            workspace=workspace, databases={"app": sqlite_url}) as ep:
        db = ep.sql("app")
        assert db.execute("UPDATE parent SET name = 'x' WHERE id = 1") == 1  # no approval
        assert not asked
        with pytest.raises(PolicyViolation, match="sql-unbounded-write"):
            db.execute("DELETE FROM parent")
        assert db.execute("DELETE FROM nopk") == 4
        assert [r.attrs["statement"] for r in asked] == ["delete", "delete"]


def test_permissive_allows_everything(sqlite_url: str, state_dir: Path,
                                      workspace: Path) -> None:
    create_schema(sqlite_url)
    with Runtime(state_dir, policy="permissive", audit=None) as rt, rt.episode(
            workspace=workspace, databases={"app": sqlite_url}) as ep:
        assert ep.sql("app").execute("DELETE FROM nopk") == 4


# ---- bad input -------------------------------------------------------------------------------

def test_unknown_database_name_is_a_config_error(sqlite_url: str, state_dir: Path,
                                                 workspace: Path) -> None:
    with Runtime(state_dir, audit=None) as rt, rt.episode(
            workspace=workspace, databases={"app": sqlite_url}) as ep, pytest.raises(
                ConfigError, match=r"no database named 'ap'.*configured: app"):
        ep.sql("ap")


@pytest.mark.parametrize(("url", "message"), [
    ("not a url", "not a SQLAlchemy URL"),
    ("oracle://u@h/db", "supports sqlite, postgresql and mysql"),
])
def test_bad_url_is_a_config_error(state_dir: Path, workspace: Path, url: str,
                                   message: str) -> None:
    with Runtime(state_dir, audit=None) as rt, pytest.raises(ConfigError, match=message):
        rt.episode(workspace=workspace, databases={"app": url})


def test_bad_mode_is_a_config_error(sqlite_url: str, state_dir: Path, workspace: Path) -> None:
    with Runtime(state_dir, audit=None) as rt, pytest.raises(ConfigError, match="sql_mode"):
        rt.episode(workspace=workspace, databases={"app": sqlite_url}, sql_mode="eventual")


def test_unreachable_server_is_a_config_error(state_dir: Path, workspace: Path) -> None:
    url = "postgresql+psycopg://nobody@127.0.0.1:1/none"
    with Runtime(state_dir, audit=None) as rt, rt.episode(
            workspace=workspace, databases={"app": url}) as ep, pytest.raises(
                ConfigError, match=r"cannot connect to database 'app' at "
                                   r"postgresql\+psycopg://nobody@127.0.0.1:1"):
        ep.sql("app").execute("SELECT 1")


@pytest.mark.parametrize("mode", ["durable", "transactional"])
def test_failing_statement_changes_nothing(db_url: str, state_dir: Path, workspace: Path,
                                           mode: str) -> None:
    create_schema(db_url)
    before = canonical_dump(db_url)
    with Runtime(state_dir, policy="permissive", audit=None) as rt, rt.episode(
            workspace=workspace, databases={"app": db_url}, sql_mode=mode,
            on_exit="commit") as ep:
        db = ep.sql("app")
        with pytest.raises(ActionFailed, match="rejected"):
            db.execute("INSERT INTO parent VALUES (1, 'duplicate key', NULL, 0)")
        with pytest.raises(ActionFailed):
            db.execute("UPDATE no_such_table SET a = 1 WHERE b = 2")
        [failed, failed2] = _records(rt, ep.id, Status.FAILED)
        assert "duplicate" in failed.params["sql"] and failed2.error
        assert canonical_dump(db_url) == before
        db.execute("UPDATE parent SET name = 'after' WHERE id = 2")  # the episode still works
    assert canonical_dump(db_url) != before


# ---- drift -----------------------------------------------------------------------------------

def test_undo_after_drift_raises_naming_table_and_key(db_url: str, state_dir: Path,
                                                      workspace: Path) -> None:
    create_schema(db_url)
    before = canonical_dump(db_url)
    with Runtime(state_dir, policy="permissive", audit=None) as rt:
        with rt.episode(workspace=workspace, databases={"app": db_url},
                        on_exit="commit") as ep:
            ep.sql("app").execute("UPDATE parent SET name = 'agent' WHERE id = 2")
            ep.sql("app").execute("DELETE FROM nopk WHERE a = 2")
        engine = create_engine(db_url, poolclass=NullPool)
        with engine.begin() as conn:
            conn.execute(text("UPDATE parent SET name = 'human' WHERE id = 2"))
        engine.dispose()
        drifted = canonical_dump(db_url)
        with pytest.raises(ConflictError) as info:
            rt.undo(ep.id)
        assert "table parent key (id=2)" in str(info.value)
        assert canonical_dump(db_url) == drifted  # nothing was undone
        assert rt.undo(ep.id, force=True) == 2
    assert canonical_dump(db_url) == before


def test_drift_on_a_row_only_an_older_action_touched_changes_nothing(
        db_url: str, state_dir: Path, workspace: Path) -> None:
    create_schema(db_url)
    before = canonical_dump(db_url)
    with Runtime(state_dir, policy="permissive", audit=None) as rt:
        with rt.episode(workspace=workspace, databases={"app": db_url},
                        on_exit="commit") as ep:
            ep.sql("app").execute("UPDATE parent SET name = 'older' WHERE id = 1")
            ep.sql("app").execute("UPDATE parent SET name = 'newer' WHERE id = 2")
        engine = create_engine(db_url, poolclass=NullPool)
        with engine.begin() as conn:  # someone else changes the row of the OLDER action
            conn.execute(text("UPDATE parent SET name = 'human' WHERE id = 1"))
        engine.dispose()
        drifted = canonical_dump(db_url)
        with pytest.raises(ConflictError) as info:
            rt.undo(ep.id)
        assert "table parent key (id=1)" in str(info.value)
        assert canonical_dump(db_url) == drifted  # not even the newer action was undone
        assert rt.undo(ep.id, force=True) == 2
    assert canonical_dump(db_url) == before


# ---- API -------------------------------------------------------------------------------------

def test_connection_core_statements_are_journaled_and_undone(
        db_url: str, state_dir: Path, workspace: Path) -> None:
    create_schema(db_url)
    before = canonical_dump(db_url)
    nopk = Table("nopk", MetaData(), Column("a", Integer), Column("b", String(20)))
    with Runtime(state_dir, policy="permissive", audit=None) as rt, rt.episode(
            workspace=workspace, databases={"app": db_url}) as ep:
        conn = ep.sql("app").connection
        conn.execute(insert(nopk), [{"a": 7, "b": "core"}, {"a": 8, "b": "core"}])
        conn.commit()
        rows = ep.sql("app").query("SELECT a FROM nopk WHERE b = :b ORDER BY a", {"b": "core"})
        assert [r[0] for r in rows] == [7, 8]
        done = [r for r in _records(rt, ep.id, Status.DONE) if r.kind == "sql.execute"]
        assert done and done[0].result["rows"] == 2
        intents = _records(rt, ep.id, Status.INTENT)
        assert intents[0].params["statement"] == "insert"
        assert intents[0].params["tables"] == ["nopk"]
        assert "core" not in intents[0].params["sql"]  # parameters are not in the journal
    assert canonical_dump(db_url) == before


def test_checkpoint_rollback_keeps_earlier_statements(db_url: str, state_dir: Path,
                                                      workspace: Path) -> None:
    create_schema(db_url)
    with Runtime(state_dir, policy="permissive", audit=None) as rt, rt.episode(
            workspace=workspace, databases={"app": db_url}, on_exit="commit") as ep:
        db = ep.sql("app")
        db.execute("UPDATE parent SET name = 'kept' WHERE id = 1")
        cp = ep.checkpoint()
        middle = canonical_dump(db_url)
        db.script("DELETE FROM child; INSERT INTO nopk VALUES (9, 'gone')")
        assert ep.rollback(to=cp) == 2
        assert canonical_dump(db_url) == middle
        assert db.query("SELECT name FROM parent WHERE id = 1")[0][0] == "kept"


def test_rows_changed_quota_refuses_and_rolls_back(sqlite_url: str, state_dir: Path,
                                                   workspace: Path, tmp_path: Path) -> None:
    create_schema(sqlite_url)
    before = canonical_dump(sqlite_url)
    policy = tmp_path / "p.toml"
    policy.write_text('[policy]\nname = "q"\ndefault = "allow"\n[quotas]\nrows_changed = 3\n')
    with Runtime(state_dir, policy=policy, audit=None) as rt, rt.episode(
            workspace=workspace, databases={"app": sqlite_url}) as ep:
        with pytest.raises(PolicyViolation, match="rows_changed"):
            ep.sql("app").execute("DELETE FROM nopk WHERE a IS NOT NULL OR a IS NULL")
        assert canonical_dump(sqlite_url) == before


def test_transactional_commit_keeps_changes_and_undo_still_works(
        db_url: str, state_dir: Path, workspace: Path) -> None:
    create_schema(db_url)
    before = canonical_dump(db_url)
    with Runtime(state_dir, policy="permissive", audit=None) as rt:
        with rt.episode(workspace=workspace, databases={"app": db_url},
                        sql_mode="transactional", on_exit="commit") as ep:
            ep.sql("app").execute("DELETE FROM parent WHERE id = 2")
            ep.sql("app").execute("INSERT INTO nopk VALUES (3, 'tx')")
        assert canonical_dump(db_url) != before
        assert rt.undo(ep.id) == 2
    assert canonical_dump(db_url) == before


def test_orm_session_on_the_connection_is_journaled_and_undone(
        db_url: str, state_dir: Path, workspace: Path) -> None:
    create_schema(db_url)
    before = canonical_dump(db_url)
    with Runtime(state_dir, policy="permissive", audit=None) as rt, rt.episode(
            workspace=workspace, databases={"app": db_url}) as ep:
        with Session(bind=ep.sql("app").connection) as session:
            rows = [Audit(msg="orm 1"), Audit(msg="orm 2")]
            session.add_all(rows)
            session.flush()
            assert all(r.id for r in rows)  # RETURNING / lastrowid came back
            rows[0].msg = "changed"
            session.commit()
        kinds = [r.params.get("statement") for r in _records(rt, ep.id, Status.INTENT)]
        assert "insert" in kinds and "update" in kinds
    assert canonical_dump(db_url) == before


def test_drop_of_a_referenced_table_fails_like_the_database_and_changes_nothing(
        db_url: str, state_dir: Path, workspace: Path) -> None:
    create_schema(db_url)
    before = canonical_dump(db_url)
    with Runtime(state_dir, policy="permissive", audit=None) as rt, rt.episode(
            workspace=workspace, databases={"app": db_url}, on_exit="commit") as ep:
        if db_url.startswith("sqlite"):  # SQLite drops it after cascading to the children
            ep.sql("app").execute("DROP TABLE parent")
            assert ep.sql("app").query("SELECT count(*) FROM child")[0][0] == 0
            ep.rollback()
        else:
            with pytest.raises(ActionFailed):
                ep.sql("app").execute("DROP TABLE parent")
    assert canonical_dump(db_url) == before


def test_database_passwords_stay_out_of_the_journal(state_dir: Path, workspace: Path,
                                                    sqlite_url: str) -> None:
    url = "postgresql+psycopg://bob:s3cret@127.0.0.1:1/none"
    with Runtime(state_dir, audit=None) as rt, rt.episode(
            workspace=workspace, databases={"app": url, "local": sqlite_url}) as ep:
        begin = rt.journal.records(ep.id)[0]
        assert begin.kind == "episode.begin"
        assert "s3cret" not in str(begin.params) and "***" in str(begin.params)
