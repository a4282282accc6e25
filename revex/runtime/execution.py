"""Running code inside an episode: the ``exec.run`` action and its change set.

The sandbox sees the workspace through an overlay, so the run itself changes nothing on the
host. Afterwards its upper directory (the exact change set) is hostile input, checked as a whole
before anything is applied: every entry must be a regular file, directory or symlink with a
UTF-8 name, no mode may carry setuid/setgid/sticky bits, every symlink must resolve beneath the
workspace, every path must pass the policy, the set must be within the run's limits (read by
:mod:`revex.runtime.sandbox.overlay`) and the episode's quotas must cover all of it. If anything
is refused, the whole set is discarded, each refusal is journaled (DENIED) and listed in
``ExecResult.changes_refused``, and the run's result is still returned. Otherwise each change is
applied as an ordinary journaled file action (``fs.write``, ``fs.mkdir``, ``fs.delete``…, with
``source`` naming the run), so rolling the episode back undoes what the sandboxed code did,
exactly.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn

from revex.errors import ActionFailed, InvalidPath, JournalError, PolicyViolation
from revex.policies.model import Decision
from revex.runtime.effects.base import Plan
from revex.runtime.effects.files import FileEffect
from revex.runtime.effects.workspace import (
    SPECIAL_BITS,
    PathEscape,
    check_mode,
    normalize,
    parent_of,
)
from revex.runtime.journal import Status
from revex.runtime.sandbox import overlay
from revex.runtime.sandbox.base import ExecResult, ExecSpec, FileChange, SandboxBackend

if TYPE_CHECKING:
    from revex.runtime.episode import Episode


def exec_attrs(spec: ExecSpec) -> dict[str, Any]:
    """What the policy sees of a run: language, network, and the limits asked for."""
    lim = spec.limits
    return {"language": spec.language, "network": spec.network, "wall_s": lim.wall_s,
            "cpu_s": lim.cpu_s, "memory_mb": lim.memory_mb, "pids": lim.pids}


def exec_params(spec: ExecSpec) -> dict[str, Any]:
    import hashlib

    code = spec.code or ""
    return {
        "language": spec.language,
        "argv": list(spec.argv) if spec.argv else None,
        "code_sha256": hashlib.sha256(code.encode()).hexdigest() if spec.code else None,
        "code_bytes": len(code.encode()),
        "code_head": code[:200],
        "env": sorted(spec.env),
        "network": spec.network,
        "limits": {k: getattr(spec.limits, k) for k in (
            "wall_s", "cpu_s", "memory_mb", "pids", "fsize_mb", "output_bytes", "nofile",
            "changed_files", "changed_mb", "changed_depth")},
    }


def result_summary(result: ExecResult) -> dict[str, Any]:
    return {"status": str(result.status), "exit_code": result.exit_code,
            "signal": result.signal, "cpu_s": round(result.cpu_s, 4),
            "wall_s": round(result.wall_s, 4), "peak_memory_mb": round(result.peak_memory_mb, 1),
            "changes": len(result.changes), "backend": result.backend,
            "weak_isolation": result.weak_isolation,
            "stdout_truncated": result.stdout_truncated,
            "stderr_truncated": result.stderr_truncated}


def run_plan(spec: ExecSpec, backend: SandboxBackend) -> Plan:
    """The ``exec.run`` action: read-only for the journal (its file effects come after)."""

    def apply(_: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        result = backend.run(spec)
        return result, result_summary(result)

    target = spec.language if spec.code is not None else " ".join((spec.argv or ())[:3])
    return Plan(kind="exec.run", target=target, attrs=exec_attrs(spec),
                params=exec_params(spec), cost={"exec_runs": 1}, apply=apply, read_only=True)


@dataclass
class ChangeOutcome:
    applied: bool
    refused: list[str] = field(default_factory=list)


#: Refusals journaled one by one; beyond this many, one more DENIED record counts the rest.
MAX_DENIED_RECORDS = 100
#: New files and symlinks applied as one group: one durable journal transaction for their
#: INTENTs and one for their outcomes, instead of two per action.
BATCH = 256


@dataclass(frozen=True)
class _Refusal:
    kind: str
    path: str
    rule: str
    reason: str


def _ordered(changes: list[FileChange]) -> list[FileChange]:
    # deletions first (deepest first), then creations parents-first
    deletes = sorted((c for c in changes if c.kind == "delete"),
                     key=lambda c: c.path.count("/"), reverse=True)
    creates = sorted((c for c in changes if c.kind != "delete"),
                     key=lambda c: (c.path.count("/"), c.path))
    return deletes + creates


def _fs_kind(change: FileChange) -> str:
    return {"file": "fs.write", "dir": "fs.mkdir", "symlink": "fs.symlink",
            "delete": "fs.delete", "opaque": "fs.mkdir"}.get(change.kind, "exec.changes")


def _inherits_setgid(fx: FileEffect, rel: str, change: FileChange,
                     new_dirs: dict[str, int]) -> bool:
    """Whether ``change`` is a new directory whose only special bit is the setgid it inherits
    from its parent (the kernel sets it in the sandbox and would set it on the host too)."""
    if change.kind not in ("dir", "opaque") or change.mode & SPECIAL_BITS != stat.S_ISGID:
        return False
    st = _lstat(fx, rel)
    if st is not None and stat.S_ISDIR(st.st_mode) and change.kind == "dir":
        return False  # an existing directory given the bit by the run: refused
    parent = parent_of(rel)
    if parent in new_dirs:
        return bool(new_dirs[parent] & stat.S_ISGID)
    pst = _lstat(fx, parent)
    return pst is not None and stat.S_ISDIR(pst.st_mode) and bool(pst.st_mode & stat.S_ISGID)


def _screen(ep: Episode, fx: FileEffect, change: FileChange,
            new_dirs: dict[str, int]) -> _Refusal | None:
    """Why the host will not apply ``change`` (type, name, mode, symlink target, policy)."""
    kind = _fs_kind(change)
    if change.kind == overlay.REFUSED:
        whole = change.path == overlay.WHOLE_SET
        return _Refusal(kind, change.path, "change-limit" if whole else "path-safety",
                        change.target or "refused")
    if change.kind not in ("file", "dir", "opaque", "symlink", "delete"):
        return _Refusal(kind, overlay.display(change.path), "path-safety",
                        f"unknown change kind {change.kind!r}")
    try:
        rel = normalize(change.path)
        if change.kind in ("file", "dir", "opaque") and not _inherits_setgid(
                fx, rel, change, new_dirs):
            check_mode(rel, change.mode)
        elif change.kind == "symlink":
            fx.symlink(rel, change.target or "")  # resolves the target beneath the workspace
    except (PolicyViolation, InvalidPath) as exc:
        rule = exc.rule if isinstance(exc, PolicyViolation) else "path-safety"
        return _Refusal(kind, overlay.display(change.path), rule or "path-safety", str(exc))
    decision = ep._rt.engine.check({"kind": kind, "path": rel, "bytes": change.size})
    if decision.decision is not Decision.ALLOW:
        return _Refusal(kind, rel, decision.rule, f"refused by rule '{decision.rule}'")
    return None


def _lstat(fx: FileEffect, path: str) -> os.stat_result | None:
    """The entry at ``path`` now; None also below a symlink (which an earlier change of the set
    replaces, or applying it is refused then)."""
    try:
        return fx.ws.lstat(normalize(path))
    except PathEscape:
        return None


def _cost(fx: FileEffect, change: FileChange) -> tuple[int, int]:
    """An upper bound of the (actions, bytes written) that applying ``change`` takes."""
    st = _lstat(fx, change.path)
    if change.kind == "delete":
        return (0 if st is None else 1), 0
    replace = 0 if st is None else 1
    if change.kind in ("dir", "opaque"):
        return replace + 2, 0  # (replace,) mkdir, chmod
    return replace + 1, change.size if change.kind == "file" else 0


def apply_changes(ep: Episode, result: ExecResult, source: str) -> ChangeOutcome:
    """Check the run's change set as a whole, then apply it as journaled file actions.

    Returns whether it was applied and what was refused (then nothing was applied and each
    refusal is journaled DENIED). Raises ActionFailed when applying failed half-way (what was
    applied is rolled back first).
    """
    changes = _ordered(list(result.changes))
    fx = ep._files()
    new_dirs = {c.path: c.mode for c in changes if c.kind in ("dir", "opaque")}
    refused = [r for r in (_screen(ep, fx, c, new_dirs) for c in changes) if r is not None]
    if not refused:
        actions = nbytes = 0
        for change in changes:
            a, b = _cost(fx, change)
            actions, nbytes = actions + a, nbytes + b
        over = ep._rt.engine.over_quota(ep._used, {"actions": actions, "bytes_written": nbytes})
        if over is not None:
            refused.append(_Refusal("exec.changes", overlay.WHOLE_SET, "quota", (
                f"applying the run's {len(changes)} changes ({actions} actions at most, "
                f"{nbytes} bytes) would exceed the episode quota ({over}); nothing was applied")))
    if refused:
        _journal_refusals(ep, refused, source)
        return ChangeOutcome(False, [r.reason if r.path == overlay.WHOLE_SET
                                     else f"{r.path}: {r.reason}" for r in refused])
    cp = ep.checkpoint(f"before {source} changes")
    try:
        batch: list[FileChange] = []
        for change in changes:
            if _batchable(fx, change):
                batch.append(change)
                if len(batch) >= BATCH:
                    _apply_batch(ep, result, batch, source)
                    batch = []
                continue
            if batch:
                _apply_batch(ep, result, batch, source)
                batch = []
            _apply_one(ep, fx, result, change, source)
        if batch:
            _apply_batch(ep, result, batch, source)
    except (ActionFailed, PolicyViolation, OSError) as exc:
        ep.rollback(to=cp)
        raise ActionFailed(f"applying the changes of {source} failed; none were kept: {exc}"
                           ) from exc
    return ChangeOutcome(True)


def _journal_refusals(ep: Episode, refused: list[_Refusal], source: str) -> None:
    for r in refused[:MAX_DENIED_RECORDS]:
        ep._note_denied(r.kind, r.path, r.rule, f"{source}: change discarded: {r.reason}",
                        {"source": source})
    rest = len(refused) - MAX_DENIED_RECORDS
    if rest > 0:
        ep._note_denied("exec.changes", overlay.WHOLE_SET, "path-safety",
                        f"{source}: {rest} more changes refused (not journaled one by one)",
                        {"source": source, "refused": rest})


def _act(ep: Episode, build: Callable[[FileEffect], Plan], kind: str, target: str,
         source: str) -> None:
    def wrapped() -> Plan:
        plan = build(ep._files())
        plan.params = {**plan.params, "source": source}
        return plan

    ep._act(wrapped, kind, target)


def _batchable(fx: FileEffect, change: FileChange) -> bool:
    """A new symlink, or a file that is new or replaces a regular file: one action on one path
    that no other change of the set is above or below (a file or symlink has no children, and
    the set names each path once), so a group of them can be planned before any is applied."""
    if change.kind not in ("file", "symlink"):
        return False
    st = _lstat(fx, change.path)
    return st is None or (change.kind == "file" and stat.S_ISREG(st.st_mode))


def _plan(fx: FileEffect, result: ExecResult, change: FileChange, source: str) -> Plan:
    rel = normalize(change.path)
    if change.kind == "symlink":
        plan = fx.symlink(rel, change.target or "")
    else:
        upper = result.upper_dir
        if upper is None:
            raise ActionFailed("the run's change directory is gone; its changes cannot be "
                               "applied")
        plan = fx.write_from(rel, lambda: overlay.open_change(upper, change.path),
                             mode=change.mode)
    plan.params = {**plan.params, "source": source}
    return plan


def _apply_batch(ep: Episode, result: ExecResult, changes: list[FileChange],
                 source: str) -> None:
    """Apply :func:`_batchable` changes through the episode's pipeline steps (policy, quota,
    pre-image, INTENT, apply, outcome) with the journal writes grouped: every INTENT of the
    group is durable, in one transaction, before the first of them takes effect (write-ahead
    holds for each), and the outcomes follow in one more. An INTENT left without an outcome by
    a crash is resolved by probing, like any other. Raises like ``Episode._act``; after a
    failure the rest of the group is journaled FAILED (never applied).
    """
    journal = ep._rt.journal
    with ep._lock:
        ep._ensure_open()
        staged: list[tuple[Plan, dict[str, Any], dict[str, Any]]] = []
        for change in changes:
            ep._action_seq += 1
            seq = ep._action_seq
            try:
                plan = _plan(ep._files(), result, change, source)
            except PolicyViolation as exc:
                ep._deny(seq, _fs_kind(change), change.path, exc.rule or "path-safety",
                         str(exc), {})
                raise
            rule = ep._decide(seq, plan)
            common = dict(action_seq=seq, kind=plan.kind, target=plan.target,
                          decision="allow", rule=rule, params=plan.params)
            assert plan.prepare is not None
            undo = ep._before_effect(seq, plan, common, plan.prepare)
            staged.append((plan, common, undo))
        intents = journal.append_many(
            [dict(episode_id=ep.id, **common, status=Status.INTENT, undo=undo)
             for _, common, undo in staged])
        outcomes: list[dict[str, Any]] = []
        applied: list[tuple[Plan, Any, dict[str, Any]]] = []
        failure: BaseException | None = None
        for (plan, common, undo), intent in zip(staged, intents, strict=True):
            done = dict(episode_id=ep.id, **{**common, "params": {}}, refers_to=intent.seq)
            if failure is not None:
                outcomes.append({**done, "status": Status.FAILED,
                                 "error": f"not applied: an earlier action failed ({failure})"})
                continue
            assert plan.apply is not None
            try:
                _, post = plan.apply(undo)
            except BaseException as exc:
                if plan.cleanup is not None:
                    plan.cleanup(undo)
                failure = exc
                outcomes.append({**done, "status": Status.FAILED,
                                 "error": f"{type(exc).__name__}: {exc}"})
                continue
            outcomes.append({**done, "status": Status.DONE, "result": post})
            applied.append((plan, intent, post))
            ep._charge(plan)
        try:
            journal.append_many(outcomes, durable=False)  # outcomes: no fsync (see journal.py)
        except JournalError as exc:
            _undo_unrecorded(ep, applied, exc)
    if isinstance(failure, PolicyViolation | ActionFailed):
        raise failure
    if isinstance(failure, Exception):
        raise ActionFailed(f"applying {len(changes)} changes of {source} failed and was "
                           f"undone: {failure}") from failure
    if failure is not None:
        raise failure


def _undo_unrecorded(ep: Episode, applied: list[tuple[Plan, Any, dict[str, Any]]],
                     exc: JournalError) -> NoReturn:
    """The group took effect but its outcomes could not be journaled (e.g. a full disk): undo
    it now, newest first, the way a rollback would (as ``Episode._unrecorded`` does for one
    action), and raise. What cannot be undone here stays an INTENT without an outcome, which
    the episode's next rollback, close or recovery probes and undoes."""
    from revex.runtime.effects.base import UndoItem
    from revex.runtime.journal import Record

    items = [UndoItem(intent=intent, done=Record(
        seq=0, episode_id=ep.id, action_seq=intent.action_seq, kind=intent.kind,
        target=intent.target, status=Status.DONE, refers_to=intent.seq, result=post))
        for _, intent, post in reversed(applied)]
    effect = ep._effect("fs")
    try:
        for item in items:
            effect.undo(item, force=False)
        settle = getattr(effect, "settle", None)
        if settle is not None:
            settle(items)
    except Exception as undo_exc:
        raise JournalError(
            f"{len(items)} changes took effect but the journal could not record them ({exc}); "
            f"undoing them failed too ({type(undo_exc).__name__}: {undo_exc}). The episode's "
            "next rollback or close undoes them once the journal is writable") from exc
    raise JournalError(f"{len(items)} changes were undone because the journal could not record "
                       f"them: {exc}") from exc


def _apply_one(ep: Episode, fx: FileEffect, result: ExecResult, change: FileChange,
               source: str) -> None:
    rel = normalize(change.path)
    st = fx.ws.lstat(rel)
    if change.kind == "delete":
        if st is None:
            return
        if stat.S_ISDIR(st.st_mode):
            _act(ep, lambda f: f.rmdir(rel, True), "fs.rmdir", rel, source)
        else:
            _act(ep, lambda f: f.delete(rel), "fs.delete", rel, source)
        return
    want_dir = change.kind in ("dir", "opaque")
    replace = st is not None and (
        change.kind == "opaque"
        or stat.S_ISDIR(st.st_mode) != want_dir
        or (change.kind == "symlink") or stat.S_ISLNK(st.st_mode))
    if replace and st is not None:
        if stat.S_ISDIR(st.st_mode):
            _act(ep, lambda f: f.rmdir(rel, True), "fs.rmdir", rel, source)
        else:
            _act(ep, lambda f: f.delete(rel), "fs.delete", rel, source)
        st = None
    if want_dir:
        # the mode exactly as the run left it, 0 included (mkdir's umask may clear bits)
        if st is None:
            # an inherited setgid bit (see _inherits_setgid) comes from the parent, not mkdir
            _act(ep, lambda f: f.mkdir(rel, change.mode & 0o777), "fs.mkdir", rel, source)
            st = fx.ws.lstat(rel)
        if st is not None and stat.S_IMODE(st.st_mode) != change.mode:
            _act(ep, lambda f: f.chmod(rel, change.mode), "fs.chmod", rel, source)
        return
    if change.kind == "symlink":
        _act(ep, lambda f: f.symlink(rel, change.target or ""), "fs.symlink", rel, source)
        return
    ep._act(lambda: _plan(ep._files(), result, change, source), "fs.write", rel)


__all__ = ["ChangeOutcome", "apply_changes", "exec_attrs", "run_plan"]
