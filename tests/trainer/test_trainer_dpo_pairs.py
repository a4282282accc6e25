from __future__ import annotations

import pytest

from revex.errors import ConfigError
from revex.trainer.dpo import build_dpo_pairs


def test_pairs_passing_against_failing_per_prompt() -> None:
    prompts = ["p1", "p1", "p1", "p2", "p2"]
    completions = ["good", "bad", "worse", "x", "y"]
    scores = [1.0, 0.0, 0.0, 0.5, 0.5]
    pairs = build_dpo_pairs(prompts, completions, scores)
    assert pairs == [
        {"prompt": "p1", "chosen": "good", "rejected": "bad"},
        {"prompt": "p1", "chosen": "good", "rejected": "worse"},
    ]


def test_partial_scores_prefer_the_best_and_respect_margin() -> None:
    prompts = ["p"] * 3
    completions = ["a", "b", "c"]
    scores = [0.67, 0.33, 1.0]
    assert build_dpo_pairs(prompts, completions, scores) == [
        {"prompt": "p", "chosen": "c", "rejected": "a"},
        {"prompt": "p", "chosen": "c", "rejected": "b"},
    ]
    assert build_dpo_pairs(prompts, completions, scores, min_margin=0.5) == [
        {"prompt": "p", "chosen": "c", "rejected": "b"},
    ]


def test_duplicates_none_scores_and_uniform_groups_give_no_pairs() -> None:
    assert build_dpo_pairs(["p", "p"], ["same", "same"], [1.0, 0.0]) == []
    assert build_dpo_pairs(["p", "p"], ["a", "b"], [None, 0.0]) == []
    assert build_dpo_pairs(["p", "p", "p"], ["a", "b", "c"], [0.0, 0.0, 0.0]) == []


def test_pairs_are_capped_and_round_robin() -> None:
    prompts = ["p"] * 6
    completions = ["c1", "c2", "r1", "r2", "r3", "r4"]
    scores = [1, 1, 0, 0, 0, 0]
    pairs = build_dpo_pairs(prompts, completions, scores, max_pairs_per_prompt=3)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("c1", "r1"), ("c2", "r2"),
                                                            ("c1", "r3")]


def test_pair_building_is_deterministic() -> None:
    args = (["a", "b", "a", "b"], ["x", "y", "z", "w"], [1.0, 0.0, 0.0, 1.0])
    assert build_dpo_pairs(*args) == build_dpo_pairs(*args)
    assert [p["prompt"] for p in build_dpo_pairs(*args)] == ["a", "b"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"max_pairs_per_prompt": 0}, "max_pairs_per_prompt"), ({"min_margin": -1}, "min_margin")],
)
def test_bad_arguments_are_config_errors(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_dpo_pairs(["p"], ["c"], [1.0], **kwargs)  # type: ignore[arg-type]


def test_length_mismatch_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="same length"):
        build_dpo_pairs(["p", "p"], ["c"], [1.0])
