"""Labels of reward requests (OpenRLHF, verl's ``ground_truth``): what tests a sample carries,
and the code a model's response contains.

A label is a JSON object (or its text) in one of these shapes:

- ``{"tests": "<check(candidate) or assert lines>", "entry_point": "f"}`` (also ``"test"``, as
  in HumanEval rows): function-style tests with revex's unforgeable verdicts;
- ``{"test_list": ["assert f(1) == 2", ...], "entry_point": "f"}`` (MBPP; also
  ``"assert_case"``, as in verl): assert lines;
- ``{"inputs": [...], "outputs": [...]}`` (APPS, CodeContests, TACO, verl; optional ``fn_name``
  for call-style cases and ``language``): judged by :meth:`revex.Runtime.judge_many`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from revex.errors import ConfigError
from revex.runtime.sandbox.base import TestReport

_FENCE = re.compile(r"```([A-Za-z0-9_+#-]*)[ \t]*\n(.*?)```", re.DOTALL)


def extract_code(response: str) -> str | None:
    """The last ```python fenced block of ``response``, else its last fenced block, else the
    whole response when it has no fence at all; None when that is empty."""
    blocks = _FENCE.findall(response)
    python = [body for lang, body in blocks if lang.lower() in ("python", "py", "python3")]
    if python:
        return python[-1]
    if blocks:
        return str(blocks[-1][1])
    return response if response.strip() else None


@dataclass(frozen=True)
class Label:
    kind: str  # "function" | "io"
    tests: str = ""
    entry_point: str = ""
    cases: dict[str, Any] | None = None
    language: str = "python"


def parse_label(label: Any) -> Label:
    """A :class:`Label` from a dict or its JSON text. Raises ConfigError naming the problem."""
    if isinstance(label, str):
        try:
            label = json.loads(label)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"label is not JSON: {exc}") from None
    if not isinstance(label, dict):
        raise ConfigError(f"label must be a JSON object, got {type(label).__name__}")
    tests = label.get("tests", label.get("test"))
    asserts = label.get("test_list", label.get("assert_case"))
    entry = label.get("entry_point", label.get("fn_name", ""))
    if isinstance(tests, str):
        if not isinstance(entry, str) or not entry:
            raise ConfigError("label with 'tests' needs 'entry_point' (the function's name)")
        return Label("function", tests=tests, entry_point=entry)
    if isinstance(asserts, list):
        if not all(isinstance(a, str) for a in asserts) or not asserts:
            raise ConfigError("label 'test_list' must be a non-empty list of assert strings")
        if not isinstance(entry, str) or not entry:
            entry = _called_name(asserts)
        return Label("function", tests="\n".join(asserts), entry_point=entry)
    if "inputs" in label and "outputs" in label:
        language = label.get("language", "python")
        if not isinstance(language, str):
            raise ConfigError("label 'language' must be a string, e.g. \"cpp\"")
        cases = {k: v for k, v in label.items() if k != "language"}
        return Label("io", cases=cases, language=language)
    raise ConfigError("label must have 'tests' + 'entry_point', 'test_list', or "
                      "'inputs' + 'outputs'")


def _called_name(asserts: list[str]) -> str:
    match = re.search(r"assert\s+(?:not\s+)?\(?\s*([A-Za-z_][A-Za-z0-9_]*)\s*\(", asserts[0])
    if not match:
        raise ConfigError("cannot tell which function the asserts call: give 'entry_point'")
    return match.group(1)


def judge_label(runtime: Any, code: str, label: Label) -> TestReport:
    """Judge ``code`` against ``label`` in the sandbox. Raises ConfigError for a label kind this
    revex cannot judge."""
    if label.kind == "function":
        report = runtime.run_tests(code, label.tests, label.entry_point)
        return TestReport(report.passed, report.total)
    [result] = runtime.judge_many([code], label.cases, language=label.language)
    return TestReport(int(result.passed), int(result.total))
