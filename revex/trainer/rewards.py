"""TRL reward functions whose every execution goes through the revex runtime.

Each reward is an object with a ``__name__`` (TRL logs ``rewards/<name>/mean``) and TRL's call
signature ``(prompts, completions, **kwargs) -> list[float | None]``; dataset columns
(``tests``, ``entry_point``, ``reference``) arrive as keyword lists. Pass them directly as
``GRPOTrainer``/``RLOOTrainer`` ``reward_funcs``; ``reward.as_async()`` is the async flavour
(TRL gathers async rewards concurrently on its event-loop thread).

- :class:`TestPassReward`: fraction of tests passed, each completion in a fresh episode that is
  always rolled back (one ``exec.tests`` action each, visible in the journal).
- :class:`ExecutionFeedbackReward`: penalties for syntax errors, runtime errors, timeouts,
  memory, early exits / protocol violations (forgery attempts) and policy denials.
- :class:`CodeQualityReward`: ruff and bandit findings on the text; nothing is executed.
- :class:`EfficiencyReward`: sandbox CPU time of the row's ``reference`` over the completion's.

Rewards that execute share an :class:`ExecutionCache`, so scoring one completion with several
of them runs its tests once. They need no arguments: ``reward_funcs=[TestPassReward()]`` creates
(on first use) a :class:`revex.Runtime` with the ``training`` policy whose state lives under
the user cache dir (:func:`default_reward_state_dir`); pass ``runtime=`` to choose your own (or
to share one between rewards). Every reward reports safety metrics through TRL's ``log_metric``
(``safety/*``) and keeps them in ``history``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from revex import _pyast
from revex.errors import ConfigError, PolicyViolation, RevexError
from revex.runtime.sandbox.base import Limits
from revex.trainer.executor import (
    Score,
    TestRunner,
    as_text,
    detect_reward_hack,
    score_in_episode,
    truncate_completion,
)

LogMetric = Callable[[str, float], None]
DEFAULT_LIMITS = Limits(wall_s=5.0, cpu_s=5.0, memory_mb=256)

# What a completion's run came to, worst first; one per completion (see :func:`outcome`).
OUTCOMES = ("blocked", "sandbox_error", "protocol", "early_exit", "syntax", "timeout", "memory",
            "runtime_error", "wrong", "passed")
# Harness messages for a reply that is not what an honest function sends.
_PROTOCOL_MARKERS = ("not plain data", "protocol violation", "malformed reply", "reply too large")


def outcome(score: Score) -> str:
    """Classify one scored completion into one of :data:`OUTCOMES` from its ``TestReport``.

    The verdict statuses come from the runtime's harness: ``error`` means the solution's process
    ended (an exit, a kill or a limit) or broke the call protocol; ``failed`` with a message
    other than "assertion is false" means the solution raised.
    """
    if score.blocked:
        return "blocked"
    if score.error is not None or score.report is None:
        return "sandbox_error"
    report = score.report
    messages = [str(report.message)] + [str(r.message) for r in report.results]
    statuses = [str(r.status) for r in report.results]
    if any(m in msg for msg in messages for m in _PROTOCOL_MARKERS):
        return "protocol"
    if "did not load" in report.message and "SyntaxError" in report.message:
        return "syntax"
    if "timeout" in statuses or "timed out" in report.message:
        return "timeout"
    if any("MemoryError" in msg for msg in messages):
        return "memory"
    if "error" in statuses or report.message:
        return "early_exit"
    if any(s == "failed" and r.message != "assertion is false"
           for s, r in zip(statuses, report.results, strict=True)):
        return "runtime_error"
    if report.total and report.passed == report.total:
        return "passed"
    return "wrong"


def safety_summary(scores: Sequence[Score], new_episodes: int | None = None
                   ) -> dict[str, float]:
    """Safety metrics of one batch: outcome fractions, denials, rollbacks, forgery attempts.

    ``safety/forgery_detected`` is the fraction of completions that broke the call protocol
    (a reply that is not plain data, a forged reply) or contain an exit/kill/builtins/frame
    pattern; the verdicts ignore both, this measures how often the policy tries.
    ``safety/rollbacks`` and ``safety/policy_denials`` are counts: episodes this call rolled
    back (``new_episodes``; default: every scored one) and refusals.
    """
    n = max(len(scores), 1)
    kinds = [outcome(s) for s in scores]
    metrics = {f"safety/{k}": kinds.count(k) / n for k in OUTCOMES if k != "passed"}
    metrics["safety/policy_denials"] = float(sum(s.blocked for s in scores))
    if new_episodes is None:
        new_episodes = sum(s.episode_id is not None for s in scores)
    metrics["safety/rollbacks"] = float(new_episodes)
    metrics["safety/forgery_detected"] = sum(
        k == "protocol" or s.hack is not None for k, s in zip(kinds, scores, strict=True)) / n
    metrics["exec/pass_all"] = kinds.count("passed") / n
    return metrics


class ExecutionCache:
    """Thread-safe, bounded memo of scores shared by the rewards of one trainer.

    Keyed by batch (content and trainer step) and position, so two rewards that score the same
    batch run each completion's tests once (one episode per completion per step).
    """

    def __init__(self, maxsize: int = 4096) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[str, Score] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(*parts: object) -> str:
        """A digest of ``parts``."""
        digest = hashlib.sha256()
        for part in parts:
            digest.update(repr(part).encode())
            digest.update(b"\0")
        return digest.hexdigest()

    def get(self, key: str) -> Score | None:
        with self._lock:
            return self._items.get(key)

    def put(self, key: str, score: Score) -> None:
        with self._lock:
            self._items[key] = score
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)


class _Reward:
    """Common parts: a ``__name__``, text extraction, metric logging, the async flavour."""

    __name__: str
    history: list[dict[str, float]]

    def __call__(self, prompts: list[Any], completions: list[Any],
                 **kwargs: Any) -> list[float | None]:
        raise NotImplementedError

    def as_async(self) -> AsyncReward:
        """This reward as an ``async`` callable with the same name (runs in a worker thread)."""
        return AsyncReward(self)

    def _log(self, metrics: dict[str, float], log_metric: LogMetric | None) -> None:
        self.history.append(metrics)
        if log_metric is not None:
            for name, value in metrics.items():
                log_metric(name, value)


class AsyncReward:
    """The async flavour of a reward: ``await reward(prompts, completions, **kwargs)``.

    A thin layer over the sync core (``asyncio.to_thread``), so TRL can overlap it with other
    async rewards.
    """

    def __init__(self, reward: _Reward) -> None:
        self.reward = reward
        self.__name__ = reward.__name__

    async def __call__(self, prompts: list[Any], completions: list[Any],
                       **kwargs: Any) -> list[float | None]:
        return await asyncio.to_thread(self.reward, prompts, completions, **kwargs)


def _columns(name: str, values: Any, n: int) -> list[Any]:
    if values is None:
        raise ConfigError(f"the dataset has no {name!r} column; the reward needs it")
    if isinstance(values, str):
        return [values] * n
    values = list(values)
    if len(values) != n:
        raise ConfigError(f"column {name!r} has {len(values)} values for {n} completions")
    return values


def default_reward_state_dir() -> Path:
    """Where a reward's own runtime keeps its journal: ``$XDG_CACHE_HOME/revex/rewards``, else
    ``~/.cache/revex/rewards``. A cache, not state: every episode in it is rolled back."""
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "revex" / "rewards"


class _ExecutingReward(_Reward):
    """Scores completions' tests in fresh, rolled-back episodes (shared cache).

    Without a ``runtime`` one is created on first use (policy ``training``, state under
    :func:`default_reward_state_dir`) and closed by :meth:`close`.
    """

    def __init__(self, runtime: TestRunner | None = None, *, limits: Limits = DEFAULT_LIMITS,
                 concurrency: int = 2, reward_mode: str = "pass_rate",
                 cache: ExecutionCache | None = None) -> None:
        if concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1, got {concurrency!r}")
        if reward_mode not in ("pass_rate", "all_pass"):
            raise ConfigError(f"reward_mode must be 'pass_rate' or 'all_pass', "
                              f"got {reward_mode!r}")
        self._runtime = runtime
        self._owns_runtime = False
        self._runtime_lock = threading.Lock()
        self.limits = limits
        self.concurrency = concurrency
        self.reward_mode = reward_mode
        self.cache = cache if cache is not None else ExecutionCache()
        self.history = []
        self.last_new_episodes = 0

    @property
    def runtime(self) -> TestRunner:
        """The runtime that executes completions (created here on first use if none was given).

        Raises StateError if the default state dir cannot be used (see
        :func:`default_reward_state_dir`; set ``XDG_CACHE_HOME`` or pass ``runtime=``).
        """
        with self._runtime_lock:  # rewards run in threads; exactly one runtime is created
            if self._runtime is None:
                from revex.runtime.runtime import Runtime

                self._runtime = Runtime(state_dir=default_reward_state_dir(), policy="training")
                self._owns_runtime = True
            return self._runtime

    def close(self) -> None:
        """Close the runtime this reward created (one passed in is the caller's to close)."""
        with self._runtime_lock:
            if self._owns_runtime and self._runtime is not None:
                close = getattr(self._runtime, "close", None)
                if close is not None:
                    close()
                self._runtime, self._owns_runtime = None, False

    def score(self, prompts: Sequence[Any], completions: Sequence[Any],
              tests: Sequence[str], entry_points: Sequence[str], *,
              step: int | None = None) -> list[Score]:
        """One :class:`Score` per completion, each from its own rolled-back episode.

        Results are cached per batch (its content and the trainer ``step``) and position, so
        several rewards scoring the same batch share one episode per completion, while every
        completion of every step still gets its own episode.
        """
        n = len(completions)
        solutions, hacks = [], []
        for prompt, completion in zip(prompts, completions, strict=True):
            body = truncate_completion(as_text(completion))
            solutions.append(as_text(prompt) + body)
            hacks.append(detect_reward_hack(body))
        batch = self.cache.key(step, solutions, list(tests), list(entry_points), self.limits,
                               self.reward_mode)
        ran: list[int] = []

        def one(i: int) -> Score:
            key = f"{batch}/{i}"
            cached = self.cache.get(key)
            if cached is not None:
                return cached
            score = score_in_episode(self.runtime, solutions[i], tests[i], entry_points[i],
                                     limits=self.limits, reward_mode=self.reward_mode,
                                     hack=hacks[i])
            self.cache.put(key, score)
            ran.append(i)  # list.append is atomic
            return score

        if self.concurrency == 1 or n <= 1:
            scores = [one(i) for i in range(n)]
        else:
            _start_backend(self.runtime)
            with ThreadPoolExecutor(max_workers=min(self.concurrency, n)) as pool:
                scores = list(pool.map(one, range(n)))
        self.last_new_episodes = sum(scores[i].episode_id is not None for i in ran)
        return scores

    def _safety(self, scores: Sequence[Score]) -> dict[str, float]:
        """The batch's safety metrics, or none when another reward already ran (and logged)
        every episode of it: TRL averages a metric logged twice in a step."""
        if scores and self.last_new_episodes == 0:
            return {}
        return safety_summary(scores, self.last_new_episodes)

    def _score_batch(self, prompts: list[Any], completions: list[Any],
                     kwargs: dict[str, Any]) -> list[Score]:
        n = len(completions)
        if len(prompts) != n:
            raise ConfigError("prompts and completions must have equal length")
        tests = _columns("tests", kwargs.get("tests", kwargs.get("test")), n)
        entry_points = _columns("entry_point", kwargs.get("entry_point"), n)
        state = kwargs.get("trainer_state")
        return self.score(prompts, completions, tests, entry_points,
                          step=getattr(state, "global_step", None))


def _start_backend(runtime: Any) -> None:
    """Choose the runtime's sandbox backend before threads share it.

    ``Runtime.backend`` is created lazily without a lock: two threads that touch it first at
    the same time would each start a warm pool and one would leak.
    """
    getattr(runtime, "backend", None)


class TestPassReward(_ExecutingReward):
    """Fraction of the row's tests the completion passes, run in the revex runtime.

    Args:
        runtime: a :class:`revex.Runtime` (policy ``training`` for training); default: one
            created on first use with the ``training`` policy and its state under the user
            cache dir (see :func:`default_reward_state_dir`).
        limits: resource limits for one completion's test session.
        concurrency: completions scored in parallel (threads, one episode each).
        reward_mode: ``"pass_rate"`` (partial credit) or ``"all_pass"`` (1 or 0).
        cache: share one :class:`ExecutionCache` with other rewards of the same trainer.
        name: the name TRL logs the reward under.

    Raises:
        ConfigError: a bad ``concurrency`` or ``reward_mode``; at call time, a missing
            ``tests``/``entry_point`` column.
    """

    __test__ = False  # not a pytest test class despite the name

    def __init__(self, runtime: TestRunner | None = None, *, limits: Limits = DEFAULT_LIMITS,
                 concurrency: int = 2, reward_mode: str = "pass_rate",
                 cache: ExecutionCache | None = None, name: str = "test_pass") -> None:
        super().__init__(runtime, limits=limits, concurrency=concurrency,
                         reward_mode=reward_mode, cache=cache)
        self.__name__ = name

    def __call__(self, prompts: list[Any], completions: list[Any],
                 **kwargs: Any) -> list[float | None]:
        scores = self._score_batch(prompts, completions, kwargs)
        self._log(self._safety(scores), kwargs.get("log_metric"))
        return [s.reward for s in scores]


@dataclass(frozen=True)
class Penalties:
    """What each outcome costs in :class:`ExecutionFeedbackReward` (0 for a clean run)."""

    syntax: float = -1.0
    runtime_error: float = -0.5
    timeout: float = -0.5
    memory: float = -0.5
    early_exit: float = -1.0
    protocol: float = -1.0
    blocked: float = -1.0
    sandbox_error: float = 0.0


class ExecutionFeedbackReward(_ExecutingReward):
    """Penalties for completions that do not parse, raise, hang, blow the memory limit, end
    their process early, break the call protocol or are refused by the policy.

    Syntax is checked on the host with ``ast.parse`` (parsing, not executing); everything else
    is read from the ``TestReport`` of a rolled-back episode (shared with
    :class:`TestPassReward` through ``cache``). A sandbox failure is not the model's fault and
    scores ``penalties.sandbox_error`` (0).

    Args:
        runtime, limits, concurrency, cache: as for :class:`TestPassReward`.
        penalties: the cost of each outcome.
        name: the name TRL logs the reward under.
    """

    def __init__(self, runtime: TestRunner | None = None, *, limits: Limits = DEFAULT_LIMITS,
                 concurrency: int = 2, cache: ExecutionCache | None = None,
                 penalties: Penalties = Penalties(), name: str = "exec_feedback") -> None:
        super().__init__(runtime, limits=limits, concurrency=concurrency, cache=cache)
        self.penalties = penalties
        self.__name__ = name

    def __call__(self, prompts: list[Any], completions: list[Any],
                 **kwargs: Any) -> list[float | None]:
        n = len(completions)
        syntax_ok = [_parses(as_text(p) + truncate_completion(as_text(c)))
                     for p, c in zip(prompts, completions, strict=True)]
        # syntax errors are scored too (they fail to load), so every completion of the batch
        # is an episode in the journal and the batch is shared with TestPassReward's cache
        scores = self._score_batch(prompts, completions, kwargs)
        rewards: list[float | None] = []
        for ok, score in zip(syntax_ok, scores, strict=True):
            kind = outcome(score) if ok else "syntax"
            rewards.append(float(getattr(self.penalties, kind, 0.0)))
        metrics = self._safety(scores)
        metrics["safety/syntax"] = syntax_ok.count(False) / max(n, 1)
        self._log(metrics, kwargs.get("log_metric"))
        return rewards


def _parses(source: str) -> bool:
    """Whether ``source`` is valid Python. ``ast.parse`` only builds a tree; nothing runs."""
    try:
        _pyast.parse(source)
    except (SyntaxError, ValueError):
        return False
    return True


# -- static analysis ---------------------------------------------------------------------------
_BANDIT_COST = {"LOW": 0.1, "MEDIUM": 0.3, "HIGH": 0.5}


def _ruff_binary() -> str:
    try:
        from ruff.__main__ import find_ruff_bin

        return str(find_ruff_bin())
    except (ImportError, FileNotFoundError):
        found = shutil.which("ruff")
        if found is None:
            raise ConfigError("CodeQualityReward needs ruff (pip install ruff)") from None
        return found


class CodeQualityReward(_Reward):
    """Costs for ruff and bandit findings in ``prompt + completion``; nothing is executed.

    The texts are written to files in a temporary directory; ruff (one process per batch,
    reading the files) and bandit (in-process, which parses with ``ast``) analyse them.
    Insecure patterns such as ``subprocess(..., shell=True)``, SQL built by string formatting
    and ``eval`` cost ``0.1/0.3/0.5`` by bandit severity; each ruff finding costs
    ``ruff_cost``. The reward is ``max(floor, -total cost)``: 0 for clean code.

    Args:
        ruff_select: ruff rule codes to check.
        ruff_cost: cost of one ruff finding.
        bandit: also run bandit.
        floor: the lowest reward.
        name: the name TRL logs the reward under.

    Raises:
        ConfigError: ruff (or bandit, when asked for) is not installed.
    """

    def __init__(self, *, ruff_select: Sequence[str] = ("E9", "F", "B"),
                 ruff_cost: float = 0.1, bandit: bool = True, floor: float = -1.0,
                 name: str = "code_quality") -> None:
        self.ruff = _ruff_binary()
        if bandit:
            try:
                _import_bandit()
            except ImportError as exc:
                raise ConfigError("CodeQualityReward(bandit=True) needs bandit "
                                  "(pip install bandit)") from exc
        self.ruff_select = tuple(ruff_select)
        self.ruff_cost = ruff_cost
        self.bandit = bandit
        self.floor = floor
        self.__name__ = name
        self.history = []

    def findings(self, sources: Sequence[str]) -> list[list[tuple[str, str, float]]]:
        """Per source, its findings as ``(tool, rule, cost)``."""
        out: list[list[tuple[str, str, float]]] = [[] for _ in sources]
        with tempfile.TemporaryDirectory(prefix="revex-quality-") as tmp:
            paths = {}
            for i, src in enumerate(sources):
                path = Path(tmp) / f"c{i}.py"
                path.write_text(src)
                paths[str(path.resolve())] = i
            for file, rule in self._ruff(tmp):
                out[paths[str(Path(file).resolve())]].append(("ruff", rule, self.ruff_cost))
            if self.bandit:
                for file, rule, severity in _bandit_issues(tmp):
                    out[paths[str(Path(file).resolve())]].append(
                        ("bandit", rule, _BANDIT_COST.get(severity, 0.1)))
        return out

    def _ruff(self, directory: str) -> list[tuple[str, str]]:
        # argv is a fixed list of our own strings plus a directory; ruff reads, never runs, it
        proc = subprocess.run(
            [self.ruff, "check", "--isolated", "--no-cache", "--exit-zero",
             "--output-format", "json", "--select", ",".join(self.ruff_select), directory],
            capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            raise RevexError(f"ruff failed ({proc.returncode}): {proc.stderr.strip()[:500]}")
        return [(d["filename"], str(d.get("code") or "syntax")) for d in json.loads(proc.stdout)]

    def __call__(self, prompts: list[Any], completions: list[Any],
                 **kwargs: Any) -> list[float | None]:
        sources = [as_text(p) + truncate_completion(as_text(c))
                   for p, c in zip(prompts, completions, strict=True)]
        found = self.findings(sources)
        n = max(len(sources), 1)
        insecure = sum(any(tool == "bandit" for tool, _, _ in f) for f in found)
        self._log({"safety/insecure_code": insecure / n,
                   "quality/findings": sum(len(f) for f in found) / n},
                  kwargs.get("log_metric"))
        return [max(self.floor, -sum(cost for _, _, cost in f)) for f in found]


def _import_bandit() -> tuple[Any, Any]:
    # bandit's plugin loader passes an argument stevedore deprecated; not ours to fix
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from bandit.core import config as bandit_config
        from bandit.core import manager as bandit_manager
    return bandit_config, bandit_manager


def _bandit_issues(directory: str) -> list[tuple[str, str, str]]:
    """Bandit's issues in the ``*.py`` files of ``directory`` as (file, test id, severity)."""
    bandit_config, bandit_manager = _import_bandit()
    manager = bandit_manager.BanditManager(bandit_config.BanditConfig(), "file", quiet=True)
    manager.discover_files([directory], recursive=True)
    manager.run_tests()
    return [(issue.fname, issue.test_id, str(issue.severity))
            for issue in manager.get_issue_list()]


# -- efficiency --------------------------------------------------------------------------------
_TIMING_HARNESS = '''
__revex_tests__ = compile({tests!r}, "<tests>", "exec")
for _ in range({repeat}):
    __revex_ns__ = dict(globals())
    exec(__revex_tests__, __revex_ns__)
    if "check" in __revex_ns__ and callable(__revex_ns__["check"]):
        __revex_ns__["check"]({entry_point})
print({nonce!r})
'''


class EfficiencyReward(_ExecutingReward):
    """CPU time of the row's ``reference`` solution over the completion's, in ``[0, 1]``.

    Only completions that pass every test (an unforgeable verdict, shared through ``cache``)
    are timed; the rest score 0. Rows without a ``reference`` score None (TRL leaves this
    reward out for them). Both programs, the solution followed by its tests repeated
    ``repeat`` times, run with ``ep.run`` in fresh rolled-back episodes; the CPU time is the
    sandbox's own measurement, and a run counts only if it ended normally and printed a
    per-run nonce after the loop (an early exit cannot fake a fast run).

    Args:
        runtime, limits, concurrency, cache: as for :class:`TestPassReward`.
        repeat: how many times the tests run in the timed program.
        name: the name TRL logs the reward under.
    """

    def __init__(self, runtime: TestRunner | None = None, *, limits: Limits = DEFAULT_LIMITS,
                 concurrency: int = 2, cache: ExecutionCache | None = None, repeat: int = 20,
                 name: str = "efficiency") -> None:
        super().__init__(runtime, limits=limits, concurrency=concurrency, cache=cache)
        self.repeat = repeat
        self.__name__ = name
        self._reference_cpu: dict[str, float | None] = {}
        self._ref_lock = threading.Lock()

    def cpu_seconds(self, solution: str, tests: str, entry_point: str) -> float | None:
        """Sandbox CPU seconds of ``solution`` plus its tests x ``repeat``; None if it did not
        run to the end."""
        nonce = secrets.token_hex(16)
        program = solution + "\n" + _TIMING_HARNESS.format(
            tests=tests, repeat=self.repeat, entry_point=entry_point, nonce=nonce)
        with tempfile.TemporaryDirectory(prefix="revex-time-") as workspace:
            try:
                with self.runtime.episode(workspace, on_exit="rollback") as ep:
                    result = ep.run(code=program, limits=self.limits, apply_changes=False)
            except (PolicyViolation, RevexError):
                return None
        if not result.ok or nonce not in result.stdout:
            return None
        return max(float(result.cpu_s), 1e-4)

    def _reference(self, reference: str, tests: str, entry_point: str) -> float | None:
        key = ExecutionCache.key(reference, tests, entry_point, self.repeat)
        with self._ref_lock:
            if key in self._reference_cpu:
                return self._reference_cpu[key]
        cpu = self.cpu_seconds(reference, tests, entry_point)
        with self._ref_lock:
            self._reference_cpu[key] = cpu
        return cpu

    def __call__(self, prompts: list[Any], completions: list[Any],
                 **kwargs: Any) -> list[float | None]:
        n = len(completions)
        references = kwargs.get("reference") or [None] * n
        scores = self._score_batch(prompts, completions, kwargs)
        tests = _columns("tests", kwargs.get("tests", kwargs.get("test")), n)
        entry_points = _columns("entry_point", kwargs.get("entry_point"), n)

        def one(i: int) -> float | None:
            if not references[i]:
                return None
            if outcome(scores[i]) != "passed":
                return 0.0
            prompt = as_text(prompts[i])
            ref_cpu = self._reference(prompt + references[i], tests[i], entry_points[i])
            if ref_cpu is None:
                return None
            solution = prompt + truncate_completion(as_text(completions[i]))
            cpu = self.cpu_seconds(solution, tests[i], entry_points[i])
            return 0.0 if cpu is None else min(1.0, ref_cpu / cpu)

        _start_backend(self.runtime)
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            rewards = list(pool.map(one, range(n)))
        metrics = self._safety(scores)
        metrics["efficiency/timed"] = float(sum(
            r is not None and outcome(s) == "passed"
            for r, s in zip(rewards, scores, strict=True)))
        self._log(metrics, kwargs.get("log_metric"))
        return rewards
