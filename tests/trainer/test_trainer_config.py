from __future__ import annotations

import dataclasses
import subprocess
import sys
from typing import Any

import pytest

from revex.errors import ConfigError
from revex.trainer.tiny import TinySpec
from revex.trainer.train import TrainConfig, field_docs


def test_default_config_is_valid_and_every_field_is_documented() -> None:
    TrainConfig().validate()
    docs = field_docs(TrainConfig)
    assert set(docs) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert all(docs.values())
    assert docs["algorithm"].startswith('"grpo", "rloo" or "dpo"')


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"algorithm": "ppo"}, "algorithm must be one of grpo, rloo, dpo"),
        ({"device": "tpu"}, "device must be"),
        ({"reward_mode": "best"}, "reward_mode"),
        ({"max_steps": 0}, "max_steps must be a positive integer"),
        ({"prompts_per_step": 1.5}, "prompts_per_step must be a positive integer"),
        ({"num_generations": 1}, "num_generations must be >= 2"),
        ({"learning_rate": 0.0}, "learning_rate must be > 0"),
        ({"temperature": -1.0}, "temperature must be > 0"),
        ({"wall_s": 0}, "wall_s must be > 0"),
        ({"beta": -0.1}, "beta must be >= 0"),
        ({"scale_rewards": "prompt"}, "scale_rewards must be"),
        ({"tiny_warm_start_steps": -1}, "tiny_warm_start_steps"),
        ({"tiny_rename_copies": -1}, "tiny_rename_copies"),
        ({"tiny_rename_copies": 33}, "tiny_rename_copies"),
        ({"tiny_rename_copies": 1.5}, "tiny_rename_copies"),
        ({"model": ""}, "model must be"),
    ],
)
def test_invalid_config_raises_config_error_naming_the_field(changes: dict[str, Any],
                                                             match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        dataclasses.replace(TrainConfig(), **changes).validate()


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"hidden_size": 0}, "hidden_size"),
        ({"hidden_size": 66}, "divide"),
        ({"warm_start_lr": 0.0}, "warm_start_lr"),
        ({"vocab_size": 100}, "vocab_size"),
    ],
)
def test_invalid_tiny_spec_raises_config_error(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        TinySpec(**changes)


def test_tiny_spec_digest_changes_with_any_field() -> None:
    base = TinySpec()
    assert base.digest() == TinySpec().digest()
    assert base.digest() != TinySpec(warm_start_steps=base.warm_start_steps + 1).digest()
    assert base.digest() != TinySpec(seed=1).digest()


def test_importing_the_trainer_does_not_import_torch_or_trl() -> None:
    code = ("import sys, revex, revex.trainer, revex.trainer.train, revex.trainer.tiny, "
            "revex.trainer.dpo, revex.trainer.runlog; "
            "heavy = {'torch', 'trl', 'transformers', 'datasets', 'matplotlib'} & set(sys.modules);"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_trainer_public_names_are_sorted_and_importable() -> None:
    import importlib

    import revex.trainer as trainer

    assert trainer.__all__ == sorted(trainer.__all__)
    for name in trainer.__all__:
        assert getattr(trainer, name) is not None
    # the train module stays reachable as a module, not shadowed by the train function
    assert callable(importlib.import_module("revex.trainer.train").train)


class _CharTokenizer:
    def __call__(self, text: str) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for c in text]}


def test_fit_tasks_drops_prompts_longer_than_the_context() -> None:
    from revex.trainer.tasks import Task
    from revex.trainer.train import fit_tasks

    short = Task("s", "def f():\n", "assert 1", "f")
    long = Task("l", "def g():\n" + "#" * 100 + "\n", "assert 1", "g")
    kept, skipped = fit_tasks([short, long], _CharTokenizer(), 64, 16)
    assert kept == [short] and skipped == ["l"]
    assert fit_tasks([long], _CharTokenizer(), None, 16) == ([long], [])
    with pytest.raises(ConfigError, match="no task prompt fits"):
        fit_tasks([long], _CharTokenizer(), 64, 16)


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
def test_grpo_config_gets_the_reward_weights_and_advantage_scaling() -> None:
    from trl import GRPOConfig

    from revex.trainer.train import policy_gradient_args

    config = TrainConfig(rewards="test_pass:1.0,exec_feedback:0.1", scale_rewards="batch",
                         output_dir="unused")
    args = GRPOConfig(**policy_gradient_args(config))
    assert args.reward_weights == [1.0, 0.1]
    assert args.scale_rewards == "batch"
    rloo = policy_gradient_args(dataclasses.replace(config, algorithm="rloo"))
    assert "scale_rewards" not in rloo  # RLOO's advantages are not scaled per group
