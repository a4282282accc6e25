"""Exact undo: after rollback the canonical dump equals the dump before the episode, on every
backend, in both modes, for every kind of change in ``sql_cases``."""

from __future__ import annotations

from pathlib import Path

import pytest
from sql_cases import CASES, create_schema

from revex.runtime.effects.sql_dump import canonical_dump
from revex.runtime.runtime import Runtime


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("mode", ["durable", "transactional"])
def test_rollback_restores_the_exact_dump(db_url: str, mode: str, case: str, state_dir: Path,
                                          workspace: Path) -> None:
    create_schema(db_url)
    before = canonical_dump(db_url)
    backend = db_url.split(":", 1)[0].split("+")[0]
    with Runtime(state_dir, policy="permissive", audit=None) as rt:
        on_exit = "commit" if mode == "durable" else "rollback"
        with rt.episode(workspace=workspace, databases={"app": db_url}, sql_mode=mode,
                        on_exit=on_exit) as ep:
            CASES[case](ep.sql("app"), {"postgresql": "postgresql", "sqlite": "sqlite"}.get(
                backend, "mysql"))
            if mode == "durable":
                assert canonical_dump(db_url) != before, "the case changed nothing"
        episode_id = ep.id
    if mode == "durable":  # undo after commit, from a Runtime that never saw the episode
        with Runtime(state_dir, policy="permissive", audit=None) as rt2:
            assert rt2.undo(episode_id) > 0
    assert canonical_dump(db_url) == before
