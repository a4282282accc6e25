"""The Runtime: a state directory (journal, content store, key, owner locks), a policy, and
the effects it knows. Opening one recovers the episodes of processes that died."""

from __future__ import annotations

import contextlib
import os
import re
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from revex.errors import (
    ConfigError,
    SandboxError,
    StateError,
)
from revex.policies.engine import Approver, PolicyEngine
from revex.policies.model import Policy
from revex.runtime import recovery
from revex.runtime.audit import AuditLog, AuditSink
from revex.runtime.effects.base import Effect, EffectContext, EffectFactory, Plan
from revex.runtime.effects.files import FileEffect
from revex.runtime.effects.http import HttpEffect
from revex.runtime.effects.http import options as http_options
from revex.runtime.effects.http_compensations import Compensations
from revex.runtime.effects.http_forward import LargeCollections
from revex.runtime.effects.http_secrets import Credentials, Secrets
from revex.runtime.effects.sql import SqlEffect, check_databases, redact_config
from revex.runtime.episode import Episode, OnError, OnExit, new_episode_id
from revex.runtime.journal import Journal, VerifyReport
from revex.runtime.keyfile import load_or_create_key
from revex.runtime.rollback import (
    OwnerLock,
    pending_items,
)
from revex.runtime.sandbox.base import ExecResult, Limits, SandboxBackend, TestReport
from revex.runtime.store import ContentStore

if TYPE_CHECKING:
    from revex.judge import JudgeResult

ACTIVE = recovery.ACTIVE  # statuses whose episode recovery may roll back
# What an episode id (or a prefix of one) may hold: ids are ep-YYYYmmdd-HHMMSS-<hex>.
_ID_PREFIX = re.compile(r"[A-Za-z0-9-]{1,100}")


def default_state_dir() -> Path:
    """``$REVEX_STATE_DIR``, else ``$XDG_STATE_HOME/revex``, else ``~/.local/state/revex``."""
    env = os.environ.get("REVEX_STATE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "revex"


def _prepare_state_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except (FileExistsError, NotADirectoryError) as exc:
        raise StateError(f"state dir {path} exists and is not a directory") from exc
    except OSError as exc:
        raise StateError(f"cannot create the state dir {path}: {exc}; choose another with "
                         "Runtime(state_dir=...) or REVEX_STATE_DIR") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise StateError(f"state dir {path} is not writable by this user; fix its permissions "
                         "or choose another with Runtime(state_dir=...) or REVEX_STATE_DIR")
    (path / "locks").mkdir(exist_ok=True)
    return path.resolve()


@dataclass(frozen=True)
class EpisodeInfo:
    id: str
    status: str
    created_at: float
    updated_at: float
    config: dict[str, Any]


class Runtime:
    """The reversible-action runtime.

    Args:
        state_dir: where the journal, content store and HMAC key live; must be outside every
            workspace. Default: :func:`default_state_dir`.
        policy: a preset name (``default``, ``permissive``, ``strict``, ``training``), a TOML
            path, or a :class:`Policy`.
        audit: the audit sink: ``"file"`` (``<state_dir>/audit.jsonl``), ``"stderr"``, a
            path, a text stream, or None.
        approver: called for actions a rule marks ``approve``; returns True to allow.
        recover: roll back the episodes of dead processes on open (default True).
        sandbox: the code-execution backend: ``"nsjail"``, ``"process"``, a backend object, or
            None for the strongest that works here (see ``revex doctor``).
        credentials: secrets for ``{secret:name}`` placeholders in HTTP requests: a mapping or
            the path of a TOML file (also ``REVEX_SECRET_<NAME>``); never journaled.
        executor: where ``pool`` runs stateless specs: ``"local"`` (threads, the default),
            ``"ray"``, ``"ray:auto"``, ``"ray://host:port"``, or a Pool (see revex.runtime.pool).
        compensations: declared HTTP compensations and irreversible operations: a
            :class:`Compensations` registry, a TOML path or a mapping (the policy's ``[http]``
            table is read too).

    Raises StateError (unusable state dir), PolicyError (bad policy), JournalError.
    """

    def __init__(
        self,
        state_dir: str | Path | None = None,
        policy: str | Path | Policy = "default",
        *,
        audit: AuditSink = "file",
        approver: Approver | None = None,
        recover: bool = True,
        sandbox: str | SandboxBackend | None = None,
        credentials: Credentials = None,
        compensations: Compensations | str | Path | dict[str, Any] | None = None,
        executor: Any = None,
    ) -> None:
        self.state_dir = _prepare_state_dir(Path(state_dir) if state_dir else default_state_dir())
        self.policy = Policy.load(policy)
        self.engine = PolicyEngine(self.policy)
        self.approver = approver
        key = load_or_create_key(self.state_dir / "hmac.key", self.state_dir / "journal.db")
        self.audit = AuditLog(audit, self.state_dir)
        self.journal = Journal(self.state_dir / "journal.db", key, on_record=self.audit)
        # small pre-images are kept in the journal, durable with the INTENT that names them
        self.store = ContentStore(self.state_dir / "store", inline=self.journal)
        self._credentials = credentials
        self._compensations = Compensations.load(compensations)
        self._compensations.add_mapping(self.policy.http, f"policy {self.policy.name} [http]")
        # POST targets seen to be large collections: not listed again before a POST
        self._large_collections = LargeCollections()
        self._effect_factories: dict[str, EffectFactory] = {
            "fs": FileEffect, "sql": SqlEffect, "http": self._http_effect}
        self._sandbox = sandbox
        self.executor = executor
        self._pool: Any = None
        self._backend: SandboxBackend | None = None
        self._backend_lock = threading.Lock()
        if recover:
            self.recover()

    # ---- effects -----------------------------------------------------------------------------

    def make_effect(self, prefix: str, ctx: EffectContext) -> Effect:
        try:
            factory = self._effect_factories[prefix]
        except KeyError as exc:
            raise ConfigError(f"no effect handles actions of kind '{prefix}.*'") from exc
        return factory(ctx)

    def _http_effect(self, ctx: EffectContext) -> Effect:
        return HttpEffect(ctx, secrets=Secrets(self._credentials),
                          compensations=self._compensations, journal=self.journal,
                          collections=self._large_collections)

    def lock_path(self, episode_id: str) -> Path:
        return self.state_dir / "locks" / f"{episode_id}.lock"

    # ---- episodes ----------------------------------------------------------------------------

    def episode(
        self,
        workspace: str | Path,
        *,
        on_exit: OnExit = "rollback",
        on_error: OnError = "rollback",
        **options: Any,
    ) -> Episode:
        """Start an episode acting in ``workspace`` (created if missing).

        HTTP options: ``http_mode`` (``live``, ``record``, ``replay``, ``dry_run``),
        ``http_cassette`` (name or path; default the episode id), ``http_timeout``,
        ``http_retries``, ``http_id_field``, ``credentials`` (TOML path) and
        ``compensations`` (TOML path).

        The episode is registered (its row and ``episode.begin`` record, in one transaction)
        only after this process holds its owner lock, so no other process can take it for
        the episode of a dead process.

        Raises ConfigError for a bad argument, StateError when the workspace and the state
        directory overlap or the owner lock cannot be created (e.g. a read-only state dir),
        JournalError when the journal cannot register it (e.g. a full disk); in those cases
        nothing is registered.
        """
        http = http_options(
            mode=options.pop("http_mode", None), cassette=options.pop("http_cassette", None),
            timeout=options.pop("http_timeout", None), retries=options.pop("http_retries", None),
            id_field=options.pop("http_id_field", None),
            compensations=options.pop("compensations", None),
            credentials=options.pop("credentials", None))
        if on_exit not in ("rollback", "commit"):
            raise ConfigError(f"on_exit must be 'rollback' or 'commit', not {on_exit!r}")
        if on_error not in ("rollback", "keep"):
            raise ConfigError(f"on_error must be 'rollback' or 'keep', not {on_error!r}")
        databases = options.pop("databases", None)
        sql_mode = options.pop("sql_mode", "durable")
        sql_fork = bool(options.pop("sql_fork", False))
        if options:
            raise ConfigError(f"unknown episode option(s): {', '.join(sorted(options))}")
        sql_config = check_databases(databases or {}, sql_mode)
        ws = Path(workspace)
        try:
            ws.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the workspace {ws}: {exc}") from exc
        if not ws.is_dir():
            raise ConfigError(f"workspace {ws} is not a directory")
        real = Path(os.path.realpath(ws))
        state = self.state_dir
        if real == state or state.is_relative_to(real) or real.is_relative_to(state):
            raise StateError(f"workspace {real} and state dir {state} overlap; the journal "
                             "must live outside every workspace")
        episode_id, owner = self._claim_episode_id()
        config: dict[str, Any] = {"workspace": str(real), "policy": self.policy.name,
                                  "pid": os.getpid(), "on_exit": on_exit}
        if http:
            config["http"] = http
        try:
            if databases:
                config.update(sql_config)
                if sql_fork:  # act on copies, dropped when the episode ends
                    forks: dict[str, str] = {}
                    config["sql_forks"] = []
                    for name, url in sql_config["databases"].items():
                        forks[name] = self.fork_database(url)
                        config["sql_forks"].append(forks[name])
                    config.update(databases=forks, sql_forks=sorted(forks.values()))
            self.journal.begin_episode(episode_id, config, target=str(real),
                                       params=redact_config(config))
        except BaseException:
            # nothing half-registered: no row, no lock file, no database copies
            owner.release(remove=True)
            with contextlib.suppress(Exception):  # the error to report is the one above
                self.drop_forks(config)
            raise
        return Episode(self, episode_id, config, on_exit, on_error, owner=owner)

    def _claim_episode_id(self) -> tuple[str, OwnerLock]:
        """A fresh episode id and its owner lock, held. The lock is taken before the episode
        becomes visible: a Runtime opened by another process in between must find it owned,
        never "recover" a live episode. An id whose lock is held, or that the journal already
        knows (an ended episode's lock is free again), is drawn again."""
        for _ in range(8):
            episode_id = new_episode_id()
            owner = OwnerLock(self.lock_path(episode_id))
            if not owner.acquire():
                continue  # another process holds this id right now
            if self.journal.episode(episode_id) is None:
                return episode_id, owner
            owner.release(remove=False)  # an ended episode's id: its lock file stays its own
        raise StateError("could not draw an unused episode id in 8 tries; the random source "
                         "or the journal's episodes table is broken (run `revex verify`)")

    def fork_database(self, url: str) -> str:
        """A copy of the database at ``url`` (SQLite backup API, PostgreSQL TEMPLATE, MariaDB
        table-by-table copy); returns its URL. With ``rt.episode(..., sql_fork=True)`` every
        database is forked for the episode and the forks are dropped when it ends.

        Raises ConfigError for a bad URL or a server that refuses the copy.
        """
        from revex.runtime.effects.sql_fork import fork_database

        return fork_database(url)

    def drop_forks(self, config: dict[str, Any]) -> None:
        """Drop the database forks an episode made (``sql_fork=True``)."""
        from revex.runtime.effects.sql_fork import drop_fork

        for url in config.get("sql_forks", ()):
            drop_fork(url)

    def episodes(self, status: str | None = None) -> list[EpisodeInfo]:
        return [EpisodeInfo(e["id"], e["status"], e["created_at"], e["updated_at"], e["config"])
                for e in self.journal.episodes(status)]

    def resolve_id(self, prefix: str) -> str:
        """The full id of the episode whose id starts with ``prefix``.

        Raises ConfigError when ``prefix`` is empty, longer than an id or holds a character no
        id has (so ``''`` or ``%`` never stand for every episode), when nothing matches, and
        when several episodes match (they are listed).
        """
        if not _ID_PREFIX.fullmatch(prefix):
            shown = (repr(prefix) if len(prefix) <= 60
                     else f"{prefix[:40]!r}... ({len(prefix)} chars)")
            raise ConfigError(f"{shown} is not an episode id or a prefix of one (letters, digits "
                              "and '-', like ep-20260101-120000-0a1b2c); `revex episodes` "
                              "lists them")
        matches = [m for m in self.journal.find_episode(prefix) if m.startswith(prefix)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise ConfigError(f"no episode matches {prefix!r}; `revex episodes` lists them")
        listed = ", ".join(matches[:10]) + (f" and {len(matches) - 10} more"
                                            if len(matches) > 10 else "")
        raise ConfigError(f"{prefix!r} matches {len(matches)} episodes ({listed}); "
                          "give more of the id")

    def undo(self, episode_id: str, *, force: bool = False) -> int:
        """Undo a committed episode (from any process), newest action first.

        Returns the number of actions undone; every one of them was verified by its effect to
        hold its pre-state again. Raises ConflictError when a target changed since (nothing
        is changed then, unless ``force``) or an undo could not be verified (the episode is
        then ``conflict``, never ``undone``); JournalCorrupt when the episode's records are
        incomplete or damaged (nothing is undone); ConfigError for an unknown or running
        episode.
        """
        return recovery.undo(self, episode_id, force=force)

    def recover(self) -> list[str]:
        """Roll back every episode whose owning process died; returns their ids.

        Which episodes those are is read from the episodes table and confirmed against the
        hash-chained records: an episode the table calls active but whose records say
        otherwise (the table was edited) is left alone with a warning. An episode whose owner
        holds its lock is never touched. An episode whose rollback meets drift is left with
        status ``conflict`` (see ``revex undo --force``) and a warning is issued.
        """
        return recovery.recover(self)

    # ---- code execution ----------------------------------------------------------------------

    @property
    def backend(self) -> SandboxBackend:
        """The sandbox backend, chosen on first use. Raises SandboxError/ConfigError."""
        with self._backend_lock:
            return self._choose_backend()

    def _choose_backend(self) -> SandboxBackend:
        if self._backend is None:
            if self._sandbox is None or isinstance(self._sandbox, str):
                from revex.runtime.sandbox import select_backend

                if self._sandbox is None:
                    # warm zygotes for plain Python runs; anything else runs cold inside it
                    try:
                        self._backend = select_backend("warm")
                    except SandboxError:
                        self._backend = select_backend(None)
                else:
                    self._backend = select_backend(self._sandbox)
                if self._backend.name == "process":
                    warnings.warn(
                        "revex is using the 'process' sandbox backend: rlimits and a process "
                        "group only, no namespaces; see `revex doctor`", stacklevel=4)
            else:
                self._backend = self._sandbox
        return self._backend

    def run(self, code: str | None = None, **options: Any) -> ExecResult:
        """Run code in the sandbox once, outside any episode and without a workspace.

        Takes the arguments of :meth:`Episode.run` (but no workspace). Not journaled: use an
        episode for an audited run. Raises ConfigError/SandboxError.
        """
        from revex.runtime.sandbox.base import make_spec

        spec = make_spec(code, **options)
        return self.backend.run(spec)

    def tests_plan(self, solution: str, tests: str, entry_point: str,
                   limits: Limits | None) -> Plan:
        """The ``exec.tests`` action: unforgeable verdicts, read-only for the journal."""
        import hashlib

        from revex.runtime.sandbox.harness import DEFAULT_LIMITS
        from revex.runtime.sandbox.harness import run_tests as harness_run_tests

        lim = limits or DEFAULT_LIMITS
        backend = self.backend

        def apply(_: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            report = harness_run_tests(solution, tests, entry_point, backend=backend,  # type: ignore[arg-type]
                                       limits=lim)
            statuses: dict[str, int] = {}
            for r in report.results:
                statuses[r.status] = statuses.get(r.status, 0) + 1
            return report, {"passed": report.passed, "total": report.total,
                            "statuses": statuses}

        return Plan(kind="exec.tests", target=entry_point,
                    attrs={"language": "python", "network": False, "wall_s": lim.wall_s,
                           "cpu_s": lim.cpu_s, "memory_mb": lim.memory_mb, "pids": lim.pids},
                    params={"entry_point": entry_point,
                            "solution_sha256": hashlib.sha256(solution.encode()).hexdigest(),
                            "tests_sha256": hashlib.sha256(tests.encode()).hexdigest()},
                    cost={"exec_runs": 1}, apply=apply, read_only=True)

    def run_tests(self, solution: str, tests: str, entry_point: str, *,
                  limits: Limits | None = None) -> TestReport:
        """Unforgeable test verdicts for one solution (see SECURITY.md), outside any episode.

        ``tests`` is a HumanEval-style ``check(candidate)`` or top-level asserts naming
        ``entry_point``. Raises ConfigError (unparsable tests), SandboxError.
        """
        from revex.runtime.sandbox.harness import DEFAULT_LIMITS
        from revex.runtime.sandbox.harness import run_tests as harness_run_tests

        return harness_run_tests(solution, tests, entry_point,
                                 backend=self.backend,  # type: ignore[arg-type]
                                 limits=limits or DEFAULT_LIMITS)

    def run_tests_many(self, solutions: Sequence[str], tests: str, entry_point: str, *,
                       limits: Limits | None = None, concurrency: int = 0) -> list[TestReport]:
        """:meth:`run_tests` for N solutions against the same tests, in parallel."""
        from revex.runtime.sandbox.harness import DEFAULT_LIMITS, run_tests_many

        return run_tests_many(list(solutions), tests, entry_point,
                              backend=self.backend,  # type: ignore[arg-type]
                              limits=limits or DEFAULT_LIMITS, concurrency=concurrency)

    def judge_plan(self, solution: str, cases: Any, language: str, limits: Limits | None,
                   compile_limits: Limits | None = None,
                   stop_on_first_failure: bool = False) -> Plan:
        """The ``exec.tests`` action of ``Episode.judge``: read-only for the journal.
        Raises ConfigError for malformed cases."""
        import hashlib

        from revex.judge import judge_many, load_cases
        from revex.runtime.sandbox.languages import default_limits

        tc = load_cases(cases)
        lim = limits or tc.limits or default_limits(language)
        backend = self.backend

        def apply(_: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            [res] = judge_many([solution], tc, language=language, backend=backend,
                               limits=limits, compile_limits=compile_limits,
                               stop_on_first_failure=stop_on_first_failure,
                               # in order, so a failure really saves the later cases
                               concurrency=1 if stop_on_first_failure else 0)
            return res, {"status": str(res.status), "passed": res.passed, "total": res.total}

        return Plan(kind="exec.tests", target=language,
                    attrs={"language": language, "network": False, "wall_s": lim.wall_s,
                           "cpu_s": lim.cpu_s, "memory_mb": lim.memory_mb, "pids": lim.pids},
                    params={"language": language, "cases": tc.kind, "n_cases": len(tc.cases),
                            "solution_sha256": hashlib.sha256(solution.encode()).hexdigest()},
                    cost={"exec_runs": 1}, apply=apply, read_only=True)

    def judge_many(self, solutions: Sequence[str], cases: Any,
                   **options: Any) -> list[JudgeResult]:
        """Judge N solutions against their test cases on this runtime's sandbox backend (see
        :func:`revex.judge.judge_many` for ``cases``, ``language``, ``concurrency``,
        ``stop_on_first_failure``, limits). Not journaled. Returns plain ``JudgeResult``
        dataclasses. Raises ConfigError (bad cases, missing toolchain), SandboxError."""
        from revex.judge import judge_many

        return judge_many(solutions, cases, backend=self.backend, **options)

    # ---- audit and maintenance ---------------------------------------------------------------

    def verify(self) -> VerifyReport:
        """Recompute the journal's hash chain and HMACs (see :class:`VerifyReport`)."""
        return self.journal.verify()

    def gc(self) -> tuple[int, int]:
        """Delete pre-image blobs no undoable action needs; returns (blobs, bytes) freed."""
        keep: set[str] = set()
        for info in self.journal.episodes():
            if info["status"] in ("undone", "rolled_back", "recovered"):
                continue
            for item in pending_items(self.journal.records(info["id"])):
                _collect_shas(item.undo_info, keep)
        return self.store.gc(keep)

    @property
    def pool(self) -> Any:
        """The :class:`revex.runtime.pool.Pool` chosen by ``executor``, made on first use."""
        if self._pool is None:
            from revex.runtime.pool import make_pool

            self._pool = make_pool(self.executor, backend=lambda: self.backend, backend_name=(
                self._sandbox if isinstance(self._sandbox, str) else None))
        return self._pool

    def close(self) -> None:
        """Close the journal, the audit sink and the sandbox backend (its warm pool)."""
        if self._pool is not None and self._pool is not self.executor:
            self._pool.close()
            self._pool = None
        if self._backend is not None and self._backend is not self._sandbox:
            close = getattr(self._backend, "close", None)
            if close is not None:
                close()
            self._backend = None
        self.journal.close()
        self.audit.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _collect_shas(obj: Any, out: set[str]) -> None:
    if isinstance(obj, dict):
        if obj.get("type") == "file" and isinstance(obj.get("sha"), str):
            out.add(obj["sha"])
        for value in obj.values():
            _collect_shas(value, out)
    elif isinstance(obj, list):
        for value in obj:
            _collect_shas(value, out)

