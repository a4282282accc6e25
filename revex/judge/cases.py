"""The test-case formats RL code datasets use, as one :class:`TestCases` model.

Four kinds:

* ``stdio``: each case feeds ``input`` on stdin and compares stdout with ``expected`` (APPS,
  CodeContests, TACO, DeepCoder, verl's ``{"inputs": [...], "outputs": [...]}``);
* ``call``: each case calls ``fn_name(*args)`` and compares the returned JSON value with
  ``expected`` (APPS/TACO rows with ``fn_name``, LiveCodeBench functional tests);
* ``asserts``: a list of ``assert`` lines naming the solution's function (MBPP);
* ``check``: a HumanEval-style ``def check(candidate)`` plus ``entry_point``.

Loaders raise :class:`CasesError` naming the bad field (``outputs[3]: expected a string, got
int``). Everything here is trusted data from the dataset; none of it reaches the sandbox except
a stdio case's ``input`` and a call case's ``args``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from revex import _pyast
from revex.errors import ConfigError
from revex.runtime.sandbox.base import LANGUAGES, Limits

KINDS = ("stdio", "call", "asserts", "check")
COMPARE_MODES = ("exact", "lines", "tokens")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class CasesError(ConfigError):
    """Test cases are malformed; the message names the field (``outputs[2]``) and the fix."""


@dataclass(frozen=True)
class Compare:
    """How a stdio case's stdout is compared with the expected output (trusted host code).

    mode: ``exact`` (byte for byte), ``lines`` (line by line, trailing whitespace of each line
    and trailing blank lines ignored, ``\\r\\n`` = ``\\n``), ``tokens`` (whitespace-insensitive:
    the default). ``abs_tol``/``rel_tol``: in ``tokens`` mode (and for call-style floats), two
    numeric tokens match when ``|got - want| <= abs_tol`` or ``<= rel_tol * |want|``.
    """

    mode: str = "tokens"
    abs_tol: float | None = None
    rel_tol: float | None = None
    #: A special judge: trusted checker source (from the dataset) that is itself run
    #: sandboxed with ``/input/input.txt``, ``/input/output.txt`` (the solution's stdout) and
    #: ``/input/answer.txt``; exit 0 accepts, 1 or 2 reject (testlib's WA/PE), anything else
    #: is a checker failure (``sandbox_error``). Replaces ``mode``.
    checker: str | None = None
    checker_language: str = "python"

    def __post_init__(self) -> None:
        if self.checker is not None and (not isinstance(self.checker, str)
                                         or not self.checker.strip()):
            raise CasesError("compare.checker must be checker source text")
        if self.checker_language not in LANGUAGES:
            raise CasesError(f"compare.checker_language must be one of {', '.join(LANGUAGES)}, "
                             f"got {self.checker_language!r}")
        if self.mode not in COMPARE_MODES:
            raise CasesError(f"compare.mode must be one of {COMPARE_MODES}, got {self.mode!r}")
        for name in ("abs_tol", "rel_tol"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)
                                  or not math.isfinite(v) or v < 0):
                raise CasesError(f"compare.{name} must be a non-negative number, got {v!r}")

    @property
    def tolerant(self) -> bool:
        return bool(self.abs_tol) or bool(self.rel_tol)


@dataclass(frozen=True)
class Case:
    """One case. stdio: ``input``/``expected`` are text; call: ``input`` is the argument
    list and ``expected`` the return value (plain JSON data). ``limits`` overrides the set's."""

    input: Any
    expected: Any
    limits: Limits | None = None


@dataclass(frozen=True)
class TestCases:
    """The tests of one problem (see the module docstring for ``kind``)."""

    __test__ = False  # not a pytest class

    kind: str
    cases: tuple[Case, ...] = ()
    fn_name: str | None = None
    tests: str | None = None
    entry_point: str | None = None
    compare: Compare = field(default_factory=Compare)
    limits: Limits | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise CasesError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind in ("stdio", "call") and not self.cases:
            raise CasesError(f"{self.kind} test cases need at least one case (inputs/outputs "
                             "are empty)")
        if self.kind == "call" and not (self.fn_name and _IDENT.match(self.fn_name)):
            raise CasesError(f"fn_name must be a Python identifier, got {self.fn_name!r}")
        if self.kind in ("asserts", "check") and not (self.tests and self.tests.strip()):
            raise CasesError(f"{self.kind} test cases need test source (tests is empty)")
        if self.kind in ("asserts", "check") and not (
                self.entry_point and _IDENT.match(self.entry_point)):
            raise CasesError(f"entry_point must be a Python identifier, got "
                             f"{self.entry_point!r}")

    def __len__(self) -> int:
        return len(self.cases)

    # -- loaders ---------------------------------------------------------------------------
    @classmethod
    def from_io(cls, data: Mapping[str, Any] | str, *, compare: Compare | None = None,
                limits: Limits | None = None, field_name: str = "test_cases") -> TestCases:
        """``{"inputs": [...], "outputs": [...]}`` (or CodeContests' ``input``/``output``),
        optionally a JSON string, with ``fn_name`` for call-style cases.

        Raises :class:`CasesError` naming the bad field.
        """
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except ValueError as exc:
                raise CasesError(f"{field_name}: not valid JSON ({exc})") from exc
        if not isinstance(data, Mapping):
            raise CasesError(f"{field_name}: expected an object with inputs and outputs, got "
                             f"{type(data).__name__}")
        ins_key = "inputs" if "inputs" in data else "input"
        outs_key = "outputs" if "outputs" in data else "output"
        ins, outs = data.get(ins_key), data.get(outs_key)
        for key, val in ((ins_key, ins), (outs_key, outs)):
            if not isinstance(val, list):
                raise CasesError(f"{field_name}.{key}: expected a list, got "
                                 f"{type(val).__name__}")
        assert isinstance(ins, list) and isinstance(outs, list)
        if len(ins) != len(outs):
            raise CasesError(f"{field_name}: {len(ins)} {ins_key} but {len(outs)} {outs_key}; "
                             "each input needs its expected output")
        fn_name = data.get("fn_name")
        if fn_name:
            if not isinstance(fn_name, str) or not _IDENT.match(fn_name):
                raise CasesError(f"{field_name}.fn_name: expected an identifier, got "
                                 f"{fn_name!r}")
            cases = tuple(Case(list(_args(a, f"{field_name}.{ins_key}[{i}]")), o)
                          for i, (a, o) in enumerate(zip(ins, outs, strict=True)))
            return cls("call", cases, fn_name=fn_name, compare=compare or Compare(),
                       limits=limits)
        cases = tuple(Case(_text(a, f"{field_name}.{ins_key}[{i}]"),
                           _text(o, f"{field_name}.{outs_key}[{i}]"))
                      for i, (a, o) in enumerate(zip(ins, outs, strict=True)))
        return cls("stdio", cases, compare=compare or Compare(), limits=limits)

    @classmethod
    def from_asserts(cls, asserts: Sequence[str] | str, *, setup: str = "",
                     entry_point: str | None = None,
                     field_name: str = "test_list") -> TestCases:
        """MBPP's ``test_list`` (``assert f(1) == 2`` lines) plus optional setup code; the
        entry point defaults to the first function the asserts call.

        Raises :class:`CasesError` naming the bad field.
        """
        lines = [asserts] if isinstance(asserts, str) else list(asserts)
        for i, line in enumerate(lines):
            if not isinstance(line, str) or not line.strip():
                raise CasesError(f"{field_name}[{i}]: expected an assert line, got {line!r}")
        source = "\n".join([setup, *lines]) if setup else "\n".join(lines)
        name = entry_point or _first_call(source)
        if name is None:
            raise CasesError(f"{field_name}: no function call found; pass entry_point=")
        return cls("asserts", tests=source, entry_point=name)

    @classmethod
    def from_check(cls, test: str, entry_point: str) -> TestCases:
        """HumanEval's ``test`` (``def check(candidate): ...``) and ``entry_point``."""
        if not isinstance(test, str) or "def check" not in test:
            raise CasesError("test: expected HumanEval source defining check(candidate)")
        return cls("check", tests=test, entry_point=entry_point)


def _text(v: Any, where: str) -> str:
    # APPS stores some expected outputs as a list of lines.
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return "\n".join(v)
    if not isinstance(v, str):
        raise CasesError(f"{where}: expected a string, got {type(v).__name__}")
    return v


def _args(v: Any, where: str) -> list[Any]:
    if isinstance(v, str):  # LiveCodeBench: one JSON value per line
        try:
            return [json.loads(line) for line in v.splitlines() if line.strip()]
        except ValueError as exc:
            raise CasesError(f"{where}: arguments are not JSON lines ({exc})") from exc
    if not isinstance(v, list):
        raise CasesError(f"{where}: expected a list of arguments, got {type(v).__name__}")
    return v


def _first_call(source: str) -> str | None:
    import ast
    import builtins

    try:
        tree = _pyast.parse(source)
    except SyntaxError as exc:
        raise CasesError(f"test source does not parse: {exc}") from exc
    for node in ast.walk(tree):
        if isinstance(node, ast.Assert):
            for sub in ast.walk(node.test):
                if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and \
                        sub.func.id not in vars(builtins):
                    return sub.func.id
    return None


def load_cases(obj: Any, *, entry_point: str | None = None,
               compare: Compare | None = None) -> TestCases:
    """Any supported shape as :class:`TestCases`: a ``TestCases``, an inputs/outputs object
    (or its JSON text), a list of assert lines, or ``{"test": ..., "entry_point": ...}``.

    Raises :class:`CasesError` when the shape is not recognised or a field is bad.
    """
    if isinstance(obj, TestCases):
        return obj
    if isinstance(obj, str):
        stripped = obj.lstrip()
        if stripped.startswith("{"):
            return TestCases.from_io(obj, compare=compare)
        if "def check" in obj and entry_point:
            return TestCases.from_check(obj, entry_point)
        return TestCases.from_asserts(obj.splitlines(), entry_point=entry_point)
    if isinstance(obj, Mapping):
        if "test" in obj:
            return TestCases.from_check(obj["test"], obj.get("entry_point") or entry_point or "")
        return TestCases.from_io(obj, compare=compare)
    if isinstance(obj, list) and all(isinstance(x, str) for x in obj):
        return TestCases.from_asserts(obj, entry_point=entry_point)
    raise CasesError(f"test cases of type {type(obj).__name__} are not a known shape: give "
                     "inputs/outputs, a list of asserts, or HumanEval's test + entry_point")
