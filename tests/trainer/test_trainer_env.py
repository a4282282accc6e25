"""The environment_factory class: every tool acts through one episode that reset rolls back."""

from __future__ import annotations

import inspect
from pathlib import Path
from unittest.mock import patch

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
    env_cls = RevexEnv.bind(runtime)
    env = env_cls()
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
    assert env_cls.end_all() == 1
    assert {e.status for e in runtime.episodes()} == {"rolled_back"}
    assert env.rollbacks == 2


def test_refusals_and_errors_are_messages_not_exceptions(runtime: Runtime) -> None:
    env_cls = RevexEnv.bind(runtime, limits=Limits(wall_s=120, cpu_s=5, memory_mb=256))
    with env_cls() as env:
        env.reset(**ROW)
        assert env.write_file("../escape.txt", "x").startswith("refused by policy")
        assert env.run_python("print(1)").startswith("refused by policy")  # wall_s over cap
        assert env.read_file("missing.txt").startswith("error:")
        assert env.denials == 2
    assert {e.status for e in runtime.episodes()} == {"rolled_back"}


def test_get_reward_runs_the_tests_on_the_written_solution(runtime: Runtime) -> None:
    with RevexEnv.bind(runtime)() as env:
        env.reset(**ROW)
        env.write_file("solution.py", "def inc(x):\n    return 2\n")
        assert env.get_reward() == 0.5


def test_sql_acts_on_a_fork_of_the_task_database(runtime: Runtime, tmp_path: Path) -> None:
    import sqlite3

    db_path = tmp_path / "task.db"
    with sqlite3.connect(db_path) as db:
        db.executescript("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT);"
                         "INSERT INTO t VALUES (1, 'a');")
    url = f"sqlite:///{db_path}"
    with RevexEnv.bind(runtime)() as env:
        env.reset(**ROW, database=url)
        assert env.sql("INSERT INTO t VALUES (2, 'b')") == "ok: 1"
        assert "(2, 'b')" in env.sql("SELECT * FROM t ORDER BY id")
        assert env.sql("DELETE FROM t").startswith("refused by policy")
        assert env.sql("ATTACH DATABASE 'x.db' AS x").startswith("refused by policy")
    with sqlite3.connect(db_path) as db:  # the task database itself was never touched
        assert db.execute("SELECT * FROM t").fetchall() == [(1, "a")]


def test_an_unusable_database_is_reported_by_the_sql_tool(runtime: Runtime) -> None:
    with RevexEnv.bind(runtime)() as env:
        env.reset(**ROW, database="nosuchdb://x")
        message = env.sql("SELECT 1")
    assert message.startswith("error:") and "database" in message


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


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning",
                            "ignore::DeprecationWarning")
def test_grpo_trainer_with_environment_factory_calls_every_tool(
        runtime: Runtime, tmp_path: Path) -> None:
    """A real GRPOTrainer drives the env; generation is scripted (TRL's own test technique)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from tests.trainer.scripted_tools import scripted_generate, tool_model

    model, tok = tool_model(tmp_path / "m")
    calls = [("write_file", {"path": "solution.py", "content": CORRECT}),
             ("read_file", {"path": "solution.py"}), ("run_python", {"code": "print(6 * 7)"}),
             ("run_tests", {"code": CORRECT}), ("sql", {"query": "SELECT 1"}),
             ("http_request", {"method": "GET", "url": "http://example.com/", "body": ""})]
    fake_generate = scripted_generate(tok, calls)

    env_cls = RevexEnv.bind(runtime)
    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": "Write inc(x)."}]] * 2,
                                 "tests": [ROW["tests"]] * 2, "entry_point": ["inc"] * 2})
    args = GRPOConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False,
                      gradient_checkpointing=False, report_to="none", num_generations=2,
                      per_device_train_batch_size=2, max_completion_length=1024, max_steps=1,
                      logging_steps=1, save_strategy="no", disable_tqdm=True)
    trainer = GRPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok,
                          environment_factory=env_cls)
    with patch.object(trainer.model, "generate", side_effect=fake_generate):
        trainer.train()
    logs = trainer.state.log_history[0]
    assert logs["tools/call_frequency"] == 6 and logs["tools/failure_frequency"] == 0
    assert logs["rewards/RevexEnv/mean"] == 1.0  # get_reward: the last run_tests pass rate

    assert env_cls.end_all() == 2
    episodes = runtime.episodes()
    assert len(episodes) == 2 and {e.status for e in episodes} == {"rolled_back"}
    for info in episodes:
        records = _records(runtime, info.id)
        assert {"fs.write", "fs.read", "exec.run", "exec.tests"} <= {k for k, _ in records}
        assert ("http.request", Status.DENIED) in records
