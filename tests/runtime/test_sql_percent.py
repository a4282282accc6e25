"""Statements containing ``%`` are classified as written, not as the driver's ``%%`` text
(issue 11.4): the default policy allows them on every backend, and they are journaled as
written."""

from __future__ import annotations

from pathlib import Path

import pytest
from sql_cases import create_schema

from revex.runtime.effects.sql_classify import policy_attrs, split
from revex.runtime.effects.sql_dump import canonical_dump
from revex.runtime.journal import Status
from revex.runtime.runtime import Runtime


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_driver_escaped_percent_is_classified_as_the_operator(backend: str) -> None:
    [stmt] = split("UPDATE t SET v = 0 WHERE id %% 2 = %(k)s", backend, escaped=True)
    assert policy_attrs(stmt)["statement"] == "update" and stmt.tables == ("t",)
    assert stmt.where is True
    assert stmt.shown == "UPDATE t SET v = 0 WHERE id % 2 = %(k)s"
    assert stmt.sql == "UPDATE t SET v = 0 WHERE id %% 2 = %(k)s"  # what the driver runs
    [read] = split("SELECT v %% 2, '%%s' FROM t", backend, escaped=True)
    assert read.kind == "read" and not read.writes and read.tables == ("t",)
    # an escaped % right before a placeholder: the scan goes left to right
    [mixed] = split("UPDATE t SET v = v %%%s WHERE id = %s", backend, escaped=True)
    assert mixed.kind == "update" and mixed.shown == "UPDATE t SET v = v %%s WHERE id = %s"


def test_unescaped_text_keeps_its_percent_signs() -> None:
    [stmt] = split("SELECT '%%' FROM t", "postgresql")
    assert stmt.kind == "read" and stmt.shown == "SELECT '%%' FROM t" and not stmt.written


@pytest.mark.parametrize("mode", ["durable", "transactional"])
def test_modulo_statements_pass_the_default_policy_and_roll_back(
        db_url: str, mode: str, state_dir: Path, workspace: Path) -> None:
    create_schema(db_url)
    before = canonical_dump(db_url)
    with Runtime(state_dir, audit=None) as rt:  # the default policy denies what it cannot parse
        with rt.episode(workspace=workspace, databases={"app": db_url}, sql_mode=mode,
                        on_exit="commit") as ep:
            db = ep.sql("app")
            assert db.execute("UPDATE parent SET score = 0 WHERE id % 2 = :k", {"k": 1}) == 2
            rows = db.query("SELECT id, id % 2 FROM parent ORDER BY id")
            assert [tuple(r) for r in rows] == [(1, 1), (2, 0), (3, 1)]
            assert [r[0] for r in db.query("SELECT score FROM parent WHERE id % 2 = 1 "
                                           "ORDER BY id")] == [0, 0]
            db.execute("UPDATE parent SET name = '50%' WHERE id = 2")
            db.script("UPDATE child SET note = '%s%%' WHERE id % 2 = 0")
            assert db.query("SELECT name FROM parent WHERE id = 2")[0][0] == "50%"
            notes = db.query("SELECT id, note FROM child ORDER BY id")
            assert [tuple(r) for r in notes] == [(10, "%s%%"), (11, "b"), (12, "%s%%")]
            journaled = [r.params["sql"] for r in rt.journal.records(ep.id)
                         if r.status is Status.INTENT and r.kind.startswith("sql.")]
            assert "UPDATE parent SET score = 0 WHERE id % 2 = :k" not in journaled  # driver text
            assert any(s.startswith("UPDATE parent SET score = 0 WHERE id % 2 = ")
                       for s in journaled)
            assert not any("%%" in s and "note" not in s for s in journaled)
            assert "UPDATE child SET note = '%s%%' WHERE id % 2 = 0" in journaled
        assert canonical_dump(db_url) != before
        assert rt.undo(ep.id) == 3
    assert canonical_dump(db_url) == before
