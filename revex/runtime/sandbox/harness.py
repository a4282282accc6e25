"""Unforgeable test verdicts: the solution runs in a sandbox, the tests run in trusted code.

How a verdict is made:

1. The solution is loaded in a sandbox (any backend with ``spawn``; by default the warm nsjail
   path, a forked child of a jailed zygote, see ``warm.py``) by a
   small call server (``_harness_server.py``). The sandbox never receives the tests or any
   expected value.
2. The test source runs on the host, in this process, with every name the solution defines
   (``candidate`` for the entry point in HumanEval-style ``check(candidate)``) bound to a
   :class:`_Proxy`. A proxy call sends the function name and arguments as plain data over a
   private pipe and returns the decoded reply. The decoder builds only built-in values (int,
   float, str, bytes, list, tuple, set, dict, ...), so comparisons in the test (``==``,
   ``abs(x - y) < 1e-6``, ``is True``) run trusted code; the solution's ``__eq__`` never runs.
3. Each ``assert`` is rewritten to record one result; the verdict is computed here, never read
   from the solution's exit code, stdout or files.
4. Only assertions that exercise the solution can pass: one that made a call into the
   solution, or follows calls made since the previous assertion (``r = candidate(x)``, then
   ``assert r == y``). An assertion that holds without calling anything (HumanEval's closing
   ``assert True``) is not a result at all, so it cannot earn credit; a failing one always is.
   A solution none of whose calls returned a value passes nothing: an assertion that holds
   after only raised (and caught) calls is failed.

The test source is trusted (it comes from the dataset, not the model), which is why it may run
in this process. It runs with proxies only; it cannot be reached from the sandbox.

Residual risks, by design accepted: the solution controls its whole sandbox process, including
the server loop and the reply channel, so it can make any call return any plain value it can
compute (exactly what an honest function can do), but it cannot learn expected values. An
early exit, a kill, a hang or a protocol violation ends the session: the current and all later
calls fail. Arguments are copied, so in-place mutation of an argument is not visible to the test.
"""

from __future__ import annotations

import ast
import base64
import builtins
import contextlib
import json
import math
import os
import re
import secrets
import selectors
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from revex import _pyast
from revex.errors import ConfigError, SandboxError
from revex.runtime.sandbox._common import take_json_line
from revex.runtime.sandbox.base import (
    ExecSpec,
    InteractiveBackend,
    Limits,
    TestCaseResult,
    TestReport,
)

SERVER_SOURCE = (Path(__file__).parent / "_harness_server.py").read_text()
DEFAULT_LIMITS = Limits(wall_s=60.0, cpu_s=60.0, memory_mb=512, output_bytes=100_000)
_MAX_LINE = 64 << 20
#: a line with its end, split as ``ast`` splits source (only at \r\n, \r and \n)
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")
_EXC_TYPES = {n: t for n, t in vars(builtins).items()
              if isinstance(t, type) and issubclass(t, Exception)}


class SolutionGone(Exception):
    """The solution's process ended or broke the protocol; no further calls are possible."""


class CallTimeout(Exception):
    """A call into the solution did not return in time (the session was ended)."""


class SolutionRaised(Exception):
    """The solution raised an exception of a type that is not a built-in exception."""


# -- the plain-data wire format (host side) ----------------------------------------------------
def encode(v: Any, depth: int = 0) -> Any:
    """Encode a trusted value for the wire. Raises ``ConfigError`` for non-plain data."""
    if depth > 200:
        raise ConfigError("argument nested too deeply")
    t = type(v)
    if v is None or t in (bool, int, str):
        return v
    if t is float:
        return v if math.isfinite(v) else {"$f": repr(v)}
    if t is list:
        return [encode(x, depth + 1) for x in v]
    tags: dict[type, str] = {tuple: "$t", set: "$s", frozenset: "$fs"}
    if t in tags:
        return {tags[t]: [encode(x, depth + 1) for x in v]}
    if t is dict:
        return {"$d": [[encode(k, depth + 1), encode(x, depth + 1)] for k, x in v.items()]}
    if t is bytes:
        return {"$b": base64.b64encode(v).decode()}
    if t is complex:
        return {"$c": [encode(v.real), encode(v.imag)]}
    raise ConfigError(f"test passed a {t.__name__}, which is not plain data")


def decode(v: Any, depth: int = 0) -> Any:
    """Decode an untrusted reply into built-in values only. Raises ``ValueError`` if malformed."""
    if depth > 200:
        raise ValueError("reply nested too deeply")
    t = type(v)
    if v is None or t in (bool, int, str, float):
        return v
    if t is list:
        return [decode(x, depth + 1) for x in v]
    if t is not dict or len(v) != 1:
        raise ValueError("malformed value")
    ((tag, x),) = v.items()
    if tag == "$f" and x in ("nan", "inf", "-inf"):
        return float(x)
    if tag == "$b" and type(x) is str:
        return base64.b64decode(x, validate=True)
    if type(x) is not list:
        raise ValueError("malformed value")
    items = [decode(i, depth + 1) for i in x] if tag != "$d" else []
    if tag == "$t":
        return tuple(items)
    if tag == "$s":
        return set(items)
    if tag == "$fs":
        return frozenset(items)
    if tag == "$c" and len(items) == 2 and all(type(i) in (int, float) for i in items):
        return complex(items[0], items[1])
    if tag == "$d":
        if not all(type(p) is list and len(p) == 2 for p in x):
            raise ValueError("malformed dict")
        return {decode(k, depth + 1): decode(i, depth + 1) for k, i in x}
    raise ValueError(f"unknown tag {tag!r}")


# -- one sandboxed solution ----------------------------------------------------------------------
class _Session:
    """A call server in a sandbox, with a bounded reader for its replies."""

    def __init__(self, backend: InteractiveBackend, solution: str, limits: Limits,
                 call_timeout_s: float) -> None:
        self.call_timeout_s = call_timeout_s
        self.gone: str | None = None
        # What the verdict counting reads (see run_tests): calls attempted, calls that returned.
        self.calls = 0
        self.returned = 0
        self._buf = bytearray()
        self._sp = backend.spawn(ExecSpec(code=SERVER_SOURCE, limits=limits))
        self._sel = selectors.DefaultSelector()  # one for all replies (not one per call)
        self._sel.register(self._sp.stdout, selectors.EVENT_READ)
        self._drain = threading.Thread(target=self._drain_stderr, daemon=True)
        self._drain.start()
        try:
            self._send({"solution": solution})
            hello = self._recv(max(call_timeout_s, 10.0))
        except (SolutionGone, CallTimeout) as exc:
            self._end(f"solution did not load: {exc}")
            return
        if hello.get("ready") is not True:
            self._end(f"solution did not load: {str(hello.get('load_error'))[:500]}")

    def _drain_stderr(self) -> None:
        # Keep the solution from blocking on a full stderr pipe; the text is discarded.
        try:
            while os.read(self._sp.stderr, 65536):
                pass
        except OSError:
            return

    def _end(self, why: str) -> None:
        if self.gone is None:
            self.gone = why
        self._sp.close()

    def close(self) -> None:
        self._end("closed")
        self._drain.join(timeout=2.0)
        self._sel.close()

    def _send(self, obj: dict[str, Any]) -> None:

        data = (json.dumps(obj) + "\n").encode()
        try:
            while data:
                data = data[os.write(self._sp.stdin, data):]
        except OSError as exc:
            raise SolutionGone(f"the solution's process ended ({exc.strerror})") from exc

    def _recv(self, timeout: float) -> dict[str, Any]:

        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CallTimeout(f"no reply within {timeout:g} s")
            if not self._sel.select(left):
                continue
            chunk = os.read(self._sp.stdout, 1 << 20)
            if not chunk:
                raise SolutionGone("the solution's process ended")
            self._buf += chunk
            if len(self._buf) > _MAX_LINE:
                raise SolutionGone("reply too large")
        try:
            return take_json_line(self._buf)
        except ValueError as exc:
            raise SolutionGone("malformed reply") from exc

    def call(self, name: str, args: tuple[Any, ...]) -> Any:
        """Call ``name(*args)`` in the sandbox and return the decoded plain value.

        Raises the built-in exception the solution raised (or :class:`SolutionRaised`),
        :class:`CallTimeout`, or :class:`SolutionGone`.
        """
        self.calls += 1
        if self.gone is not None:
            raise SolutionGone(self.gone)
        rid = secrets.token_hex(8)
        payload = {"id": rid, "name": name, "args": [encode(a) for a in args]}
        try:
            self._send(payload)
            reply = self._recv(self.call_timeout_s)
            if reply.get("id") != rid:
                raise SolutionGone("reply for another request (protocol violation)")
            if "ok" in reply:
                try:
                    value = decode(reply["ok"])
                except (ValueError, TypeError, RecursionError) as exc:
                    raise SolutionGone(f"reply is not plain data: {exc}") from exc
                self.returned += 1
                return value
        except CallTimeout as exc:
            self._end(f"a call timed out: {exc}")
            raise
        except SolutionGone as exc:
            self._end(str(exc))
            raise
        exc_name, msg = str(reply.get("exc", "?"))[:100], str(reply.get("msg", ""))[:500]
        raise _solution_exception(exc_name, msg)


def _solution_exception(name: str, msg: str) -> Exception:
    """The exception to raise in the tests for one the solution raised: the built-in type of
    that name (so ``pytest.raises``-style tests work) carrying only the message, else
    :class:`SolutionRaised` whose message names the type."""
    exc_type = _EXC_TYPES.get(name)
    if exc_type is not None:
        try:
            return exc_type(msg)
        except TypeError:  # a built-in with a richer constructor (UnicodeDecodeError, ...)
            pass
    return SolutionRaised(f"{name}: {msg}")


def _failure_text(exc: Exception) -> str:
    if isinstance(exc, SolutionRaised):  # its message already starts with the type's name
        return str(exc)[:500]
    return f"{type(exc).__name__}: {exc}"[:500]


class _Proxy:
    """Stands for a function of the solution; calling it crosses the sandbox boundary."""

    def __init__(self, session: _Session, name: str) -> None:
        self._session, self._name = session, name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs:
            raise ConfigError("keyword arguments are not supported across the boundary")
        return self._session.call(self._name, args)

    def __repr__(self) -> str:
        return f"<sandboxed {self._name}>"


# -- trusted test code ------------------------------------------------------------------------
class _AssertRewriter:
    """``assert TEST, MSG`` -> ``__revex_assert__(lambda: TEST, LINE, TEXT)``."""

    def __init__(self, source: str) -> None:
        # Split once (ast.get_source_segment splits the whole source for every node).
        self.lines = _LINE.findall(source)

    def _segment(self, node: ast.expr) -> str | None:
        """``ast.get_source_segment(source, node)``."""
        if node.end_lineno is None or node.end_col_offset is None:
            return None
        first, last = node.lineno - 1, node.end_lineno - 1
        head = self.lines[first].encode()
        if first == last:
            return head[node.col_offset:node.end_col_offset].decode()
        return (head[node.col_offset:].decode() + "".join(self.lines[first + 1:last])
                + self.lines[last].encode()[:node.end_col_offset].decode())

    def rewrite(self, node: ast.Assert) -> ast.Expr:
        text = self._segment(node.test) or ast.unparse(node.test)
        func = ast.Name("__revex_assert__", ast.Load())
        fn = ast.Lambda(ast.arguments([], [], None, [], [], None, []), node.test)
        line, shown = ast.Constant(node.lineno), ast.Constant(" ".join(text.split())[:120])
        call = ast.Call(func=func, args=[fn, line, shown], keywords=[])
        expr = ast.Expr(call)
        for new in (func, fn, line, shown, call, expr):  # what fix_missing_locations would set
            ast.copy_location(new, node)
        return expr

    def rewrite_block(self, node: ast.AST) -> None:
        """Rewrite the asserts among ``node``'s own statements (not nested ones)."""
        for field in ("body", "orelse", "finalbody"):
            stmts = getattr(node, field, None)
            if type(stmts) is list:
                stmts[:] = [self.rewrite(x) if isinstance(x, ast.Assert) else x for x in stmts]


class CompiledTests:
    """Tests parsed and rewritten once, reusable for many solutions.

    Raises ``ConfigError`` if the test source does not parse.
    """

    def __init__(self, tests: str, entry_point: str) -> None:
        try:
            tree = _pyast.parse(tests)
        except SyntaxError as exc:
            raise ConfigError(f"test source does not parse: {exc}") from exc
        self.entry_point = entry_point
        self.has_check = any(isinstance(n, ast.FunctionDef) and n.name == "check"
                             for n in tree.body)
        defined = set()
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef):
                defined.add(node.name)
            elif isinstance(node, ast.Import | ast.ImportFrom):
                defined.update((a.asname or a.name).split(".")[0] for a in node.names)
        loads = set()
        rewriter = _AssertRewriter(tests)
        # One walk: names stored and loaded, and every block's asserts rewritten (the walk has
        # queued a block's children before it yields the block, so it still visits the
        # original asserts, whose tests the rewritten ones share).
        for sub in ast.walk(tree):
            if isinstance(sub, ast.Name):
                if isinstance(sub.ctx, ast.Store):
                    defined.add(sub.id)
                elif isinstance(sub.ctx, ast.Load):
                    loads.add(sub.id)
            elif isinstance(sub, ast.stmt | ast.mod | ast.excepthandler | ast.match_case):
                rewriter.rewrite_block(sub)
        self.loads = loads - defined
        self.code = _pyast.compile_tree(tree, "<tests>")

    def remote_names(self, solution: str) -> set[str]:
        """Names the tests use that the solution defines at top level (parsed, not run)."""
        try:
            tree = _pyast.parse(solution)
        except SyntaxError:
            return {self.entry_point}
        names = {self.entry_point}
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        return (names & self.loads - set(vars(builtins))) | {self.entry_point}


def run_tests(solution: str, tests: str | CompiledTests, entry_point: str, *,
              backend: InteractiveBackend | None = None, limits: Limits = DEFAULT_LIMITS,
              call_timeout_s: float = 3.0) -> TestReport:
    """Run ``tests`` against ``solution``; one :class:`TestCaseResult` per executed assert
    that exercised the solution (see the module docstring, point 4).

    ``tests`` is a HumanEval-style ``def check(candidate): ...`` or top-level asserts that
    name ``entry_point`` (and possibly other names the solution defines).
    Raises ``ConfigError`` for unparsable tests and ``SandboxError`` if the sandbox cannot start.
    """
    compiled = tests if isinstance(tests, CompiledTests) else CompiledTests(tests, entry_point)
    if backend is None:
        with default_backend(1) as be:
            return run_tests(solution, compiled, entry_point, backend=be, limits=limits,
                             call_timeout_s=call_timeout_s)
    be = backend
    results: list[TestCaseResult] = []
    session = _Session(be, solution, limits, call_timeout_s)
    message = session.gone or ""
    seen = [0]  # session.calls when the previous assertion ended

    def record(fn: Any, line: int, text: str) -> None:
        name = f"line {line}: {text}"
        try:
            ok = fn()
        except CallTimeout as exc:
            result = TestCaseResult(name, "timeout", str(exc))
        except SolutionGone as exc:
            result = TestCaseResult(name, "error", str(exc))
        except Exception as exc:  # the test's own expression failed: that is this test's verdict
            result = TestCaseResult(name, "failed", _failure_text(exc))
        else:
            result = TestCaseResult(name, "passed" if ok else "failed",
                                    "" if ok else "assertion is false")
        exercised = session.calls > seen[0]
        seen[0] = session.calls
        # a pass that tested nothing of the solution is no result; a failure always counts
        # (dropping one would raise the pass rate)
        if exercised or result.status != "passed":
            results.append(result)

    try:
        ns: dict[str, Any] = {"__name__": "__revex_tests__", "__revex_assert__": record}
        for name in compiled.remote_names(solution):
            ns[name] = _Proxy(session, name)
        try:
            exec(compiled.code, ns)  # trusted dataset code; see the module docstring
            if compiled.has_check:
                ns["check"](_Proxy(session, compiled.entry_point))
        except Exception as exc:  # test code outside an assert failed: one failed result
            results.append(TestCaseResult("test code", "error", _failure_text(exc)))
    finally:
        session.close()
    if session.returned == 0:  # it never returned a value: whatever held did not test it
        results = [TestCaseResult(r.name, "failed", "no call into the solution returned a value")
                   if r.status == "passed" else r for r in results]
    passed = sum(r.status == "passed" for r in results)
    return TestReport(passed=passed, total=len(results), results=results, message=message)


def run_tests_many(solutions: Sequence[str], tests: str, entry_point: str, *,
                   backend: InteractiveBackend | None = None, limits: Limits = DEFAULT_LIMITS,
                   call_timeout_s: float = 3.0, concurrency: int = 0) -> list[TestReport]:
    """:func:`run_tests` for N solutions against the same tests, ``concurrency`` at a time
    (0: one per CPU). Reports keep the order of ``solutions``. Raises like :func:`run_tests`."""
    compiled = CompiledTests(tests, entry_point)
    workers = concurrency or os.cpu_count() or 1
    with contextlib.ExitStack() as stack:
        be = backend if backend is not None else stack.enter_context(default_backend(workers))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(lambda s: run_tests(s, compiled, entry_point, backend=be,
                                                     limits=limits,
                                                     call_timeout_s=call_timeout_s),
                                 solutions))


@contextlib.contextmanager
def default_backend(size: int = 0) -> Iterator[InteractiveBackend]:
    """The backend test runs use when none is given: the warm nsjail path (``size`` idle
    zygotes, 0: one per CPU) where nsjail works, else what :func:`select_backend` picks.
    Closed on exit. Raises ``SandboxError`` if the chosen backend cannot run a test server."""
    from revex.runtime.sandbox import select_backend

    be: Any
    try:
        from revex.runtime.sandbox.warm import WarmPythonBackend

        be = WarmPythonBackend(size=size)
    except (SandboxError, ImportError):
        be = select_backend()
    try:
        if not isinstance(be, InteractiveBackend):
            raise SandboxError(f"backend {be.name} cannot run a test server (no spawn())")
        yield be
    finally:
        close = getattr(be, "close", None)
        if close is not None:
            close()
