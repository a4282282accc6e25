"""Database forks: an exact copy to act on, dropped when the episode ends."""

from __future__ import annotations

from pathlib import Path

import pytest
from sql_cases import create_schema
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from revex.runtime.effects.sql_dump import canonical_dump
from revex.runtime.runtime import Runtime


def test_fork_is_an_exact_copy_and_is_dropped_after_the_episode(
        db_url: str, state_dir: Path, workspace: Path) -> None:
    create_schema(db_url)
    before = canonical_dump(db_url)
    with Runtime(state_dir, policy="permissive", audit=None) as rt:
        fork = rt.fork_database(db_url)
        assert fork != db_url and canonical_dump(fork) == before
        rt.drop_forks({"sql_forks": [fork]})
        with rt.episode(workspace=workspace, databases={"app": db_url}, sql_fork=True,
                        on_exit="commit") as ep:
            used = ep.config["databases"]["app"]
            assert make_url(used).database != make_url(db_url).database
            ep.sql("app").execute("DELETE FROM child WHERE id = 10")
            assert canonical_dump(db_url) == before  # the original is untouched
        if db_url.startswith("sqlite"):
            assert not Path(make_url(used).database or "").exists()
        else:
            engine = create_engine(used, poolclass=NullPool)
            with pytest.raises(OperationalError, match=r"(does not exist|Unknown database)"):
                engine.connect()
            engine.dispose()
    assert canonical_dump(db_url) == before
