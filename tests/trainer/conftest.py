"""Shared helpers for trainer tests: a canned test runner standing in for the runtime.

The runner never executes anything: it answers ``run_tests_many`` with reports decided by a
caller-supplied rule over the solution text, so the trainer's plumbing can be tested before (and
independently of) the sandbox.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest


@dataclass
class CannedResult:
    status: str
    message: str = ""


@dataclass
class CannedReport:
    passed: int
    total: int
    results: list[CannedResult] = field(default_factory=list)

    @property
    def pass_rate(self) -> float:
        return self.passed / self.total if self.total else 0.0


@dataclass
class CannedRunner:
    """Answers run_tests_many with ``rule(solution) -> list of statuses``; records each call."""

    rule: Callable[[str], list[str]]
    calls: list[dict[str, Any]] = field(default_factory=list)

    def run_tests(self, *, solution: str, tests: str, entry_point: str,
                  limits: Any) -> CannedReport:
        return self.run_tests_many(solutions=[solution], tests=tests, entry_point=entry_point,
                                   limits=limits, concurrency=1)[0]

    def run_tests_many(self, *, solutions: list[str], tests: str, entry_point: str,
                       limits: Any, concurrency: int) -> list[CannedReport]:
        self.calls.append({"solutions": list(solutions), "tests": tests,
                           "entry_point": entry_point, "limits": limits,
                           "concurrency": concurrency})
        reports = []
        for solution in solutions:
            statuses = self.rule(solution)
            reports.append(CannedReport(passed=statuses.count("passed"), total=len(statuses),
                                        results=[CannedResult(s) for s in statuses]))
        return reports


def returns_rule(solution: str) -> list[str]:
    """Three 'tests': all pass when the solution contains a return statement."""
    return ["passed"] * 3 if "return" in solution else ["failed"] * 3


@pytest.fixture
def canned_runner() -> CannedRunner:
    return CannedRunner(returns_rule)
