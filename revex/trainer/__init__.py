"""TRL integration: rewards from the runtime, the training entry point and the tiny model.

Train with ``from revex.trainer.train import TrainConfig, train``.

Importing this package is cheap: torch, transformers and TRL are imported only when a model is
built or trained.
"""

from __future__ import annotations

from revex.trainer.dpo import build_dpo_pairs
from revex.trainer.env import RevexEnv
from revex.trainer.executor import (
    Score,
    TestRunner,
    score_completion,
    score_completions,
)
from revex.trainer.rewards import (
    CodeQualityReward,
    EfficiencyReward,
    ExecutionCache,
    ExecutionFeedbackReward,
    TestPassReward,
)
from revex.trainer.spec import RevexSpec
from revex.trainer.tasks import Task, builtin_tasks, load_humaneval, load_jsonl, load_tasks
from revex.trainer.tiny import TinySpec, build_tiny
from revex.trainer.train import TrainConfig, TrainResult

# ``train`` itself is not re-exported: a package attribute named ``train`` would shadow the
# ``revex.trainer.train`` module (``import revex.trainer.train as m`` would yield the function).

__all__ = [
    "CodeQualityReward",
    "EfficiencyReward",
    "ExecutionCache",
    "ExecutionFeedbackReward",
    "RevexEnv",
    "RevexSpec",
    "Score",
    "Task",
    "TestPassReward",
    "TestRunner",
    "TinySpec",
    "TrainConfig",
    "TrainResult",
    "build_dpo_pairs",
    "build_tiny",
    "builtin_tasks",
    "load_humaneval",
    "load_jsonl",
    "load_tasks",
    "score_completion",
    "score_completions",
]
