"""Runtime, Episode and Checkpoint: the public entry points of the reversible-action runtime.

Every action an episode takes goes through one pipeline (:meth:`Episode._act`)::

    plan ─► policy.check ─► quota ─► prepare (pre-image) ─► journal INTENT ─► apply ─► journal DONE
              │ deny                                                          │ error
              └─► journal DENIED, raise PolicyViolation                       └─► undo partial,
                                                                                  journal FAILED
"""

from __future__ import annotations

import collections
import contextlib
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from revex.errors import (
    ActionFailed,
    ConfigError,
    EpisodeClosed,
    InvalidPath,
    JournalError,
    PolicyViolation,
)
from revex.policies.engine import ApprovalRequest
from revex.policies.model import Decision
from revex.runtime.effects.base import Effect, EffectContext, Plan, UndoItem
from revex.runtime.effects.files import FileEffect
from revex.runtime.effects.sql import SqlDatabase, SqlEffect
from revex.runtime.fs import FileSystem
from revex.runtime.journal import Record, Status
from revex.runtime.rollback import (
    OwnerLock,
    pending_items,
    prefix_of,
    resolve_intents,
    rollback,
)
from revex.runtime.sandbox.base import ExecResult, Limits, TestReport, make_spec

if TYPE_CHECKING:
    import httpx

    from revex.judge import JudgeResult
    from revex.runtime.runtime import Runtime

OnExit = Literal["rollback", "commit"]
OnError = Literal["rollback", "keep"]


@dataclass(frozen=True)
class Checkpoint:
    """A point in an episode to roll back to: every action after it is undone."""

    episode_id: str
    action_seq: int
    name: str = ""


def new_episode_id() -> str:
    # 48 random bits: a process that starts a thousand episodes a second would otherwise (with
    # 24 bits) draw an id it already used within the same second every few runs
    return f"ep-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(6)}"


class Episode:
    """A unit of agent work whose every action can be rolled back.

    Use as a context manager (``with rt.episode(...) as ep``); on exit it rolls back or commits
    as ``on_exit`` says, and when an exception escapes it rolls back unless
    ``on_error="keep"``.
    """

    def __init__(self, runtime: Runtime, episode_id: str, config: dict[str, Any],
                 on_exit: OnExit, on_error: OnError, *, owner: OwnerLock | None = None) -> None:
        self._rt = runtime
        self.id = episode_id
        self.config = config
        self.on_exit = on_exit
        self.on_error = on_error
        self.workspace = Path(config["workspace"])
        self.status = "active"
        self.fs = FileSystem(self)
        self._lock = threading.RLock()
        self._action_seq = 0
        self._used: dict[str, float] = {}
        self._run_times: collections.deque[float] = collections.deque()
        self._effects: dict[str, Effect] = {}
        self._http: Any = None
        self._ahttp: Any = None
        self._sql: dict[str, SqlDatabase] = {}
        # Runtime.episode takes the lock before the episode is visible and hands it over
        self._owner = owner or OwnerLock(runtime.lock_path(episode_id))
        if owner is None and not self._owner.acquire():
            raise ConfigError(f"episode {episode_id} is already owned by another process")

    @property
    def http(self) -> httpx.Client:
        """An httpx.Client whose every request is one journaled, undoable action."""
        if self._http is None:
            from revex.runtime.effects.http_transport import client

            self._http = client(self)
        return self._http  # type: ignore[no-any-return,unused-ignore]

    @property
    def ahttp(self) -> httpx.AsyncClient:
        """The async flavour of :attr:`http` (httpx.AsyncClient)."""
        if self._ahttp is None:
            from revex.runtime.effects.http_transport import async_client

            self._ahttp = async_client(self)
        return self._ahttp  # type: ignore[no-any-return,unused-ignore]

    # ---- effects -----------------------------------------------------------------------------

    def _effect(self, prefix: str) -> Effect:
        if prefix not in self._effects:
            self._effects[prefix] = self._rt.make_effect(
                prefix, EffectContext(self.id, self.config, self._rt.store))
        return self._effects[prefix]

    def sql(self, name: str) -> SqlDatabase:
        """The database ``name`` from ``rt.episode(databases={name: URL})``.

        Raises ConfigError for an unknown name or an unreachable database.
        """
        self._ensure_open()
        effect = self._effect("sql")
        assert isinstance(effect, SqlEffect)
        if name not in self._sql:
            self._sql[name] = SqlDatabase(self, effect.database(name))
        return self._sql[name]

    def _files(self) -> FileEffect:
        effect = self._effect("fs")
        assert isinstance(effect, FileEffect)
        return effect

    # ---- the pipeline ------------------------------------------------------------------------

    def _journal(self, **fields: Any) -> Any:
        """Append one record of this episode durably (an INTENT: the write-ahead rule)."""
        return self._rt.journal.append(episode_id=self.id, **fields)

    def _note(self, **fields: Any) -> Any:
        """Append a record of this episode without an fsync: an outcome, a refusal, a read, a
        checkpoint. Losing it in a power failure leaves an INTENT without an outcome, which is
        resolved by probing, or no trace of something that changed nothing (see
        :mod:`revex.runtime.journal`); the next durable append makes it durable."""
        return self._rt.journal.append(episode_id=self.id, durable=False, **fields)

    def _ensure_open(self) -> None:
        if self.status != "active":
            raise EpisodeClosed(
                f"episode {self.id} is {self.status}; start a new episode to act again")

    def _act(self, build: Callable[[], Plan], kind: str, target: Any) -> Any:
        """Run one action through the pipeline and return what it returns."""
        with self._lock:
            self._ensure_open()
            self._action_seq += 1
            seq = self._action_seq
            try:
                plan = build()
            except PolicyViolation as exc:
                self._deny(seq, kind, str(target), exc.rule or "path-safety", str(exc), {})
                exc.action_kind = exc.action_kind or kind
                raise
            except InvalidPath:
                self._action_seq -= 1
                raise
            rule = self._decide(seq, plan)
            if plan.read_only:
                return self._read(seq, plan, rule)
            return self._mutate(seq, plan, rule)

    def _deny(self, seq: int, kind: str, target: str, rule: str, reason: str,
              params: dict[str, Any]) -> None:
        self._note(action_seq=seq, kind=kind, target=target, status=Status.DENIED,
                      decision="deny", rule=rule, params=params, error=reason)

    def _decide(self, seq: int, plan: Plan) -> str:
        """The rule that allowed the action; journals DENIED and raises otherwise."""
        attrs = {"kind": plan.kind, **plan.attrs}
        decision = self._rt.engine.check(attrs)
        verdict, rule, reason = decision.decision, decision.rule, decision.reason
        if verdict is Decision.APPROVE:
            approver = self._rt.approver
            request = ApprovalRequest(self.id, plan.kind, plan.target, attrs, rule, reason)
            if approver is not None and approver(request):
                verdict, reason = Decision.ALLOW, "approved"
            else:
                verdict = Decision.DENY
                reason = ("needs approval and the approver refused" if approver else
                          "needs approval and no approver is configured (Runtime(approver=...))")
        if verdict is not Decision.ALLOW:
            message = (f"{plan.kind} {plan.target!r} refused by rule '{rule}'"
                       + (f": {reason}" if reason else ""))
            self._deny(seq, plan.kind, plan.target, rule, message, plan.params)
            raise PolicyViolation(message, rule=rule, action_kind=plan.kind, target=plan.target)
        over = self._rt.engine.over_quota(self._used, {"actions": 1, **plan.cost})
        if over is not None:
            message = f"{plan.kind} {plan.target!r} refused: episode quota exceeded ({over})"
            self._deny(seq, plan.kind, plan.target, "quota", message, plan.params)
            raise PolicyViolation(message, rule="quota", action_kind=plan.kind,
                                  target=plan.target)
        self._check_rate(seq, plan)
        return rule

    def _check_rate(self, seq: int, plan: Plan) -> None:
        """The ``runs_per_minute`` quota: code runs in the last 60 s, counted when decided."""
        limit = self._rt.policy.quotas.runs_per_minute
        if limit is None or not plan.cost.get("exec_runs"):
            return
        now = time.monotonic()
        while self._run_times and now - self._run_times[0] >= 60:
            self._run_times.popleft()
        if len(self._run_times) >= limit:
            message = (f"{plan.kind} {plan.target!r} refused: episode quota exceeded "
                       f"(runs_per_minute: {len(self._run_times) + 1} > {limit} in the last 60 s)")
            self._deny(seq, plan.kind, plan.target, "quota", message, plan.params)
            raise PolicyViolation(message, rule="quota", action_kind=plan.kind,
                                  target=plan.target)
        self._run_times.append(now)

    def _charge(self, plan: Plan) -> None:
        for name, amount in {"actions": 1, **plan.cost}.items():
            self._used[name] = self._used.get(name, 0) + amount

    def _before_effect(self, seq: int, plan: Plan, common: dict[str, Any],
                       step: Callable[[], Any]) -> Any:
        """Run a step that has changed nothing yet (a read, or capturing a pre-image): a refusal
        is journaled DENIED, a failure FAILED (an OSError becomes ActionFailed)."""
        try:
            return step()
        except PolicyViolation as exc:
            self._deny(seq, plan.kind, plan.target, exc.rule, str(exc), plan.params)
            raise
        except ActionFailed as exc:
            self._note(**common, status=Status.FAILED, error=str(exc))
            raise
        except OSError as exc:
            self._note(**common, status=Status.FAILED, error=f"{type(exc).__name__}: {exc}")
            raise ActionFailed(f"{plan.kind} {plan.target!r} failed: {exc}") from exc

    def _read(self, seq: int, plan: Plan, rule: str) -> Any:
        apply = plan.apply
        assert apply is not None
        common = dict(action_seq=seq, kind=plan.kind, target=plan.target, decision="allow",
                      rule=rule, params=plan.params)
        value, info = self._before_effect(seq, plan, common, lambda: apply({}))
        # a read changed nothing: its record waits for the next transaction (Journal.defer)
        self._rt.journal.defer(episode_id=self.id, **common, status=Status.DONE, result=info)
        self._charge(plan)
        return value

    def _mutate(self, seq: int, plan: Plan, rule: str) -> Any:
        assert plan.prepare is not None and plan.apply is not None
        common = dict(action_seq=seq, kind=plan.kind, target=plan.target, decision="allow",
                      rule=rule, params=plan.params)
        undo = self._before_effect(seq, plan, common, plan.prepare)
        intent = self._journal(**common, status=Status.INTENT, undo=undo)
        try:
            value, post = plan.apply(undo)
        except BaseException as exc:
            if plan.cleanup is not None:
                try:
                    plan.cleanup(undo)
                except Exception:
                    # the partial effect could not be undone now: no outcome is journaled, so
                    # rollback, close and recovery probe it again; an interrupt stays one
                    if isinstance(exc, Exception):
                        raise
                    raise exc from None
            self._note(**{**common, "params": {}}, status=Status.FAILED,
                          refers_to=intent.seq, error=f"{type(exc).__name__}: {exc}")
            if isinstance(exc, PolicyViolation | ActionFailed):
                raise
            if isinstance(exc, Exception):
                raise ActionFailed(
                    f"{plan.kind} {plan.target!r} failed and was undone: {exc}") from exc
            raise
        outcome = dict(common, params={}, status=Status.DONE, refers_to=intent.seq,
                       result=post)
        if plan.defer_outcome:
            # written with the next transaction (the next INTENT makes it durable); until
            # then, a crash leaves this INTENT without an outcome, which rollback, close and
            # recovery resolve by probing the target, as after a power loss. A full queue that
            # could not be flushed (a full disk) keeps the record queued: nothing to undo here
            with contextlib.suppress(JournalError):
                self._rt.journal.defer(episode_id=self.id, **outcome)
        else:
            try:
                self._note(**outcome)
            except JournalError as exc:
                self._unrecorded(plan, intent, post, exc)
        self._charge(plan)
        return value

    def _unrecorded(self, plan: Plan, intent: Record, post: dict[str, Any],
                    exc: JournalError) -> NoReturn:
        """The effect happened but its DONE could not be journaled (e.g. a full disk): undo
        it now, the way a rollback would, and raise. If that undo fails too, the INTENT stays
        without an outcome, and the next rollback, close or recovery probes and undoes it."""
        done = Record(seq=0, episode_id=self.id, action_seq=intent.action_seq,
                      kind=intent.kind, target=intent.target, status=Status.DONE,
                      refers_to=intent.seq, result=post)
        item = UndoItem(intent=intent, done=done)
        effect = self._effect(prefix_of(plan.kind))
        try:
            effect.undo(item, force=False)
            settle = getattr(effect, "settle", None)
            if settle is not None:
                settle([item])
        except Exception as undo_exc:
            raise JournalError(
                f"{plan.kind} {plan.target!r} took effect but the journal could not record it "
                f"({exc}); undoing it failed too ({type(undo_exc).__name__}: {undo_exc}). "
                "The episode's next rollback or close undoes it once the journal is writable"
            ) from exc
        with contextlib.suppress(JournalError):  # the disk may still be full: probed later
            self._note(action_seq=intent.action_seq, kind=intent.kind,
                          target=intent.target, status=Status.FAILED, refers_to=intent.seq,
                          error=f"undone: the journal could not record it ({exc})")
        raise JournalError(f"{plan.kind} {plan.target!r} was undone because the journal "
                           f"could not record it: {exc}") from exc

    def _note_denied(self, kind: str, target: str, rule: str, reason: str,
                     params: dict[str, Any]) -> None:
        """Journal a refusal decided outside :meth:`_act` (e.g. a sandbox change set)."""
        with self._lock:
            self._action_seq += 1
            self._deny(self._action_seq, kind, target, rule, reason, params)

    # ---- code execution ----------------------------------------------------------------------

    def run(
        self,
        code: str | None = None,
        *,
        argv: Sequence[str] | None = None,
        language: str = "python",
        stdin: str | bytes = b"",
        env: Mapping[str, str] | None = None,
        files: Mapping[str, str | bytes] | None = None,
        limits: Limits | None = None,
        network: bool = False,
        apply_changes: bool = True,
        compile_limits: Limits | None = None,
    ) -> ExecResult:
        """Run code in the sandbox over this episode's workspace.

        What the code did to the workspace comes back as a change set; when ``apply_changes``
        it is checked against the policy as a whole and applied as journaled file actions
        (undone by a rollback like any ``ep.fs`` action), otherwise discarded. The result says
        which (``changes_applied``, ``changes_refused``). ``language`` is python, bash, c,
        cpp, java, javascript (go, rust where installed); compiled languages compile first
        under ``compile_limits`` (status ``compile_error``). What the code does (a timeout, a
        crash) is a status, never an exception. Raises PolicyViolation when the policy refuses
        the run itself, ConfigError for a malformed request, SandboxError when no sandbox can
        run it, ActionFailed when applying the changes failed (none are then kept).
        """
        from revex.runtime.execution import apply_changes as apply_change_set
        from revex.runtime.execution import run_plan

        spec = make_spec(code, argv=argv, language=language, stdin=stdin, env=env,
                         files=files, limits=limits, network=network,
                         workspace=str(self.workspace), compile_limits=compile_limits)
        backend = self._rt.backend
        result: ExecResult = self._act(lambda: run_plan(spec, backend), "exec.run",
                                       language)
        with result:
            if result.changes and apply_changes:
                outcome = apply_change_set(self, result, f"exec#{self._action_seq}")
                result.changes_applied = outcome.applied
                result.changes_refused = outcome.refused
            else:
                result.changes_applied = False
        return result

    def run_tests(self, solution: str, tests: str, entry_point: str, *,
                  limits: Limits | None = None) -> TestReport:
        """Run ``tests`` against ``solution`` with unforgeable verdicts (see SECURITY.md),
        journaled as one ``exec.tests`` action. Raises like :meth:`run`."""
        return self._act(lambda: self._rt.tests_plan(solution, tests, entry_point, limits),
                         "exec.tests", entry_point)

    def judge(self, solution: str, cases: Any, *, language: str = "python",
              limits: Limits | None = None, compile_limits: Limits | None = None,
              stop_on_first_failure: bool = False) -> JudgeResult:
        """Judge ``solution`` against ``cases`` (anything ``revex.judge.load_cases`` takes:
        stdin/stdout, call-style, asserts, HumanEval) in ``language``, with unforgeable
        verdicts, journaled as one ``exec.tests`` action. Raises like :meth:`run`."""
        return self._act(lambda: self._rt.judge_plan(solution, cases, language, limits,
                                                     compile_limits, stop_on_first_failure),
                         "exec.tests", language)

    # ---- lifecycle ---------------------------------------------------------------------------

    def checkpoint(self, name: str = "") -> Checkpoint:
        """Mark the current point; ``rollback(to=cp)`` undoes every action after it."""
        with self._lock:
            self._ensure_open()
            self._note(action_seq=self._action_seq, kind="episode.checkpoint", target=name,
                          status=Status.EVENT)
            return Checkpoint(self.id, self._action_seq, name)

    def rollback(self, to: Checkpoint | None = None, *, force: bool = False) -> int:
        """Undo every action after ``to`` (all of them when None), newest first.

        Actions whose outcome the journal lacks (a DONE that could not be written) are first
        probed and resolved, as after a crash. Returns the number of actions undone, each
        verified by its effect. Raises ConflictError when a target was changed by someone else
        since (nothing is changed then, unless ``force``) or an undo could not be verified;
        JournalError when the journal cannot be read or written. The episode stays open.
        """
        with self._lock:
            self._ensure_open()
            if to is not None and to.episode_id != self.id:
                raise ConfigError(f"checkpoint belongs to episode {to.episode_id}, not {self.id}")
            after = to.action_seq if to is not None else 0
            journal = self._rt.journal
            # the outcomes still queued are read from the queue: the rollback's durable begin
            # writes them, before the first undo, in its own transaction
            records = journal.episode_records(self.id, queued=True)
            if resolve_intents(journal, self.id, records, self._effect):
                records = journal.episode_records(self.id, queued=True)
            items = pending_items(records, after)
            report = rollback(journal, self.id, items, self._effect, force=force,
                              note={"to": after})
            return report.undone

    def commit(self) -> None:
        """Keep the episode's effects and close it; ``rt.undo(ep.id)`` can still undo them."""
        with self._lock:
            self._ensure_open()
            self._finish("committed", "episode.commit")

    def close(self) -> None:
        """Close the episode as ``on_exit`` says (rollback or commit)."""
        if self.status != "active":
            return
        if self.on_exit == "commit":
            self.commit()
        else:
            self.rollback()
            self._finish("rolled_back", "episode.close")

    def _finish(self, status: str, event: str) -> None:
        self._rt.journal.set_episode_status(self.id, status, kind=event,
                                            action_seq=self._action_seq, target="")
        self.status = status
        if self._http is not None:
            self._http.close()
        for effect in self._effects.values():
            if status == "committed" and hasattr(effect, "commit"):
                effect.commit()
            effect.close()
        self._sql.clear()
        self._rt.drop_forks(self.config)
        self._effects.clear()
        self._owner.release(remove=True)

    def __enter__(self) -> Episode:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.status != "active":
            return
        if exc_type is not None and self.on_error == "keep":
            self.commit()
            return
        if exc_type is not None:
            self.rollback()
            self._finish("rolled_back", "episode.close")
            return
        self.close()

    def __repr__(self) -> str:
        return f"<Episode {self.id} {self.status} workspace={str(self.workspace)!r}>"
