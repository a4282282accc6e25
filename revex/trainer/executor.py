"""The one seam between training and code execution: every completion is scored by the runtime.

Nothing here runs model output itself. :func:`score_completions` hands each
``prompt + completion`` to ``ep.run_tests`` in a fresh episode of the runtime (a
:class:`revex.Runtime`, policy ``training``) that is always rolled back; the verdicts cannot be
forged by the code under test. Each ``TestReport`` becomes a :class:`Score`. The TRL reward
functions built on this live in :mod:`revex.trainer.rewards`.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from revex.errors import ConfigError, PolicyViolation, RevexError
from revex.runtime.sandbox.base import Limits


class EpisodeLike(Protocol):
    """What scoring needs from an episode (``revex.runtime.episode.Episode`` satisfies it)."""

    id: str

    def run_tests(self, solution: str, tests: str, entry_point: str, *,
                  limits: Limits | None = None) -> Any: ...

    def __enter__(self) -> EpisodeLike: ...

    def __exit__(self, *exc: object) -> None: ...


class TestRunner(Protocol):
    """What the trainer needs from the runtime (``revex.Runtime`` satisfies it): episodes."""

    def episode(self, workspace: str | Path, **options: Any) -> Any: ...


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
    report: the runtime's ``TestReport`` (None when it could not be scored).
    episode_id: the (rolled back) episode the tests ran in.
    """

    reward: float
    passed: int = 0
    total: int = 0
    statuses: tuple[str, ...] = ()
    hack: str | None = None
    blocked: bool = False
    error: str | None = None
    report: Any = field(default=None, compare=False, repr=False)
    episode_id: str | None = None


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
                 hack=detect_reward_hack(completion), report=report)


def score_in_episode(runner: TestRunner, solution: str, tests: str, entry_point: str, *,
                     limits: Limits, reward_mode: str = "pass_rate",
                     hack: str | None = None) -> Score:
    """Run ``tests`` against ``solution`` in a fresh episode that is always rolled back.

    The episode acts on a fresh temporary workspace, so every scored solution appears in the
    journal as its own episode with one ``exec.tests`` action and status ``rolled_back``. A
    policy refusal scores 0 with ``blocked=True``; any other runtime error scores 0 with
    ``error`` set.
    """
    episode_id: str | None = None
    with tempfile.TemporaryDirectory(prefix="revex-score-") as workspace:
        try:
            with runner.episode(workspace, on_exit="rollback") as ep:
                episode_id = ep.id
                report = ep.run_tests(solution, tests, entry_point, limits=limits)
        except PolicyViolation as exc:
            return Score(0.0, blocked=True, error=str(exc), hack=hack, episode_id=episode_id)
        except RevexError as exc:
            return Score(0.0, error=f"{type(exc).__name__}: {exc}", hack=hack,
                         episode_id=episode_id)
    return dataclasses.replace(score_from_report(report, solution, reward_mode), hack=hack,
                               episode_id=episode_id)


def score_completion(runner: TestRunner, prompt: str, completion: str, tests: str,
                     entry_point: str, *, limits: Limits,
                     reward_mode: str = "pass_rate") -> Score:
    """Score one ``prompt + completion``; see :func:`score_completions`.

    Raises:
        ConfigError: ``reward_mode`` is unknown.
    """
    return score_completions(runner, [prompt], [completion], [tests], [entry_point],
                             limits=limits, concurrency=1, reward_mode=reward_mode)[0]


def score_completions(runner: TestRunner, prompts: Sequence[str], completions: Sequence[str],
                      tests: Sequence[str], entry_points: Sequence[str], *, limits: Limits,
                      concurrency: int = 2, reward_mode: str = "pass_rate") -> list[Score]:
    """Score each ``prompt + completion`` against its tests, each in its own episode.

    Completions run ``concurrency`` at a time (threads; one Runtime serves many episodes). The
    solution is ``prompt`` plus the completion cut at its first top-level line (see
    :func:`truncate_completion`). Neither a refusal nor a runtime error stops training: they
    score 0 (see :func:`score_in_episode`).

    Raises:
        ConfigError: the sequences differ in length, ``reward_mode`` is unknown or
            ``concurrency`` < 1.
    """
    n = len(completions)
    if not (len(prompts) == len(tests) == len(entry_points) == n):
        raise ConfigError("prompts, completions, tests and entry_points must have equal length")
    if reward_mode not in ("pass_rate", "all_pass"):
        raise ConfigError(f"reward_mode must be 'pass_rate' or 'all_pass', got {reward_mode!r}")
    if concurrency < 1:
        raise ConfigError(f"concurrency must be >= 1, got {concurrency!r}")
    bodies = [truncate_completion(c) for c in completions]

    def one(i: int) -> Score:
        return score_in_episode(runner, prompts[i] + bodies[i], tests[i], entry_points[i],
                                limits=limits, reward_mode=reward_mode,
                                hack=detect_reward_hack(bodies[i]))

    if concurrency == 1 or n <= 1:
        return [one(i) for i in range(n)]
    getattr(runner, "backend", None)  # start the lazily created sandbox before threads share it
    with ThreadPoolExecutor(max_workers=min(concurrency, n)) as pool:
        return list(pool.map(one, range(n)))


def as_text(message: Any) -> str:
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
