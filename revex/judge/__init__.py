"""Judging code the way RL code datasets need: stdin/stdout, call-style, assert and HumanEval
tests, in every language revex runs, with verdicts the code under test cannot forge.

* :class:`TestCases` (with :class:`Compare`) and :func:`load_cases`: the formats;
* :func:`judge` / :func:`judge_many`: N solutions x M cases -> :class:`JudgeResult`;
  ``Runtime.judge_many`` is the same on the runtime's sandbox backend.
"""

from __future__ import annotations

from revex.judge.cases import Case, CasesError, Compare, TestCases, load_cases
from revex.judge.judge import CaseResult, CaseStatus, JudgeResult, judge, judge_many

__all__ = [
    "Case",
    "CaseResult",
    "CaseStatus",
    "CasesError",
    "Compare",
    "JudgeResult",
    "TestCases",
    "judge",
    "judge_many",
    "load_cases",
]
