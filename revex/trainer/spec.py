"""``RevexSpec``: one object whose ``.train_dataset``, ``.environment_factory`` and
``.reward_funcs`` go straight into TRL's ``GRPOTrainer``, after the pattern of TRL's own
``OpenRewardSpec`` and ``HarborSpec``::

    spec = RevexSpec("builtin")                    # or "humaneval", a .jsonl path, Task list
    trainer = GRPOTrainer(model=..., args=..., train_dataset=spec.train_dataset,
                          environment_factory=spec.environment_factory,
                          reward_funcs=spec.reward_funcs)
    trainer.train()
    spec.close()                                   # roll back the last rollouts

Each rollout acts in its own episode on a fresh workspace under the ``training`` policy (see
:class:`revex.trainer.env.RevexEnv`); the reward is the environment's ``get_reward()`` (the
pass rate of the rollout's last ``run_tests``, else of its ``solution.py``), which TRL adds as a
reward named after the environment class and which TRL's async GRPO calls too. So
``reward_funcs`` is empty by default: a second reward over the same tests would count them
twice. Tool calls are bounded by ``limits`` (each code run's wall, CPU and memory limits).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from typing import Any

from revex.errors import ConfigError
from revex.runtime.sandbox.base import Limits
from revex.trainer.env import RevexEnv
from revex.trainer.tasks import Task, load_tasks

DEFAULT_TOOL_LIMITS = Limits(wall_s=5.0, cpu_s=5.0, memory_mb=256)

SYSTEM = ("Solve the task with the tools. Write your solution to solution.py and check it with "
          "run_tests before you answer.")


class RevexSpec:
    """Dataset, environment and rewards for GRPOTrainer, all through one revex runtime.

    Args:
        tasks: ``"builtin"``, ``"humaneval"``, a path to a ``.jsonl`` file of
            ``{prompt, tests, entry_point}`` rows, or a sequence of :class:`Task`.
        runtime: a :class:`revex.Runtime`; default: one with the ``training`` policy in a fresh
            temporary state directory, closed by :meth:`close`.
        limits: limits of each code run a tool makes (its timeout).
        num_tasks: use only the first ``num_tasks`` tasks.
        system_prompt: prepended to each task's prompt as a system message.

    Raises:
        ConfigError: an unknown task source, an empty task list, a bad ``num_tasks``.
    """

    def __init__(self, tasks: str | Sequence[Task] = "builtin", *, runtime: Any = None,
                 limits: Limits = DEFAULT_TOOL_LIMITS, num_tasks: int | None = None,
                 system_prompt: str = SYSTEM) -> None:
        from revex.trainer.tasks import to_dataset

        loaded = load_tasks(tasks) if isinstance(tasks, str) else list(tasks)
        if num_tasks is not None:
            if not isinstance(num_tasks, int) or num_tasks <= 0:
                raise ConfigError(f"num_tasks must be a positive integer, got {num_tasks!r}")
            loaded = loaded[:num_tasks]
        if not loaded:
            raise ConfigError("RevexSpec needs at least one task")
        self.tasks = loaded
        self._owns_runtime = runtime is None
        if runtime is None:
            from revex.runtime.runtime import Runtime

            runtime = Runtime(state_dir=tempfile.mkdtemp(prefix="revex-spec-state-"),
                              policy="training", audit=None)
        self.runtime = runtime
        dataset = to_dataset(loaded)
        self.train_dataset = dataset.map(
            lambda row: {"prompt": [{"role": "system", "content": system_prompt},
                                    {"role": "user", "content": row["prompt"]}]})
        self.environment_factory: type[RevexEnv] = RevexEnv.bind(runtime, limits=limits)
        self.reward_funcs: list[Any] = []

    def close(self) -> int:
        """Roll back the rollouts still open; close the runtime if the spec made it. Returns
        the number of episodes rolled back."""
        undone = self.environment_factory.end_all()
        if self._owns_runtime:
            self.runtime.close()
        return undone

    def __enter__(self) -> RevexSpec:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
