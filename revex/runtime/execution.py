"""Running code inside an episode: the ``exec.run`` action and its change set.

The sandbox sees the workspace through an overlay, so the run itself changes nothing on the
host. Afterwards its upper directory (the exact change set) is checked against the policy as a
whole (every path, every symlink target); if any change is refused, the whole set is discarded
and the refusals are journaled. Otherwise each change is applied as an ordinary journaled file
action (``fs.write``, ``fs.mkdir``, ``fs.delete``…, with ``source`` naming the run), so rolling
the episode back undoes what the sandboxed code did, exactly.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from revex.errors import ActionFailed, PolicyViolation
from revex.policies.model import Decision
from revex.runtime.effects.base import Plan
from revex.runtime.effects.files import FileEffect
from revex.runtime.effects.workspace import normalize
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
            "wall_s", "cpu_s", "memory_mb", "pids", "fsize_mb", "output_bytes", "nofile")},
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


def _ordered(changes: list[FileChange]) -> list[FileChange]:
    # deletions first (deepest first), then creations parents-first
    deletes = sorted((c for c in changes if c.kind == "delete"),
                     key=lambda c: c.path.count("/"), reverse=True)
    creates = sorted((c for c in changes if c.kind != "delete"),
                     key=lambda c: (c.path.count("/"), c.path))
    return deletes + creates


def _fs_kind(change: FileChange) -> str:
    return {"file": "fs.write", "dir": "fs.mkdir", "symlink": "fs.symlink",
            "delete": "fs.delete", "opaque": "fs.mkdir"}.get(change.kind, "fs.write")


def apply_changes(ep: Episode, result: ExecResult, source: str) -> ChangeOutcome:
    """Check the run's change set as a whole, then apply it as journaled file actions.

    Returns whether it was applied and what was refused. Raises ActionFailed when applying
    failed half-way (what was applied is rolled back first).
    """
    changes = _ordered(list(result.changes))
    refused: list[tuple[FileChange, str, str]] = []
    fx = ep._files()
    for change in changes:
        try:
            rel = normalize(change.path)
            if change.kind == "symlink":
                fx.symlink(rel, change.target or "")  # validates the target lexically
        except PolicyViolation as exc:
            refused.append((change, exc.rule or "path-safety", str(exc)))
            continue
        decision = ep._rt.engine.check({"kind": _fs_kind(change), "path": rel,
                                        "bytes": change.size})
        if decision.decision is not Decision.ALLOW:
            refused.append((change, decision.rule, f"refused by rule '{decision.rule}'"))
    if refused:
        for change, rule, reason in refused:
            ep._note_denied(_fs_kind(change), change.path, rule,
                            f"{source}: change discarded: {reason}", {"source": source})
        return ChangeOutcome(False, [f"{c.path}: {why}" for c, _, why in refused])
    cp = ep.checkpoint(f"before {source} changes")
    try:
        for change in changes:
            _apply_one(ep, fx, result, change, source)
    except (ActionFailed, PolicyViolation, OSError) as exc:
        ep.rollback(to=cp)
        raise ActionFailed(f"applying the changes of {source} failed; none were kept: {exc}"
                           ) from exc
    return ChangeOutcome(True)


def _act(ep: Episode, build: Callable[[FileEffect], Plan], kind: str, target: str,
         source: str) -> None:
    def wrapped() -> Plan:
        plan = build(ep._files())
        plan.params = {**plan.params, "source": source}
        return plan

    ep._act(wrapped, kind, target)


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
        if st is None:
            _act(ep, lambda f: f.mkdir(rel, change.mode or 0o755), "fs.mkdir", rel, source)
            mode_now = stat.S_IMODE(fx.ws.lstat(rel).st_mode)  # type: ignore[union-attr]
            if change.mode and mode_now != change.mode:
                _act(ep, lambda f: f.chmod(rel, change.mode), "fs.chmod", rel, source)
        elif change.mode and stat.S_IMODE(st.st_mode) != change.mode:
            _act(ep, lambda f: f.chmod(rel, change.mode), "fs.chmod", rel, source)
        return
    if change.kind == "symlink":
        _act(ep, lambda f: f.symlink(rel, change.target or ""), "fs.symlink", rel, source)
        return
    host = result.change_path(change)
    fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read()
    finally:
        os.close(fd)
    _act(ep, lambda f: f.write(rel, data, mode=change.mode or None), "fs.write", rel, source)


__all__ = ["ChangeOutcome", "apply_changes", "exec_attrs", "run_plan"]
