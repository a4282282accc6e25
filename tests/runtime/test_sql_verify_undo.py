"""Verify after undo (issue 10's rule, for SQL): an SQL action is marked UNDONE only after its
undo re-queried the rows it put back and took away and found the pre-image. A fault that makes
the restored rows differ (a trigger that fires even during undo, a rule that swallows the
insert, a column whose type changed since) is a ConflictError naming table and key; the undo
is rolled back and the action stays DONE, so a later undo, once the fault is gone, succeeds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sql_cases import DOUBLE, backend_of, run_sql
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from revex.errors import ConflictError
from revex.runtime.effects.sql_dump import canonical_dump
from revex.runtime.journal import Status
from revex.runtime.runtime import Runtime


def _schema(url: str) -> None:
    b = backend_of(url)
    run_sql(url, f"CREATE TABLE codes (id INT PRIMARY KEY, code VARCHAR(10), amount {DOUBLE[b]})",
         "INSERT INTO codes VALUES (1, '007', 2.25), (2, 'keep', 1.5)")


def _sqlite_retype(url: str, code_type: str) -> None:
    run_sql(url, "ALTER TABLE codes RENAME TO codes_old",
         f"CREATE TABLE codes (id INT PRIMARY KEY, code {code_type}, amount REAL)",
         "INSERT INTO codes SELECT * FROM codes_old", "DROP TABLE codes_old")


# each fault: (install, remove); both run outside revex, after the episode committed
FAULTS: dict[str, dict[str, tuple[Callable[[str], None], Callable[[str], None]]]] = {
    "sqlite": {"column type": (lambda u: _sqlite_retype(u, "INTEGER"),
                               lambda u: _sqlite_retype(u, "VARCHAR(10)"))},
    "mysql": {"column type": (
        lambda u: run_sql(u, "ALTER TABLE codes MODIFY amount DECIMAL(5,1)"),
        lambda u: run_sql(u, "ALTER TABLE codes MODIFY amount DOUBLE"))},
    "postgresql": {
        "column type": (
            lambda u: run_sql(u, "ALTER TABLE codes ALTER amount TYPE numeric(5,1)"),
            lambda u: run_sql(u, "ALTER TABLE codes ALTER amount TYPE DOUBLE PRECISION")),
        "trigger": (
            lambda u: run_sql(u, "CREATE FUNCTION tamper() RETURNS trigger LANGUAGE plpgsql AS "
                              "$$ BEGIN NEW.code := 'tampered'; RETURN NEW; END $$",
                           "CREATE TRIGGER tamper BEFORE INSERT OR UPDATE ON codes FOR EACH "
                           "ROW EXECUTE FUNCTION tamper()",
                           # fires in every session, also under session_replication_role
                           "ALTER TABLE codes ENABLE ALWAYS TRIGGER tamper"),
            lambda u: run_sql(u, "DROP TRIGGER tamper ON codes")),
        # rules that swallow the writes an undo restores rows with (a changed row is put
        # back with UPDATE, a deleted one with INSERT)
        "rule": (
            lambda u: run_sql(u, "CREATE RULE swallow AS ON INSERT TO codes DO INSTEAD NOTHING",
                           "ALTER TABLE codes ENABLE ALWAYS RULE swallow",
                           "CREATE RULE swallow_u AS ON UPDATE TO codes DO INSTEAD NOTHING",
                           "ALTER TABLE codes ENABLE ALWAYS RULE swallow_u"),
            lambda u: run_sql(u, "DROP RULE swallow ON codes", "DROP RULE swallow_u ON codes")),
    },
}
CASES = [(b, f) for b, faults in FAULTS.items() for f in faults]


@pytest.mark.parametrize(("backend", "fault"), CASES)
@pytest.mark.parametrize("mode", ["durable", "transactional"])
def test_an_undo_the_database_does_not_keep_is_a_conflict(
        request: pytest.FixtureRequest, backend: str, fault: str, mode: str, state_dir: Path,
        workspace: Path) -> None:
    url: str = request.getfixturevalue({"sqlite": "sqlite_url", "mysql": "mysql_url",
                                        "postgresql": "pg_url"}[backend])
    _schema(url)
    before = canonical_dump(url)
    install, remove = FAULTS[backend][fault]
    with Runtime(state_dir, policy="permissive", audit=None) as rt:
        with rt.episode(workspace=workspace, databases={"app": url}, sql_mode=mode,
                        on_exit="commit") as ep:
            ep.sql("app").execute("UPDATE codes SET code = 'x', amount = 9.5 WHERE id = 1")
        install(url)
        faulty = canonical_dump(url)
        with pytest.raises(ConflictError) as info:
            rt.undo(ep.id)
        message = str(info.value)
        assert "table codes key (id=1)" in message and "after undo" in message
        assert "not marked undone" in message
        assert not [r for r in rt.journal.records(ep.id) if r.status is Status.UNDONE]
        assert canonical_dump(url) == faulty  # the undo was rolled back
        remove(url)
        assert rt.undo(ep.id) == 1
    assert canonical_dump(url) == before


def test_a_deleted_row_that_does_not_come_back_is_named(pg_url: str, state_dir: Path,
                                                        workspace: Path) -> None:
    _schema(pg_url)
    with Runtime(state_dir, policy="permissive", audit=None) as rt:
        with rt.episode(workspace=workspace, databases={"app": pg_url},
                        on_exit="commit") as ep:
            ep.sql("app").execute("DELETE FROM codes WHERE id = 2")
        FAULTS["postgresql"]["rule"][0](pg_url)
        with pytest.raises(ConflictError, match=r"table codes key \(id=2\): missing after "
                                                r"undo"):
            rt.undo(ep.id)


def test_a_ddl_undo_that_leaves_another_shape_is_a_conflict(pg_url: str, state_dir: Path,
                                                            workspace: Path) -> None:
    _schema(pg_url)
    before = canonical_dump(pg_url)
    with Runtime(state_dir, policy="permissive", audit=None) as rt:
        with rt.episode(workspace=workspace, databases={"app": pg_url},
                        on_exit="commit") as ep:
            ep.sql("app").execute("ALTER TABLE codes DROP COLUMN code")
        # an event trigger (enabled always) that adds a row whenever a table is altered
        run_sql(pg_url, "CREATE FUNCTION sneak() RETURNS event_trigger LANGUAGE plpgsql AS $$ "
                     "BEGIN INSERT INTO codes (id) VALUES (99) ON CONFLICT DO NOTHING; END $$",
             "CREATE EVENT TRIGGER sneak ON ddl_command_end WHEN TAG IN ('ALTER TABLE') "
             "EXECUTE FUNCTION sneak()", "ALTER EVENT TRIGGER sneak ENABLE ALWAYS")
        faulty = canonical_dump(pg_url)
        with pytest.raises(ConflictError, match=r"table codes: rows differ from before"):
            rt.undo(ep.id)
        assert canonical_dump(pg_url) == faulty
        run_sql(pg_url, "DROP EVENT TRIGGER sneak")
        assert rt.undo(ep.id) == 1
    assert canonical_dump(pg_url) == before


@pytest.mark.parametrize("backend", ["sqlite", "mysql"])
def test_rows_without_a_key_are_counted_after_undo(request: pytest.FixtureRequest, backend: str,
                                                   state_dir: Path, workspace: Path) -> None:
    url: str = request.getfixturevalue({"sqlite": "sqlite_url", "mysql": "mysql_url"}[backend])
    run_sql(url, f"CREATE TABLE loose (code VARCHAR(10), amount {DOUBLE[backend]})",
         "INSERT INTO loose VALUES ('007', 2.25), ('007', 2.25), ('x', 1.5)")
    with Runtime(state_dir, policy="permissive", audit=None) as rt:
        with rt.episode(workspace=workspace, databases={"app": url}, on_exit="commit") as ep:
            ep.sql("app").execute("DELETE FROM loose WHERE code = '007'")
        if backend == "sqlite":  # the column turns INTEGER: '007' comes back as 7
            run_sql(url, "ALTER TABLE loose RENAME TO loose_old",
                 "CREATE TABLE loose (code INTEGER, amount REAL)",
                 "INSERT INTO loose SELECT * FROM loose_old", "DROP TABLE loose_old")
        else:  # 2.25 comes back as 2.3
            run_sql(url, "ALTER TABLE loose MODIFY amount DECIMAL(5,1)")
        faulty = canonical_dump(url)
        with pytest.raises(ConflictError, match=r"table loose key \(.*code='007'.*\): missing "
                                                r"after undo"):
            rt.undo(ep.id)
        assert canonical_dump(url) == faulty


def test_one_of_two_identical_rows_missing_after_undo_is_a_conflict(
        pg_url: str, state_dir: Path, workspace: Path) -> None:
    """Rows without a key are a multiset: one copy back of two is not the pre-state."""
    run_sql(pg_url, "CREATE TABLE loose (code VARCHAR(10), amount DOUBLE PRECISION)",
         "INSERT INTO loose VALUES ('007', 2.25), ('007', 2.25), ('x', 1.5)")
    with Runtime(state_dir, policy="permissive", audit=None) as rt:
        with rt.episode(workspace=workspace, databases={"app": pg_url},
                        on_exit="commit") as ep:
            ep.sql("app").execute("DELETE FROM loose WHERE code = '007'")
        # a trigger (enabled always) that drops an insert whose row is already there
        run_sql(pg_url, "CREATE FUNCTION once() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                     "IF EXISTS (SELECT 1 FROM loose WHERE code = NEW.code) THEN RETURN NULL; "
                     "END IF; RETURN NEW; END $$",
             "CREATE TRIGGER once BEFORE INSERT ON loose FOR EACH ROW EXECUTE FUNCTION once()",
             "ALTER TABLE loose ENABLE ALWAYS TRIGGER once")
        with pytest.raises(ConflictError, match=r"table loose key \(code='007', amount=2.25\): "
                                                r"missing after undo"):
            rt.undo(ep.id)
        run_sql(pg_url, "DROP TRIGGER once ON loose")
        assert rt.undo(ep.id) == 1
    assert sorted(_rows(pg_url)) == [("007", 2.25), ("007", 2.25), ("x", 1.5)]


def _rows(url: str) -> list[tuple[str, float]]:
    engine = create_engine(url, poolclass=NullPool)
    with engine.connect() as conn:
        rows = [(r[0], r[1]) for r in conn.execute(text("SELECT code, amount FROM loose"))]
    engine.dispose()
    return rows
