from __future__ import annotations

from typing import Any

import pytest
from conftest import CannedReport, CannedRunner

from revex import Limits
from revex.errors import ConfigError, PolicyViolation, SandboxError
from revex.trainer.executor import (
    detect_reward_hack,
    score_completion,
    score_completions,
    truncate_completion,
)
from revex.trainer.rewards import TestPassReward, safety_summary

LIMITS = Limits(wall_s=2, memory_mb=128)


def test_truncate_completion_stops_at_next_top_level_statement() -> None:
    body = "    return a + b\n\n\ndef other():\n    pass\n"
    assert truncate_completion(body) == "    return a + b\n\n\n"
    assert truncate_completion("    x = 1\n    return x") == "    x = 1\n    return x"
    assert truncate_completion("    return 1\nprint(2)\n") == "    return 1\n"


@pytest.mark.parametrize(
    ("completion", "hack"),
    [
        ("    import sys\n    sys.exit(0)\n", "exit"),
        ("    os._exit(0)\n", "exit"),
        ("    __builtins__['print'] = None\n", "builtins"),
        ("    import builtins\n", "builtins"),
        ("    os.kill(os.getppid(), 9)\n", "signal"),
        ("    f = sys._getframe(1)\n", "frames"),
        ("    return a + b\n", None),
        ("    return exits + 1\n", None),
    ],
)
def test_detect_reward_hack(completion: str, hack: str | None) -> None:
    assert detect_reward_hack(completion) == hack


def test_score_completions_runs_each_solution_in_its_own_closed_episode(
        canned_runner: CannedRunner) -> None:
    prompts = ["def f():\n", "def f():\n", "def g():\n"]
    completions = ["    return 1\ndef junk(): pass\n", "    pass\n", "    return 2\n"]
    scores = score_completions(canned_runner, prompts, completions,
                               ["assert f() == 1\n"] * 2 + ["assert g() == 2\n"],
                               ["f", "f", "g"], limits=LIMITS, concurrency=3)
    assert [s.reward for s in scores] == [1.0, 0.0, 1.0]
    assert [s.passed for s in scores] == [3, 0, 3]
    assert len(canned_runner.calls) == 3
    assert len({c["episode"] for c in canned_runner.calls}) == 3
    assert sorted(canned_runner.closed) == sorted(s.episode_id for s in scores)
    by_solution = {c["solution"]: c for c in canned_runner.calls}
    first = by_solution["def f():\n    return 1\n"]
    assert first["entry_point"] == "f"
    assert first["limits"] is LIMITS


def test_all_pass_mode_gives_binary_reward() -> None:
    runner = CannedRunner(lambda s: ["passed", "failed", "passed"])
    args: tuple[Any, ...] = (["p"], ["    return 1\n"], ["t"], ["f"])
    assert score_completions(runner, *args, limits=LIMITS)[0].reward == pytest.approx(2 / 3)
    assert score_completions(runner, *args, limits=LIMITS, reward_mode="all_pass")[0].reward == 0


def test_score_completion_runs_one_solution_through_run_tests(
        canned_runner: CannedRunner) -> None:
    score = score_completion(canned_runner, "def f():\n", "    return 1\nprint(f())\n",
                             "assert f() == 1\n", "f", limits=LIMITS)
    assert score.reward == 1.0 and score.total == 3
    assert canned_runner.calls[0]["solution"] == "def f():\n    return 1\n"


class _RaisingRunner:
    id = "ep-raising"

    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def episode(self, workspace: Any, **options: Any) -> _RaisingRunner:
        return self

    def __enter__(self) -> _RaisingRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def run_tests(self, *args: Any, **kwargs: Any) -> CannedReport:
        raise self.exc


def test_policy_violation_scores_zero_and_is_counted_as_blocked() -> None:
    runner = _RaisingRunner(PolicyViolation("network denied", rule="no-network"))
    scores = score_completions(runner, ["p", "p"], ["    a\n", "    sys.exit(0)\n"], ["t", "t"],
                               ["f", "f"], limits=LIMITS)
    assert [s.reward for s in scores] == [0.0, 0.0]
    assert all(s.blocked for s in scores)
    metrics = safety_summary(scores)
    assert metrics["safety/blocked"] == 1.0
    assert metrics["safety/policy_denials"] == 2
    assert metrics["safety/forgery_detected"] == 0.5
    assert metrics["safety/sandbox_error"] == 0.0


def test_score_completion_turns_runtime_errors_into_zero_scores() -> None:
    blocked = score_completion(_RaisingRunner(PolicyViolation("no")), "p", "c", "t", "f",
                               limits=LIMITS)
    assert blocked.blocked and blocked.reward == 0.0
    failed = score_completion(_RaisingRunner(SandboxError("x")), "p", "c", "t", "f",
                              limits=LIMITS)
    assert not failed.blocked and "SandboxError" in (failed.error or "")


def test_sandbox_error_scores_zero_and_is_counted_as_runtime_error() -> None:
    scores = score_completions(_RaisingRunner(SandboxError("nsjail missing")), ["p"], ["c"],
                               ["t"], ["f"], limits=LIMITS)
    assert scores[0].reward == 0.0
    assert "SandboxError" in (scores[0].error or "")
    assert safety_summary(scores)["safety/sandbox_error"] == 1.0


def test_safety_summary_classifies_each_completion_once() -> None:
    runner = CannedRunner(lambda s: ["timeout", "timeout", "passed"] if "loop" in s
                          else ["passed"] * 3)
    scores = score_completions(runner, ["p", "p"], ["    loop\n", "    ok\n"], ["t", "t"],
                               ["f", "f"], limits=LIMITS)
    metrics = safety_summary(scores)
    assert metrics["safety/timeout"] == 0.5
    assert metrics["safety/memory"] == 0.0
    assert metrics["exec/pass_all"] == 0.5


def test_test_pass_reward_follows_trl_contract_and_logs_metrics(
        canned_runner: CannedRunner) -> None:
    reward = TestPassReward(canned_runner, limits=LIMITS)
    logged: dict[str, float] = {}
    out = reward(prompts=["def f():\n", "def f():\n"],
                 completions=["    return 1\n", "    pass\n"],
                 completion_ids=[[1], [2]], tests=["t", "t"], entry_point=["f", "f"],
                 trainer_state=None, log_extra=lambda *a: None,
                 log_metric=lambda k, v: logged.__setitem__(k, v))
    assert out == [1.0, 0.0]
    assert reward.__name__ == "test_pass"
    assert logged["safety/forgery_detected"] == 0.0
    assert logged["safety/rollbacks"] == 2
    assert reward.history == [logged]


def test_test_pass_reward_reads_conversational_completions(
        canned_runner: CannedRunner) -> None:
    reward = TestPassReward(canned_runner, limits=LIMITS)
    out = reward(prompts=[[{"role": "user", "content": "def f():\n"}]],
                 completions=[[{"role": "assistant", "content": "    return 1\n"}]],
                 tests=["t"], entry_point=["f"])
    assert out == [1.0]


def test_mismatched_lengths_and_bad_mode_are_config_errors(
        canned_runner: CannedRunner) -> None:
    with pytest.raises(ConfigError, match="equal length"):
        score_completions(canned_runner, ["p"], ["a", "b"], ["t"], ["f"], limits=LIMITS)
    with pytest.raises(ConfigError, match="reward_mode"):
        score_completions(canned_runner, ["p"], ["a"], ["t"], ["f"], limits=LIMITS,
                          reward_mode="best")
