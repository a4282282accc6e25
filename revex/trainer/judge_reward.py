"""A TRL reward for datasets in the shapes RL code datasets use (APPS, CodeContests, TACO,
LiveCodeBench, MBPP, HumanEval, verl), through the dataset columns ``test_cases`` and
``language``; no glue code.

Each completion is judged in its own episode on a fresh temporary workspace, always rolled back
(one ``exec.tests`` action each, visible in the journal), with the judge's unforgeable verdicts
(see :mod:`revex.judge`). Its code is the last fenced block of the completion (```` ```cpp ...
``` ````), else the whole text; a fence's language tag is used when the row names none.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from revex.errors import ConfigError, PolicyViolation, RevexError
from revex.runtime.sandbox.base import Limits
from revex.trainer.executor import as_text

_FENCE = re.compile(r"```([A-Za-z0-9+#_-]*)[^\n]*\n(.*?)```", re.DOTALL)
_TAGS = {"py": "python", "python3": "python", "c++": "cpp", "cc": "cpp", "cxx": "cpp",
         "js": "javascript", "node": "javascript", "sh": "bash", "shell": "bash",
         "golang": "go", "rs": "rust"}


def extract_code(completion: str) -> tuple[str, str | None]:
    """The code of a completion and the language its fence names (``None`` if untagged)."""
    blocks = _FENCE.findall(completion)
    if not blocks:
        return completion, None
    tag, body = blocks[-1]
    tag = tag.lower()
    return body, (_TAGS.get(tag, tag) or None)


def _column(kwargs: dict[str, Any], name: str, n: int, default: Any = None) -> list[Any]:
    values = kwargs.get(name, default)
    if values is None:
        raise ConfigError(f"the dataset has no {name!r} column; JudgeReward needs it")
    if isinstance(values, str | dict) or not isinstance(values, Sequence):
        return [values] * n
    values = list(values)
    if len(values) != n:
        raise ConfigError(f"column {name!r} has {len(values)} values for {n} completions")
    return values


class JudgeReward:
    """Fraction of a row's test cases the completion passes (``reward_mode="pass_rate"``) or
    1/0 (``"all_pass"``, with early stop on the first failing case).

    Args:
        runtime: a :class:`revex.Runtime` (policy ``training`` for training).
        limits: per-case run limits (default: the language's).
        concurrency: completions judged in parallel (one episode each).
        name: the name TRL logs the reward under.

    Raises:
        ConfigError: a bad ``concurrency`` or ``reward_mode``; at call time a missing
            ``test_cases`` column or a malformed row (the message names the field).
    """

    def __init__(self, runtime: Any, *, limits: Limits | None = None, concurrency: int = 2,
                 reward_mode: str = "pass_rate", name: str = "judge") -> None:
        if concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1, got {concurrency!r}")
        if reward_mode not in ("pass_rate", "all_pass"):
            raise ConfigError(f"reward_mode must be 'pass_rate' or 'all_pass', "
                              f"got {reward_mode!r}")
        self.runtime, self.limits = runtime, limits
        self.concurrency, self.reward_mode = concurrency, reward_mode
        self.__name__ = name
        self.last_results: list[Any] = []

    def one(self, code: str, cases: Any, language: str) -> tuple[float, Any]:
        """Judge one program in a fresh, rolled-back episode: (reward, JudgeResult or the
        error). A policy refusal or a revex failure scores 0."""
        with tempfile.TemporaryDirectory(prefix="revex-judge-") as workspace:
            try:
                with self.runtime.episode(workspace, on_exit="rollback") as ep:
                    res = ep.judge(code, cases, language=language, limits=self.limits,
                                   stop_on_first_failure=self.reward_mode == "all_pass")
            except (PolicyViolation, RevexError) as exc:
                if isinstance(exc, ConfigError):
                    raise
                return 0.0, exc
        if self.reward_mode == "all_pass":
            return (1.0 if res.all_passed else 0.0), res
        return res.pass_rate, res

    def __call__(self, prompts: list[Any], completions: list[Any],
                 **kwargs: Any) -> list[float | None]:
        n = len(completions)
        cases = _column(kwargs, "test_cases", n)
        langs = _column(kwargs, "language", n, default=[None] * n)
        jobs = []
        for completion, row_cases, lang in zip(completions, cases, langs, strict=True):
            code, tag = extract_code(as_text(completion))
            jobs.append((code, row_cases, lang or tag or "python"))
        getattr(self.runtime, "backend", None)  # choose the backend before threads share it
        with ThreadPoolExecutor(max_workers=min(self.concurrency, max(n, 1))) as pool:
            out = list(pool.map(lambda j: self.one(*j), jobs))
        self.last_results = [r for _, r in out]
        return [reward for reward, _ in out]
