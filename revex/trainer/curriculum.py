"""Curricula for GRPO/RLOO: which tasks each step's batch draws.

- ``difficulty``: tasks in order of their ``difficulty`` (easy first), no shuffling.
- ``pass_rate``: each batch draws tasks with probability proportional to ``p (1 - p) + floor``,
  where ``p`` is the task's running pass rate under the current policy (a task not yet seen
  counts as ``p = 0.5``). Tasks that are always or never solved teach GRPO nothing (their group
  has no reward variance), so the batch concentrates on the frontier; the floor keeps every task
  in play. The running rate is an exponential average of the test-pass reward of the task's
  completions, fed by :class:`PassRateTracker` wrapping the test-pass reward.

The run log gets ``curriculum/frontier`` (share of drawn tasks with 0 < p < 1) and
``curriculum/mean_p`` (mean running pass rate over all tasks) per step.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator, Sequence
from typing import Any

CURRICULA = ("off", "difficulty", "pass_rate")


class PassRateTracker:
    """Running pass rate per prompt, updated from the test-pass reward of each batch.

    Wraps a reward callable (keeping its ``__name__``) so TRL calls it as before.
    """

    def __init__(self, reward: Any, prompts: Sequence[str], alpha: float = 0.3,
                 floor: float = 0.05) -> None:
        self.reward = reward
        self.__name__ = reward.__name__
        self.index = {p: i for i, p in enumerate(prompts)}
        self.rates: list[float | None] = [None] * len(prompts)
        self.alpha, self.floor = alpha, floor
        self.drawn: list[int] = []
        self._lock = threading.Lock()

    def __call__(self, prompts: list[Any], completions: list[Any],
                 **kwargs: Any) -> list[float | None]:
        rewards: list[float | None] = self.reward(prompts, completions, **kwargs)
        per: dict[int, list[float]] = {}
        for prompt, value in zip(prompts, rewards, strict=True):
            i = self.index.get(prompt if isinstance(prompt, str) else str(prompt))
            if i is not None and value is not None:
                per.setdefault(i, []).append(float(value))
        with self._lock:
            for i, values in per.items():
                mean = sum(values) / len(values)
                old = self.rates[i]
                self.rates[i] = mean if old is None else (1 - self.alpha) * old + self.alpha * mean
            seen = [r for r in self.rates if r is not None]
            frontier = [i for i in per if 0.0 < (self.rates[i] or 0.0) < 1.0]
        log = kwargs.get("log_metric")
        if log is not None:
            log("curriculum/frontier", len(frontier) / max(len(per), 1))
            log("curriculum/mean_p", sum(seen) / len(seen) if seen else 0.0)
        return rewards

    def weights(self) -> list[float]:
        with self._lock:
            return [(0.25 if r is None else r * (1 - r)) + self.floor for r in self.rates]


def curriculum_sampler(base: Any, tracker: PassRateTracker, seed: int) -> Any:
    """A sampler with the layout of TRL's ``RepeatSampler`` ``base`` (each drawn index repeated
    ``mini_repeat_count`` times, each batch ``repeat_count`` times) whose indices are drawn by
    :meth:`PassRateTracker.weights` at the time each batch is produced."""
    from torch.utils.data import Sampler

    class _Sampler(Sampler[int]):
        def __init__(self) -> None:
            self.rng = random.Random(seed)

        def __len__(self) -> int:
            n = base.num_samples // base.batch_size * base.batch_size
            return int(n * base.mini_repeat_count * base.repeat_count)

        def __iter__(self) -> Iterator[int]:
            for _ in range(base.num_samples // base.batch_size):
                weights = tracker.weights()
                chosen: list[int] = []
                pool = list(range(base.num_samples))
                for _ in range(base.batch_size):  # without replacement within a batch
                    pick = self.rng.choices(range(len(pool)), [weights[i] for i in pool])[0]
                    chosen.append(pool.pop(pick))
                tracker.drawn.extend(chosen)
                for _ in range(base.repeat_count):
                    for index in chosen:
                        for _ in range(base.mini_repeat_count):
                            yield index

    return _Sampler()
