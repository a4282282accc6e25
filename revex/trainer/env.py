"""An environment for GRPOTrainer's ``environment_factory``: every tool acts through one episode.

TRL makes one instance per rollout (no-argument ``__init__``), calls ``reset(**row)`` before each
rollout, exposes every other public method as a tool (described by its Google-style docstring)
and adds ``get_reward()`` as a reward named after the class. Here each rollout gets a fresh
temporary workspace and a fresh episode of the revex runtime under the ``training`` policy;
``reset`` rolls the previous rollout's episode back, so nothing a rollout did survives it.

Bind a runtime with :meth:`RevexEnv.bind` (it returns a subclass TRL can instantiate)::

    Env = RevexEnv.bind(Runtime(state_dir=..., policy="training"))
    GRPOTrainer(..., environment_factory=Env)

Use an instance as a context manager (``with Env() as env``), or ``Env.end_all()`` after
training, to roll back the last rollouts. Tools return strings, refusals included: a
:class:`~revex.errors.PolicyViolation` becomes ``"refused by policy: ..."`` so the model sees
it; other runtime errors become ``"error: ..."``.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any, ClassVar

from revex.errors import ActionFailed, ConfigError, PolicyViolation, RevexError
from revex.runtime.sandbox.base import Limits
from revex.trainer.executor import TestRunner

_MAX_OUTPUT = 4000
HTTP_MODES = ("replay", "dry_run")


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_OUTPUT else text[:_MAX_OUTPUT] + "\n...[truncated]"


class RevexEnv:
    """A rollout's sandboxed workspace with file, Python, test, SQL and HTTP tools.

    Class attributes (set them with :meth:`bind`): ``runtime`` (a :class:`revex.Runtime`;
    when unset, one is opened on first use in a temporary state directory, policy
    ``training``), ``limits`` (per code run), ``http_mode`` (``"replay"`` or ``"dry_run"``:
    never live) and ``http_cassette``.

    Counters for safety metrics: ``denials`` (policy refusals seen by the model),
    ``tool_calls`` and ``rollbacks`` (episodes rolled back by this instance).
    """

    runtime: ClassVar[TestRunner | None] = None
    limits: ClassVar[Limits] = Limits(wall_s=5.0, cpu_s=5.0, memory_mb=256)
    http_mode: ClassVar[str] = "dry_run"
    http_cassette: ClassVar[str | None] = None
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()
    _instances: ClassVar[weakref.WeakSet[RevexEnv]] = weakref.WeakSet()

    @classmethod
    def bind(cls, runtime: TestRunner, *, limits: Limits | None = None,
             http_mode: str = "dry_run", http_cassette: str | None = None) -> type[RevexEnv]:
        """A subclass of this environment bound to ``runtime`` (pass it to TRL).

        Raises:
            ConfigError: ``http_mode`` is not ``"replay"`` or ``"dry_run"``.
        """
        if http_mode not in HTTP_MODES:
            raise ConfigError(f"http_mode must be one of {', '.join(HTTP_MODES)} (never live), "
                              f"got {http_mode!r}")
        attrs = {"runtime": runtime, "limits": limits or cls.limits, "http_mode": http_mode,
                 "http_cassette": http_cassette, "_instances": weakref.WeakSet(),
                 "_shared_lock": threading.Lock()}
        return type(cls.__name__, (cls,), attrs)

    def __init__(self) -> None:
        self._episode: Any = None
        self._workspace: Path | None = None
        self._row: dict[str, Any] = {}
        self._sql_error: str | None = None
        self.last_pass_rate: float | None = None
        self.denials = 0
        self.tool_calls = 0
        self.rollbacks = 0
        self.episode_ids: list[str] = []
        with self._shared_lock:
            self._instances.add(self)

    @classmethod
    def end_all(cls) -> int:
        """Roll back the open rollout of every instance of this (bound) class.

        TRL keeps its pooled instances after training; call this at the end so the last
        rollouts' episodes are rolled back now rather than recovered on the next open. Returns
        the number of episodes rolled back.
        """
        with cls._shared_lock:
            instances = list(cls._instances)
        before = sum(env.rollbacks for env in instances)
        for env in instances:
            env._end_rollout()
        return sum(env.rollbacks for env in instances) - before

    @classmethod
    def _runtime(cls) -> TestRunner:
        with cls._shared_lock:
            if cls.runtime is None:
                from revex import Runtime

                state = tempfile.mkdtemp(prefix="revex-env-state-")
                cls.runtime = Runtime(state_dir=state, policy="training")
            return cls.runtime

    # ---- lifecycle (not tools) ---------------------------------------------------------------

    def reset(self, **row: Any) -> str | None:
        """Roll back the previous rollout and start a fresh episode on a fresh workspace.

        ``row`` is the dataset row: ``tests`` and ``entry_point`` feed :meth:`run_tests`,
        ``database`` (a URL) enables :meth:`sql`.
        """
        self._end_rollout()
        runtime = self._runtime()
        self._row = dict(row)
        self.last_pass_rate = None
        self._sql_error = None
        self._workspace = Path(tempfile.mkdtemp(prefix="revex-env-"))
        options: dict[str, Any] = {"http_mode": self.http_mode}
        if self.http_cassette:
            options["http_cassette"] = self.http_cassette
        database = row.get("database")
        if database:  # the rollout acts on its own fork, dropped when the episode ends
            options.update(databases={"db": str(database)}, sql_fork=True)
        try:
            self._episode = runtime.episode(self._workspace, on_exit="rollback", **options)
        except (ConfigError, ActionFailed) as exc:
            if not database:
                raise
            # the database cannot be reached or forked: the sql tool says why
            self._sql_error = f"the task's database is not usable: {exc}"
            options.pop("databases", None)
            options.pop("sql_fork", None)
            self._episode = runtime.episode(self._workspace, on_exit="rollback", **options)
        self.episode_ids.append(self._episode.id)
        return ("Your workspace is empty. Tools: write_file, read_file, run_python, run_tests, "
                "sql, http_request.")

    def __enter__(self) -> RevexEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self._end_rollout()

    def _end_rollout(self) -> None:
        """Roll back and close the current episode and delete its workspace.

        Private so that TRL does not offer it as a tool; ``with env:`` calls it on exit.
        """
        if self._episode is not None:
            try:
                self._episode.close()
                self.rollbacks += 1
            finally:
                self._episode = None
        if self._workspace is not None:
            shutil.rmtree(self._workspace, ignore_errors=True)
            self._workspace = None

    def get_reward(self) -> float:
        """The last ``run_tests`` pass rate; else the tests run on ``solution.py`` if the model
        wrote one; else 0."""
        if self.last_pass_rate is not None:
            return self.last_pass_rate
        if self._episode is None or not self._row.get("tests"):
            return 0.0
        if not self._episode.fs.exists("solution.py"):
            return 0.0
        self.run_tests(self._episode.fs.read_text("solution.py"))
        return self.last_pass_rate or 0.0

    def _act(self, action: Any) -> str:
        """Run one tool action; refusals and runtime errors become messages for the model."""
        self.tool_calls += 1
        if self._episode is None:
            return "error: no episode; the environment was not reset"
        try:
            return str(action())
        except PolicyViolation as exc:
            self.denials += 1
            return f"refused by policy: {exc}"
        except RevexError as exc:
            return f"error: {type(exc).__name__}: {exc}"

    # ---- tools -------------------------------------------------------------------------------

    def write_file(self, path: str, content: str) -> str:
        """Write a text file in the workspace (journaled; undone when the rollout ends).

        Args:
            path: File path relative to the workspace, e.g. "solution.py".
            content: The full text to write.

        Returns:
            A confirmation, or why the write was refused.
        """
        def act() -> str:
            self._episode.fs.write_text(path, content)
            return f"wrote {len(content.encode())} bytes to {path}"

        return self._act(act)

    def read_file(self, path: str) -> str:
        """Read a text file from the workspace.

        Args:
            path: File path relative to the workspace.

        Returns:
            The file's text, or why it could not be read.
        """
        return self._act(lambda: _clip(self._episode.fs.read_text(path)))

    def run_python(self, code: str) -> str:
        """Run Python code in the sandbox over the workspace (no network, limited resources).

        Args:
            code: Python source to run.

        Returns:
            The run's status, exit code, stdout and stderr.
        """
        def act() -> str:
            result = self._episode.run(code=code, limits=self.limits)
            return _clip(f"status: {result.status}\nexit_code: {result.exit_code}\n"
                         f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")

        return self._act(act)

    def run_tests(self, code: str) -> str:
        """Run this task's tests against a solution (the verdict cannot be faked by the code).

        Args:
            code: The complete solution source, defining the function under test.

        Returns:
            How many tests passed and the verdict of each.
        """
        tests, entry_point = self._row.get("tests"), self._row.get("entry_point")
        if not tests or not entry_point:
            return "error: this task has no tests"

        def act() -> str:
            report = self._episode.run_tests(code, tests, entry_point, limits=self.limits)
            self.last_pass_rate = report.pass_rate
            lines = [f"passed {report.passed}/{report.total}"]
            lines += [f"{r.status}: {r.name} {r.message}".rstrip() for r in report.results]
            return _clip("\n".join(lines))

        return self._act(act)

    def sql(self, query: str) -> str:
        """Run one SQL statement on this task's database (undone when the rollout ends).

        Args:
            query: A single SQL statement.

        Returns:
            The rows for a query, the affected row count for a change, or why it was refused.
        """
        if not self._row.get("database"):
            return "error: this task has no database"
        if self._sql_error is not None:
            return f"error: {self._sql_error}"

        def act() -> str:
            db = self._episode.sql("db")
            if query.lstrip().lower().startswith(("select", "with", "pragma")):
                return _clip(repr(db.query(query)))
            result = db.execute(query)
            return f"ok: {getattr(result, 'rowcount', result)}"

        return self._act(act)

    def http_request(self, method: str, url: str, body: str = "") -> str:
        """Send an HTTP request (replayed or dry-run, never live; undone when the rollout ends).

        Args:
            method: HTTP method, e.g. "GET" or "POST".
            url: Absolute URL.
            body: Request body (JSON text or empty).

        Returns:
            The status code and body of the response, or why the request was refused.
        """
        def act() -> str:
            response = self._episode.http.request(method.upper(), url,
                                                  content=body.encode() if body else None)
            return _clip(f"{response.status_code}\n{response.text}")

        return self._act(act)
