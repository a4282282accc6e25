"""The environment_factory class: every tool acts through one episode that reset rolls back."""

from __future__ import annotations

import inspect

import pytest

from revex import Limits, Runtime
from revex.errors import ConfigError
from revex.runtime.journal import Status
from revex.trainer.env import RevexEnv

ROW = {"prompt": "Write inc(x).", "tests": "assert inc(1) == 2\nassert inc(2) == 3\n",
       "entry_point": "inc"}
CORRECT = "def inc(x):\n    return x + 1\n"
TOOLS = ("write_file", "read_file", "run_python", "run_tests", "sql", "http_request")


def _records(runtime: Runtime, episode_id: str) -> list[tuple[str, Status]]:
    return [(r.kind, r.status) for r in runtime.journal.records(episode_id)]


def test_every_tool_acts_through_the_episode_and_reset_rolls_it_back(
        runtime: Runtime) -> None:
    env = RevexEnv.bind(runtime)()
    assert isinstance(env.reset(**ROW), str)
    workspace = env._workspace
    assert workspace is not None
    assert env.write_file("solution.py", CORRECT).startswith("wrote")
    assert env.read_file("solution.py") == CORRECT
    out = env.run_python("import solution\nprint(solution.inc(41))\n"
                         "open('made.txt', 'w').write('x')\n")
    assert "status: ok" in out and "42" in out
    assert env.read_file("made.txt") == "x"
    assert env.run_tests(CORRECT).startswith("passed 2/2")
    assert env.sql("SELECT 1") == "error: this task has no database"
    assert env.http_request("GET", "http://example.com/", "").startswith("refused by policy")
    assert env.get_reward() == 1.0
    first = env.episode_ids[-1]

    env.reset(**ROW)
    assert not workspace.exists()
    assert runtime.journal.episode(first)["status"] == "rolled_back"
    records = _records(runtime, first)
    kinds = {kind for kind, _ in records}
    assert {"fs.write", "fs.read", "exec.run", "exec.tests", "http.request"} <= kinds
    assert ("http.request", Status.DENIED) in records
    assert records.count(("fs.write", Status.DONE)) == records.count(("fs.write", Status.UNDONE))
    assert env.get_reward() == 0.0  # the new rollout has done nothing yet
    env._end_rollout()
    assert {e.status for e in runtime.episodes()} == {"rolled_back"}
    assert env.rollbacks == 2


def test_refusals_and_errors_are_messages_not_exceptions(runtime: Runtime) -> None:
    env = RevexEnv.bind(runtime, limits=Limits(wall_s=120, cpu_s=5, memory_mb=256))()
    env.reset(**ROW)
    assert env.write_file("../escape.txt", "x").startswith("refused by policy")
    assert env.run_python("print(1)").startswith("refused by policy")  # wall_s over the cap
    assert env.read_file("missing.txt").startswith("error:")
    assert env.denials == 2
    env._end_rollout()


def test_get_reward_runs_the_tests_on_the_written_solution(runtime: Runtime) -> None:
    env = RevexEnv.bind(runtime)()
    env.reset(**ROW)
    env.write_file("solution.py", "def inc(x):\n    return 2\n")
    assert env.get_reward() == 0.5
    env._end_rollout()


def test_sql_without_the_sql_effect_says_so(runtime: Runtime) -> None:
    env = RevexEnv.bind(runtime)()
    env.reset(**ROW, database="sqlite:///app.db")
    message = env.sql("SELECT 1")
    assert message.startswith("error:") and "SQL" in message
    env._end_rollout()


def test_live_http_cannot_be_bound(runtime: Runtime) -> None:
    with pytest.raises(ConfigError, match="never live"):
        RevexEnv.bind(runtime, http_mode="live")


def test_tools_are_public_methods_with_google_docstrings() -> None:
    from transformers.utils import get_json_schema

    public = {name for name, _ in inspect.getmembers(RevexEnv, inspect.isfunction)
              if not name.startswith("_")} - {"reset", "get_reward"}
    assert public == set(TOOLS)
    for name in TOOLS:
        schema = get_json_schema(getattr(RevexEnv(), name))
        params = schema["function"]["parameters"]["properties"]
        assert params and all(p.get("description") for p in params.values()), name
