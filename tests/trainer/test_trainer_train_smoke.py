"""End-to-end runs of train() with the canned runner (no code is executed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import CannedRunner, returns_rule

from revex.trainer.tiny import TinySpec, build_tiny
from revex.trainer.train import TrainConfig, train

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("tiny")
    return build_tiny(TinySpec(warm_start_steps=20, stdlib_files=40), cache_dir=cache)


def _config(tmp_path: Path, model: Path, **changes: object) -> TrainConfig:
    base = {"output_dir": str(tmp_path / "run"), "model": str(model),
            "max_steps": 2, "prompts_per_step": 1,
            "num_generations": 4, "max_completion_length": 8, "progress": False}
    base.update(changes)
    return TrainConfig(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_policy_gradient_run_writes_log_and_plot(tmp_path: Path, tiny_model: Path,
                                                 algorithm: str) -> None:
    runner = CannedRunner(returns_rule)
    config = _config(tmp_path, tiny_model, algorithm=algorithm)
    result = train(config, runner=runner)
    doc = json.loads(result.log_path.read_text())
    assert [s["step"] for s in doc["steps"]] == [1.0, 2.0]
    assert {"reward", "safety/timeout", "safety/forgery_detected"} <= set(doc["steps"][0])
    assert doc["summary"]["steps_logged"] == 2
    assert result.plot_path.read_bytes()[:4] == b"\x89PNG"
    assert runner.calls, "rewards must come from the runner"


def test_dpo_run_samples_scores_and_trains(tmp_path: Path, tiny_model: Path) -> None:
    runner = CannedRunner(returns_rule)
    config = _config(tmp_path, tiny_model, algorithm="dpo", num_generations=6)
    result = train(config, runner=runner)
    steps = json.loads(result.log_path.read_text())["steps"]
    assert steps[0]["step"] == 0 and "reward" in steps[0]
    assert steps[-1]["step"] == 2 and steps[-1]["dpo_pairs"] > 0
    assert any("loss" in s for s in steps)
