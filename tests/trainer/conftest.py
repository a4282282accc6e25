"""Shared helpers for trainer tests: a canned runtime, and the real one.

The canned runner never executes anything: its episodes answer ``run_tests`` with reports
decided by a caller-supplied rule over the solution text, so the trainer's plumbing can be
tested independently of the sandbox. ``runtime`` is a real :class:`revex.Runtime` (policy
``training``) for the tests that prove the runtime is the environment.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from revex import Runtime


@dataclass
class CannedResult:
    status: str
    message: str = ""


@dataclass
class CannedReport:
    passed: int
    total: int
    results: list[CannedResult] = field(default_factory=list)
    message: str = ""

    @property
    def pass_rate(self) -> float:
        return self.passed / self.total if self.total else 0.0


@dataclass
class CannedEpisode:
    runner: CannedRunner
    id: str
    options: dict[str, Any]

    def run_tests(self, solution: str, tests: str, entry_point: str, *,
                  limits: Any = None) -> CannedReport:
        self.runner.calls.append({"solution": solution, "tests": tests,
                                  "entry_point": entry_point, "limits": limits,
                                  "episode": self.id})
        statuses = self.runner.rule(solution)
        return CannedReport(passed=statuses.count("passed"), total=len(statuses),
                            results=[CannedResult(s) for s in statuses])

    def __enter__(self) -> CannedEpisode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.runner.closed.append(self.id)


@dataclass
class CannedRunner:
    """Episodes whose run_tests answers ``rule(solution) -> list of statuses``; records calls."""

    rule: Callable[[str], list[str]]
    calls: list[dict[str, Any]] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _n: int = 0

    def episode(self, workspace: Any, **options: Any) -> CannedEpisode:
        with self._lock:
            self._n += 1
            return CannedEpisode(self, f"ep-{self._n}", options)


def returns_rule(solution: str) -> list[str]:
    """Three 'tests': all pass when the solution contains a return statement."""
    return ["passed"] * 3 if "return" in solution else ["failed"] * 3


@pytest.fixture
def canned_runner() -> CannedRunner:
    return CannedRunner(returns_rule)


@pytest.fixture
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    """A real runtime (policy ``training``) with its own state directory."""
    rt = Runtime(state_dir=Path(tmp_path_factory.mktemp("state")), policy="training",
                 audit=None)
    try:
        yield rt
    finally:
        rt.close()
