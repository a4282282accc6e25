"""The one seam between training and code execution: every completion is scored by the runtime.

Nothing here runs model output itself. :func:`score_completions` hands ``prompt + completion`` to
``runner.run_tests_many`` (a :class:`revex.Runtime`, policy ``training``), whose verdicts the code
under test cannot forge, and turns each ``TestReport`` into a :class:`Score`.
:class:`ExecutionReward` wraps that as a TRL reward function and logs safety metrics next to the
reward.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from revex.errors import ConfigError, PolicyViolation, RevexError
from revex.runtime.sandbox.base import Limits


class TestRunner(Protocol):
    """What the trainer needs from the runtime (``revex.Runtime`` satisfies it)."""

    def run_tests(self, *, solution: str, tests: str, entry_point: str,
                  limits: Limits) -> Any: ...

    def run_tests_many(self, *, solutions: list[str], tests: str, entry_point: str,
                       limits: Limits, concurrency: int) -> list[Any]: ...


# Patterns that try to win by ending or subverting the test process instead of solving the task.
# The runtime's verdicts do not trust exit codes or output, so these never earn reward; we count
# them so the run log shows how often the policy tries.
_HACK_PATTERNS = {
    "exit": re.compile(r"\b(?:sys\.exit|os\._exit|exit\s*\(|quit\s*\()"),
    "builtins": re.compile(r"__builtins__|\bimport\s+builtins\b|\bbuiltins\."),
    "signal": re.compile(r"\bos\.kill\b|\bsignal\.|\bos\.abort\b"),
    "frames": re.compile(
        r"\bsys\._getframe\b|\binspect\.(?:stack|currentframe)\b|\bgc\.get_objects\b"
    ),
}
_TERMINAL_STATUSES = ("timeout", "memory", "output_limit", "killed", "sandbox_error", "blocked")


def detect_reward_hack(completion: str) -> str | None:
    """Return the name of the first reward-hacking pattern in ``completion``, or None."""
    for name, pattern in _HACK_PATTERNS.items():
        if pattern.search(completion):
            return name
    return None


def truncate_completion(completion: str) -> str:
    """Keep the function body: cut at the first non-indented, non-blank line.

    This is the usual stop-sequence rule for HumanEval-style prompts (``\\ndef``, ``\\nclass``,
    ``\\nif``, ``\\nprint`` ...): what follows the body is not part of the answer.
    """
    lines = completion.split("\n")
    for i, line in enumerate(lines):
        if i > 0 and line.strip() and not line[0].isspace():
            return "\n".join(lines[:i]) + "\n"
    return completion


@dataclass(frozen=True)
class Score:
    """How one completion fared.

    reward: in [0, 1]; the pass rate, or 1/0 for all-pass when ``reward_mode="all_pass"``.
    passed, total: tests passed and run.
    statuses: the status of each test result, as the runtime reported it.
    hack: the reward-hacking pattern found in the completion, if any.
    blocked: the runtime refused to run it (a policy violation).
    error: a runtime error message when it could not be scored.
    """

    reward: float
    passed: int = 0
    total: int = 0
    statuses: tuple[str, ...] = ()
    hack: str | None = None
    blocked: bool = False
    error: str | None = None


def _status_name(result: Any) -> str:
    status = getattr(result, "status", "unknown")
    return str(getattr(status, "value", status))


def score_from_report(report: Any, completion: str, reward_mode: str = "pass_rate") -> Score:
    """Turn a runtime ``TestReport`` into a :class:`Score`."""
    total = int(report.total)
    passed = int(report.passed)
    if reward_mode == "all_pass":
        reward = 1.0 if total and passed == total else 0.0
    else:
        reward = float(report.pass_rate) if total else 0.0
    statuses = tuple(_status_name(r) for r in getattr(report, "results", ()) or ())
    return Score(reward=reward, passed=passed, total=total, statuses=statuses,
                 hack=detect_reward_hack(completion))


def score_completion(runner: TestRunner, prompt: str, completion: str, tests: str,
                     entry_point: str, *, limits: Limits,
                     reward_mode: str = "pass_rate") -> Score:
    """Score one ``prompt + completion`` with ``runner.run_tests``; see :func:`score_completions`.

    Raises:
        ConfigError: ``reward_mode`` is unknown.
    """
    if reward_mode not in ("pass_rate", "all_pass"):
        raise ConfigError(f"reward_mode must be 'pass_rate' or 'all_pass', got {reward_mode!r}")
    body = truncate_completion(completion)
    try:
        report = runner.run_tests(solution=prompt + body, tests=tests, entry_point=entry_point,
                                  limits=limits)
    except PolicyViolation as exc:
        return Score(0.0, blocked=True, error=str(exc), hack=detect_reward_hack(body))
    except RevexError as exc:
        return Score(0.0, error=f"{type(exc).__name__}: {exc}", hack=detect_reward_hack(body))
    return score_from_report(report, body, reward_mode)


def score_completions(runner: TestRunner, prompts: Sequence[str], completions: Sequence[str],
                      tests: Sequence[str], entry_points: Sequence[str], *, limits: Limits,
                      concurrency: int = 2, reward_mode: str = "pass_rate") -> list[Score]:
    """Score each ``prompt + completion`` against its tests in the runtime.

    Completions that share ``(tests, entry_point)`` (the generations of one prompt) go to the
    runtime in one ``run_tests_many`` call. A policy refusal scores 0 with ``blocked=True``; any
    other runtime error scores 0 with ``error`` set; neither stops training.

    Raises:
        ConfigError: the sequences differ in length or ``reward_mode`` is unknown.
    """
    n = len(completions)
    if not (len(prompts) == len(tests) == len(entry_points) == n):
        raise ConfigError("prompts, completions, tests and entry_points must have equal length")
    if reward_mode not in ("pass_rate", "all_pass"):
        raise ConfigError(f"reward_mode must be 'pass_rate' or 'all_pass', got {reward_mode!r}")
    groups: dict[tuple[str, str], list[int]] = {}
    for i in range(n):
        groups.setdefault((tests[i], entry_points[i]), []).append(i)
    scores: list[Score | None] = [None] * n
    for (test_src, entry_point), idx in groups.items():
        bodies = [truncate_completion(completions[i]) for i in idx]
        solutions = [prompts[i] + body for i, body in zip(idx, bodies, strict=True)]
        try:
            reports = runner.run_tests_many(solutions=solutions, tests=test_src,
                                            entry_point=entry_point, limits=limits,
                                            concurrency=concurrency)
        except PolicyViolation as exc:
            for i, body in zip(idx, bodies, strict=True):
                scores[i] = Score(0.0, blocked=True, error=str(exc), hack=detect_reward_hack(body))
            continue
        except RevexError as exc:
            for i, body in zip(idx, bodies, strict=True):
                scores[i] = Score(0.0, error=f"{type(exc).__name__}: {exc}",
                                  hack=detect_reward_hack(body))
            continue
        for i, body, report in zip(idx, bodies, reports, strict=True):
            scores[i] = score_from_report(report, body, reward_mode)
    return [s for s in scores if s is not None]


def safety_metrics(scores: Sequence[Score]) -> dict[str, float]:
    """Fractions of completions that hit a limit, were blocked, errored or tried a reward hack."""
    n = max(len(scores), 1)
    hit: Counter[str] = Counter()
    for s in scores:
        for status in set(s.statuses) & set(_TERMINAL_STATUSES):
            hit[status] += 1
    metrics = {f"safety/{status}": hit[status] / n for status in _TERMINAL_STATUSES}
    metrics["safety/blocked"] = (hit["blocked"] + sum(s.blocked for s in scores)) / n
    metrics["safety/reward_hacks"] = sum(s.hack is not None for s in scores) / n
    metrics["safety/runtime_errors"] = sum(s.error is not None and not s.blocked
                                           for s in scores) / n
    metrics["exec/pass_all"] = sum(s.total > 0 and s.passed == s.total for s in scores) / n
    return metrics


@dataclass
class ExecutionReward:
    """A TRL reward function (GRPO, RLOO) that scores completions in the revex runtime.

    Call signature is TRL's: ``(prompts, completions, *, tests, entry_point, log_metric=None,
    **kwargs) -> list[float]``; ``tests`` and ``entry_point`` are dataset columns. Safety metrics
    are reported through TRL's ``log_metric`` and kept in ``history`` (one dict per call).
    """

    runner: TestRunner
    limits: Limits = field(default_factory=lambda: Limits(wall_s=5, memory_mb=256))
    concurrency: int = 2
    reward_mode: str = "pass_rate"
    history: list[dict[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.__name__ = "exec_pass_rate"  # TRL names the logged reward after this

    def __call__(self, prompts: list[Any], completions: list[Any], *, tests: list[str],
                 entry_point: list[str], log_metric: Callable[[str, float], None] | None = None,
                 **kwargs: Any) -> list[float]:
        prompt_texts = [_as_text(p) for p in prompts]
        completion_texts = [_as_text(c) for c in completions]
        scores = score_completions(self.runner, prompt_texts, completion_texts, tests,
                                   entry_point, limits=self.limits,
                                   concurrency=self.concurrency, reward_mode=self.reward_mode)
        metrics = safety_metrics(scores)
        self.history.append(metrics)
        if log_metric is not None:
            for name, value in metrics.items():
                log_metric(name, value)
        return [s.reward for s in scores]


def _as_text(message: Any) -> str:
    """A plain-string prompt/completion, or the content of a conversational one."""
    if isinstance(message, str):
        return message
    if isinstance(message, list) and message and isinstance(message[-1], dict):
        return str(message[-1].get("content", ""))
    raise ConfigError(f"cannot read a prompt or completion of type {type(message).__name__}")


def open_runtime(state_dir: str, policy: str = "training") -> TestRunner:
    """Open the revex runtime that scores completions.

    Raises:
        ConfigError: the runtime is not available in this installation.
    """
    try:
        from revex import Runtime
    except ImportError as exc:
        raise ConfigError("revex.Runtime is not available; the trainer needs the runtime to "
                          "execute completions") from exc
    runner: TestRunner = Runtime(state_dir=state_dir, policy=policy)
    return runner
