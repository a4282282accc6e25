"""Held-out evaluation through the runtime: pass@1 (greedy) and pass@k (sampled, the unbiased
estimator of Chen et al. 2021), during training (a TrainerCallback every N steps) and on a
saved model directory (``revex eval model DIR``).

A task counts as solved by a completion when every one of its tests passes; completions are
scored like training rewards, each in its own rolled-back episode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from revex.trainer.tasks import Task


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of ``k`` samples drawn from ``n`` (``c`` correct) passes."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


@dataclass(frozen=True)
class EvalResult:
    pass_at_1: float
    pass_at_k: float
    k: int
    tasks: int

    def metrics(self) -> dict[str, float]:
        return {"eval/pass@1": self.pass_at_1, f"eval/pass@{self.k}": self.pass_at_k}


def split_tasks(tasks: Sequence[Task], fraction: float, seed: int = 0
                ) -> tuple[list[Task], list[Task]]:
    """(train, held out), disjoint, about ``fraction`` of the tasks held out (seeded).

    Tasks with a ``family`` are split within their family: families are visited in a seeded
    order and each gives up one seeded member per round, never its last training member, so a
    held-out task always has relatives (the same structure, other names) in training. Tasks
    without a family are held out after a seeded shuffle, as before. ``fraction`` 0 holds
    nothing out.
    """
    import random

    if fraction <= 0:
        return list(tasks), []
    rng = random.Random(seed)
    n_eval = max(1, round(len(tasks) * fraction))
    families: dict[str, list[Task]] = {}
    for task in tasks:
        if task.family is not None:
            families.setdefault(task.family, []).append(task)
    if not any(len(members) > 1 for members in families.values()):
        order = list(tasks)
        rng.shuffle(order)
        return order[n_eval:], order[:n_eval]
    pools = [list(members) for members in families.values()]
    rng.shuffle(pools)
    for members in pools:
        rng.shuffle(members)
    held: list[Task] = []
    while len(held) < n_eval and any(len(m) > 1 for m in pools):
        for members in pools:
            if len(held) < n_eval and len(members) > 1:
                held.append(members.pop())
    taken = {id(t) for t in held}
    return [t for t in tasks if id(t) not in taken], held


def evaluate(model: Any, tokenizer: Any, tasks: Sequence[Task], reward: Any, *, k: int = 4,
             samples: int = 8, max_new_tokens: int = 24, temperature: float = 0.7,
             seed: int = 0, top_k: int = 0, top_p: float = 1.0) -> EvalResult:
    """pass@1 of greedy completions and pass@k of ``samples`` sampled ones per task.

    ``reward`` is a :class:`~revex.trainer.rewards.TestPassReward` (its runtime runs the tests).
    """
    import torch

    from revex.trainer.dpo import generate_batched, sample_completions

    was_training = model.training
    device = next(model.parameters()).device
    prompts = [t.prompt for t in tasks]
    greedy = [outs[0] for outs in generate_batched(model, tokenizer, prompts, batch_size=16,
                                                   do_sample=False,
                                                   max_new_tokens=max_new_tokens)]
    # sampling seeds torch's RNG; fork it so an evaluation during training leaves the
    # training's own sampling sequence as it was
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        sampled = sample_completions(model, tokenizer, prompts, num_samples=samples,
                                     max_new_tokens=max_new_tokens, temperature=temperature,
                                     seed=seed, top_k=top_k, top_p=top_p)
    if was_training:
        model.train()
    solved = _solved(reward, tasks, [[g] for g in greedy])
    per_task = _solved(reward, tasks, sampled)
    p1 = sum(s[0] for s in solved) / len(tasks)
    pk = sum(pass_at_k(samples, sum(s), min(k, samples)) for s in per_task) / len(tasks)
    return EvalResult(p1, pk, k, len(tasks))


def _solved(reward: Any, tasks: Sequence[Task], completions: Sequence[Sequence[str]]
            ) -> list[list[bool]]:
    prompts, texts, tests, entries, owner = [], [], [], [], []
    for i, (task, outs) in enumerate(zip(tasks, completions, strict=True)):
        for text in outs:
            prompts.append(task.prompt)
            texts.append(text)
            tests.append(task.tests)
            entries.append(task.entry_point)
            owner.append(i)
    scores = reward.score(prompts, texts, tests, entries)
    out: list[list[bool]] = [[] for _ in tasks]
    for i, score in zip(owner, scores, strict=True):
        out[i].append(score.total > 0 and score.passed == score.total)
    return out


def eval_callback(every: int, evaluate_now: Any, recorder: Any) -> Any:
    """A TrainerCallback that records ``evaluate_now(model).metrics()`` every ``every`` steps
    and at the end of training."""
    from transformers import TrainerCallback

    class _Eval(TrainerCallback):
        last = -1

        def _run(self, state: Any, model: Any) -> None:
            if state.global_step == self.last or model is None:
                return
            self.last = state.global_step
            recorder.add(state.global_step, evaluate_now(model).metrics())

        def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None,
                        **kw: Any) -> None:
            if every and state.global_step % every == 0:
                self._run(state, model)

        def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None,
                         **kw: Any) -> None:
            self._run(state, model)

    return _Eval()
