"""Judging: N solutions x M test cases, in any language, with verdicts the code cannot forge.

How a verdict is made, per kind of :class:`TestCases`:

* ``stdio``: each case is one sandboxed run (``backend.run``; warm for Python, a compiled
  binary built once and bound read-only for compiled languages) that gets only the case's
  input on stdin. Its stdout is compared with the expected output here, on the host, by
  :func:`revex.judge.compare.output_matches`. The status comes from facts the code cannot
  write (exit status, signals, the cgroup's OOM count, the host's clock), never from what it
  prints or writes to files; a non-zero exit is ``runtime_error`` whatever was printed.
* ``call``: the solution is loaded by the harness's call server in a sandbox; each case calls
  ``fn_name`` with the arguments over a private pipe and the reply is decoded into built-in
  values only, then compared here (:func:`revex.judge.compare.value_matches`).
* ``asserts``/``check``: the existing harness (``harness.run_tests``): the test source runs
  here with proxies for the solution's functions.

Expected outputs never leave this process.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from revex.errors import ConfigError
from revex.judge.cases import Case, TestCases, load_cases
from revex.judge.compare import output_matches, value_matches
from revex.runtime.sandbox import languages
from revex.runtime.sandbox.base import (
    ExecResult,
    ExecSpec,
    ExecStatus,
    InteractiveBackend,
    Limits,
    PassCount,
    SandboxBackend,
)


class CaseStatus(StrEnum):
    PASSED = "passed"
    WRONG_ANSWER = "wrong_answer"
    RUNTIME_ERROR = "runtime_error"
    TIMEOUT = "timeout"
    MEMORY = "memory"
    OUTPUT_LIMIT = "output_limit"
    COMPILE_ERROR = "compile_error"
    #: Not run: an earlier case failed and ``stop_on_first_failure`` was set.
    SKIPPED = "skipped"
    #: revex could not run the case at all (see ``message``); not the solution's fault.
    SANDBOX_ERROR = "sandbox_error"


_FROM_EXEC = {
    ExecStatus.FAILED: CaseStatus.RUNTIME_ERROR,
    ExecStatus.KILLED: CaseStatus.RUNTIME_ERROR,
    ExecStatus.TIMEOUT: CaseStatus.TIMEOUT,
    ExecStatus.MEMORY: CaseStatus.MEMORY,
    ExecStatus.OUTPUT_LIMIT: CaseStatus.OUTPUT_LIMIT,
    ExecStatus.COMPILE_ERROR: CaseStatus.COMPILE_ERROR,
    ExecStatus.SANDBOX_ERROR: CaseStatus.SANDBOX_ERROR,
}


@dataclass
class CaseResult:
    """One case's verdict; ``time_s``/``peak_memory_mb`` are ``None`` when not measured per
    case (assert-style tests)."""

    index: int
    status: CaseStatus
    time_s: float | None = None
    peak_memory_mb: float | None = None
    message: str = ""

    @property
    def passed(self) -> bool:
        return self.status is CaseStatus.PASSED


@dataclass
class JudgeResult(PassCount):
    """All verdicts for one solution. ``status`` is ``passed`` when every case passed, else
    the status of the first case (in order) that did not."""

    language: str
    status: CaseStatus
    passed: int
    total: int
    cases: list[CaseResult] = field(default_factory=list)
    message: str = ""


def _finish(language: str, cases: list[CaseResult], message: str = "") -> JudgeResult:
    cases.sort(key=lambda c: c.index)
    passed = sum(c.passed for c in cases)
    bad = next((c for c in cases if not c.passed and c.status is not CaseStatus.SKIPPED), None)
    status = CaseStatus.PASSED if bad is None and cases and passed == len(cases) else (
        bad.status if bad is not None else CaseStatus.RUNTIME_ERROR)
    return JudgeResult(language, status, passed, len(cases), cases,
                       message or (bad.message if bad is not None else ""))


def _limits(case: Case, cases: TestCases, limits: Limits | None, language: str) -> Limits:
    return case.limits or cases.limits or limits or languages.default_limits(language)


def _stdio_case(backend: SandboxBackend, solution: str, language: str, index: int, case: Case,
                cases: TestCases, limits: Limits | None,
                compile_limits: Limits | None) -> CaseResult:
    spec = ExecSpec(code=solution, language=language, stdin=str(case.input).encode(),
                    limits=_limits(case, cases, limits, language), compile_limits=compile_limits)
    result: ExecResult = backend.run(spec)
    with result:
        status = _FROM_EXEC.get(result.status)
        message = result.message
        if status is None and cases.compare.checker is not None:
            status, message = _check(backend, case, result.stdout, cases)
        elif status is None:
            status = (CaseStatus.PASSED if output_matches(result.stdout, str(case.expected),
                                                          cases.compare)
                      else CaseStatus.WRONG_ANSWER)
        if status is CaseStatus.COMPILE_ERROR:
            message = f"{result.message}\n{result.stderr}".strip()
        elif status is CaseStatus.RUNTIME_ERROR:
            message = (f"exit code {result.exit_code}" if result.signal is None
                       else f"signal {result.signal}") + (f": {result.stderr[-300:]}"
                                                          if result.stderr else "")
        return CaseResult(index, status, result.wall_s, result.peak_memory_mb, message[:2000])


_CHECKER_LIMITS = Limits(wall_s=30, cpu_s=30, memory_mb=1024, pids=128)


def _check(backend: SandboxBackend, case: Case, stdout: str,
           cases: TestCases) -> tuple[CaseStatus, str]:
    """Run the special judge in a sandbox of its own: the solution's output is hostile input
    to it, so it never runs on the host. Only its exit status is read."""
    cmp = cases.compare
    assert cmp.checker is not None
    res = backend.run(ExecSpec(
        code=cmp.checker, language=cmp.checker_language,
        files={"input.txt": str(case.input).encode(), "output.txt": stdout.encode(),
               "answer.txt": str(case.expected).encode()},
        limits=_CHECKER_LIMITS))
    with res:
        if res.status is ExecStatus.OK:
            return CaseStatus.PASSED, ""
        if res.status is ExecStatus.FAILED and res.exit_code in (1, 2):
            return CaseStatus.WRONG_ANSWER, f"checker: {res.stderr[-300:]}".strip()
        return CaseStatus.SANDBOX_ERROR, (f"checker failed ({res.status}, exit "
                                          f"{res.exit_code}): {res.stderr[-300:]}")


def _call_cases(backend: InteractiveBackend, solution: str, cases: TestCases,
                limits: Limits | None, stop_first: bool) -> list[CaseResult]:
    """Call-style cases through the harness's call server; a session that dies is replaced
    for the next case, so one crash costs one case."""
    from revex.runtime.sandbox.harness import (
        CallTimeout,
        SolutionGone,
        _Session,
    )

    name = cases.fn_name
    assert name is not None
    # LeetCode-style rows define ``class Solution`` with the method; expose it by name. This
    # runs inside the sandbox with the solution, so it needs no trust.
    shim = (f"\nif {name!r} not in globals() and 'Solution' in globals():\n"
            f"    def {name}(*a):\n        return Solution().{name}(*a)\n")
    lim = cases.limits or limits or Limits(wall_s=60, cpu_s=60, memory_mb=512,
                                           output_bytes=100_000)
    call_timeout = max(c.limits.wall_s for c in cases.cases if c.limits) if any(
        c.limits for c in cases.cases) else min(lim.wall_s, 6.0)
    out: list[CaseResult] = []
    session: Any = None
    try:
        for i, case in enumerate(cases.cases):
            if stop_first and any(not r.passed for r in out):
                out.append(CaseResult(i, CaseStatus.SKIPPED))
                continue
            if session is None or session.gone is not None:
                if session is not None:
                    session.close()
                session = _Session(backend, solution + shim, lim, call_timeout)
            if session.gone is not None and "did not load" in session.gone:
                out.append(CaseResult(i, CaseStatus.RUNTIME_ERROR, message=session.gone[:2000]))
                continue
            start = time.monotonic()
            try:
                got = session.call(name, tuple(case.input))
            except CallTimeout as exc:
                out.append(CaseResult(i, CaseStatus.TIMEOUT, time.monotonic() - start,
                                      message=str(exc)))
                continue
            except SolutionGone as exc:
                out.append(CaseResult(i, CaseStatus.RUNTIME_ERROR, time.monotonic() - start,
                                      message=str(exc)[:2000]))
                continue
            except ConfigError:
                raise
            except Exception as exc:  # what the solution raised, as a built-in exception
                out.append(CaseResult(i, CaseStatus.RUNTIME_ERROR, time.monotonic() - start,
                                      message=str(exc)[:2000]))
                continue
            ok = value_matches(got, case.expected, cases.compare)
            out.append(CaseResult(i, CaseStatus.PASSED if ok else CaseStatus.WRONG_ANSWER,
                                  time.monotonic() - start))
    finally:
        if session is not None:
            session.close()
    return out


_FROM_TEST = {"passed": CaseStatus.PASSED, "failed": CaseStatus.WRONG_ANSWER,
              "error": CaseStatus.RUNTIME_ERROR, "timeout": CaseStatus.TIMEOUT}


def _assert_cases(backend: InteractiveBackend, solution: str, cases: TestCases,
                  limits: Limits | None) -> tuple[list[CaseResult], str]:
    from revex.runtime.sandbox.harness import DEFAULT_LIMITS, run_tests

    assert cases.tests is not None and cases.entry_point is not None
    report = run_tests(solution, cases.tests, cases.entry_point, backend=backend,
                       limits=cases.limits or limits or DEFAULT_LIMITS)
    out = [CaseResult(i, _FROM_TEST.get(r.status, CaseStatus.RUNTIME_ERROR),
                      message=f"{r.name}: {r.message}"[:2000] if r.message else r.name)
           for i, r in enumerate(report.results)]
    return out, report.message


def judge_many(solutions: Sequence[str], cases: TestCases | Sequence[TestCases] | Any, *,
               language: str | Sequence[str] = "python", backend: SandboxBackend | None = None,
               concurrency: int = 0, stop_on_first_failure: bool = False,
               limits: Limits | None = None, compile_limits: Limits | None = None,
               progress: Callable[[int, int], None] | None = None) -> list[JudgeResult]:
    """Judge each solution against its test cases; results keep the order of ``solutions``.

    ``cases``: one :class:`TestCases` (or anything :func:`load_cases` takes) for all
    solutions, or a sequence with one per solution; ``language`` likewise. ``concurrency``
    runs at a time (0: one per CPU); stdio cases run case-major so each solution compiles once
    while others compile in parallel. ``stop_on_first_failure`` skips (``skipped``) the cases
    of a solution not yet started once one of its cases failed (stdio and call-style; assert
    and HumanEval tests always run whole). ``limits`` apply to cases
    without their own (default: the language's, see ``languages.default_limits``).
    ``progress(done, total)`` is called after each unit of work.

    Raises ``ConfigError`` (bad cases, unknown language or missing toolchain, call-style or
    assert tests for a language other than Python, length mismatch) and ``SandboxError``.
    """
    n = len(solutions)
    if isinstance(cases, TestCases) or not isinstance(cases, Sequence) or isinstance(
            cases, str) or (cases and isinstance(cases[0], str)):
        per_cases = [load_cases(cases)] * n
    else:
        if len(cases) != n:
            raise ConfigError(f"{len(cases)} sets of test cases for {n} solutions")
        per_cases = [load_cases(c) for c in cases]
    langs = [language] * n if isinstance(language, str) else list(language)
    if len(langs) != n:
        raise ConfigError(f"{len(langs)} languages for {n} solutions")
    for i, (lang, tc) in enumerate(zip(langs, per_cases, strict=True)):
        if not isinstance(solutions[i], str):
            raise ConfigError(f"solutions[{i}] must be source text (str)")
        if lang not in languages.supported():
            raise ConfigError(f"solutions[{i}]: unknown language {lang!r}; supported: "
                              f"{', '.join(languages.supported())}")
        if lang in languages.LANGUAGE_TABLE:
            languages.require(lang)
        if tc.kind != "stdio" and lang != "python":
            raise ConfigError(f"solutions[{i}]: {tc.kind} test cases run Python only; "
                              f"{lang} takes stdin/stdout cases")
    workers = concurrency or os.cpu_count() or 1
    with contextlib.ExitStack() as stack:
        if backend is None:
            from revex.runtime.sandbox.harness import default_backend

            backend = stack.enter_context(default_backend(workers))
        return _Batch(backend, solutions, per_cases, langs, stop_on_first_failure, limits,
                      compile_limits, progress).run(workers)


class _Batch:
    def __init__(self, backend: SandboxBackend, solutions: Sequence[str],
                 cases: list[TestCases], langs: list[str], stop_first: bool,
                 limits: Limits | None, compile_limits: Limits | None,
                 progress: Callable[[int, int], None] | None) -> None:
        self.backend, self.solutions, self.cases, self.langs = backend, solutions, cases, langs
        self.stop_first, self.limits, self.compile_limits = stop_first, limits, compile_limits
        self.progress = progress
        self.results: list[list[CaseResult]] = [[] for _ in solutions]
        self.messages = ["" for _ in solutions]
        self.failed = [False] * len(solutions)
        self.lock = threading.Lock()
        self.done = 0
        self.total = 0

    def _record(self, i: int, res: list[CaseResult], message: str = "") -> None:
        with self.lock:
            self.results[i].extend(res)
            if message:
                self.messages[i] = message
            if any(not r.passed and r.status is not CaseStatus.SKIPPED for r in res):
                self.failed[i] = True
            self.done += 1
            done, total = self.done, self.total
        if self.progress is not None:
            self.progress(done, total)

    def _stdio(self, i: int, j: int) -> None:
        tc = self.cases[i]
        if self.stop_first and self.failed[i]:
            self._record(i, [CaseResult(j, CaseStatus.SKIPPED)])
            return
        self._record(i, [_stdio_case(self.backend, self.solutions[i], self.langs[i], j,
                                     tc.cases[j], tc, self.limits, self.compile_limits)])

    def _session(self, i: int) -> None:
        tc, be = self.cases[i], self.backend
        if not isinstance(be, InteractiveBackend):
            raise ConfigError(f"backend {be.name} cannot run a test server (no spawn())")
        if tc.kind == "call":
            self._record(i, _call_cases(be, self.solutions[i], tc, self.limits,
                                        self.stop_first))
        else:
            self._record(i, *_assert_cases(be, self.solutions[i], tc, self.limits))

    def run(self, workers: int) -> list[JudgeResult]:
        jobs: list[Callable[[], None]] = []
        width = max((len(tc.cases) for tc in self.cases if tc.kind == "stdio"), default=0)
        for i, tc in enumerate(self.cases):
            if tc.kind != "stdio":
                jobs.append(lambda i=i: self._session(i))  # type: ignore[misc]
        for j in range(width):  # case-major: first cases (and compiles) of all solutions first
            for i, tc in enumerate(self.cases):
                if tc.kind == "stdio" and j < len(tc.cases):
                    jobs.append(lambda i=i, j=j: self._stdio(i, j))  # type: ignore[misc]
        self.total = len(jobs)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for fut in [pool.submit(job) for job in jobs]:
                fut.result()
        return [_finish(self.langs[i], self.results[i], self.messages[i])
                for i in range(len(self.solutions))]


def judge(solution: str, cases: TestCases | Any, *, language: str = "python",
          backend: SandboxBackend | None = None, concurrency: int = 0,
          stop_on_first_failure: bool = False, limits: Limits | None = None,
          compile_limits: Limits | None = None) -> JudgeResult:
    """:func:`judge_many` for one solution. Raises like it."""
    return judge_many([solution], cases, language=language, backend=backend,
                      concurrency=concurrency, stop_on_first_failure=stop_on_first_failure,
                      limits=limits, compile_limits=compile_limits)[0]
