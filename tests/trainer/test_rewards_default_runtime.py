"""Rewards without ceremony (issue 11, item 7): ``TestPassReward()`` and the other executing
rewards work with no arguments, creating on first use a ``training`` runtime whose state lives
under the user cache dir; the explicit ``runtime=`` form keeps working."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from revex import Runtime
from revex.trainer.rewards import (
    EfficiencyReward,
    ExecutionFeedbackReward,
    TestPassReward,
    default_reward_state_dir,
)

PROMPT = 'def inc(x):\n    """Return x plus one."""\n'
TESTS = "assert inc(1) == 2\nassert inc(-1) == 0\nassert inc(41) == 42\n"
CORRECT = "    return x + 1\n"
WRONG = "    return abs(x) + 1\n"
RAISES = "    raise ValueError('no')\n"


@pytest.fixture
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary cache dir (XDG_CACHE_HOME) and an empty HOME: nothing reaches the real one."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("REVEX_STATE_DIR", raising=False)
    return tmp_path / "cache"


def _journaled(state: Path) -> list[tuple[str, str]]:
    with Runtime(state_dir=state, audit=None, recover=False) as rt:
        return [(e.status, str(e.config.get("policy"))) for e in rt.episodes()]


def test_test_pass_reward_needs_no_arguments(cache_home: Path) -> None:
    reward = TestPassReward()
    assert not cache_home.exists()  # created on first use, not at construction
    try:
        scores = reward([PROMPT] * 3, [CORRECT, WRONG, RAISES], tests=[TESTS] * 3,
                        entry_point=["inc"] * 3)
    finally:
        reward.close()
    assert scores == [1.0, pytest.approx(2 / 3), 0.0]
    state = cache_home / "revex" / "rewards"
    assert default_reward_state_dir() == state and (state / "journal.db").is_file()
    assert _journaled(state) == [("rolled_back", "training")] * 3
    assert os.listdir(Path(os.environ["HOME"])) == []


def test_the_other_executing_rewards_need_no_arguments(cache_home: Path) -> None:
    feedback, efficiency = ExecutionFeedbackReward(), EfficiencyReward(repeat=2)
    try:
        penalties = feedback([PROMPT] * 2, [CORRECT, RAISES], tests=[TESTS] * 2,
                             entry_point=["inc"] * 2)
        speed = efficiency([PROMPT] * 2, [CORRECT, WRONG], tests=[TESTS] * 2,
                           entry_point=["inc"] * 2, reference=[CORRECT] * 2)
    finally:
        feedback.close()
        efficiency.close()
    assert penalties == [0.0, -0.5]
    assert speed[1] == 0.0 and speed[0] is not None and 0.0 < speed[0] <= 1.0
    statuses = _journaled(cache_home / "revex" / "rewards")
    assert statuses and set(statuses) == {("rolled_back", "training")}


def test_an_explicit_runtime_is_used_and_left_open(tmp_path: Path, cache_home: Path) -> None:
    with Runtime(state_dir=tmp_path / "mine", policy="training", audit=None) as rt:
        reward = TestPassReward(rt)
        assert reward([PROMPT], [CORRECT], tests=[TESTS], entry_point=["inc"]) == [1.0]
        reward.close()  # not ours to close: the runtime still works afterwards
        assert rt.run_tests(PROMPT + CORRECT, TESTS, "inc").all_passed
        assert [e.status for e in rt.episodes()] == ["rolled_back"]
    assert not cache_home.exists()


def test_an_unusable_cache_dir_is_a_state_error_naming_it(tmp_path: Path,
                                                          cache_home: Path) -> None:
    from revex import StateError

    cache_home.write_text("a file, not a directory")
    reward = TestPassReward()
    with pytest.raises(StateError, match="rewards"):
        reward([PROMPT], [CORRECT], tests=[TESTS], entry_point=["inc"])
