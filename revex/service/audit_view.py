"""What the audit console and ``revex report`` show, built from the journal alone.

An episode's *timeline* pairs each action's INTENT with its outcome (DONE, FAILED, DENIED, and
UNDONE when rolled back), with the rule that decided it, its duration, and what it changed: a
text diff for file writes (pre-image from the content store against the post-state), row images
for SQL, the request and response for HTTP (secrets were redacted before they were journaled).
Nothing here writes to the journal or the workspace.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from revex.errors import RevexError
from revex.runtime.changes import stored_bytes
from revex.runtime.journal import Record, Status

MAX_DIFF_BYTES = 256 * 1024
MAX_ROWS = 50


@dataclass
class ActionView:
    action_seq: int
    kind: str
    target: str
    status: str
    decision: str
    rule: str
    ms: float | None
    at: str
    error: str = ""
    details: list[tuple[str, str]] = field(default_factory=list)
    diffs: list[dict[str, Any]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    undone: bool = False


@dataclass
class EpisodeView:
    id: str
    status: str
    created: str
    config: dict[str, Any]
    actions: list[ActionView]
    events: list[dict[str, Any]]
    counts: dict[str, int]


def ts(value: float) -> str:
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def episode_view(runtime: Any, episode_id: str) -> EpisodeView | None:
    """The episode's timeline, or None if the journal has no such episode."""
    info = runtime.journal.episode(episode_id)
    if info is None:
        return None
    records: list[Record] = runtime.journal.records(episode_id)
    outcome: dict[int, Record] = {}
    undone: set[int] = set()
    for rec in records:
        if rec.refers_to is None:
            continue
        if rec.status is Status.UNDONE:
            undone.add(rec.refers_to)
        elif rec.status in (Status.DONE, Status.FAILED):
            outcome[rec.refers_to] = rec
    actions: list[ActionView] = []
    events: list[dict[str, Any]] = []
    counts = {"actions": 0, "denied": 0, "failed": 0, "undone": 0}
    for rec in records:
        if rec.status is Status.EVENT:
            events.append({"at": ts(rec.ts), "kind": rec.kind, "target": rec.target,
                           "params": _short(rec.params), "error": rec.error})
            continue
        if rec.status is Status.DENIED:
            counts["denied"] += 1
            actions.append(ActionView(rec.action_seq, rec.kind, rec.target, "DENIED",
                                      rec.decision or "deny", rec.rule, None, ts(rec.ts),
                                      error=rec.error, details=_params(rec.params)))
            continue
        if rec.status is not Status.INTENT:
            continue
        counts["actions"] += 1
        out = outcome.get(rec.seq)
        status = "INTENT (no outcome)" if out is None else str(out.status)
        if out is not None and out.status is Status.FAILED:
            counts["failed"] += 1
        if rec.seq in undone:
            counts["undone"] += 1
        view = ActionView(rec.action_seq, rec.kind, rec.target, status, rec.decision or "allow",
                          rec.rule, round((out.ts - rec.ts) * 1000, 2) if out else None,
                          ts(rec.ts), error=(out.error if out else rec.error),
                          details=_params(rec.params), undone=rec.seq in undone)
        if out is not None:
            view.details += _params(out.result, prefix="result.")
        if rec.kind.startswith("fs.") and out is not None and out.status is Status.DONE:
            view.diffs = _file_diffs(runtime, rec, out, info.get("config", {}).get("workspace"))
        elif rec.kind.startswith("sql."):
            view.rows = _row_images(rec)
        actions.append(view)
    return EpisodeView(episode_id, str(info.get("status", "")), ts(info.get("created_at", 0)),
                       info.get("config", {}), actions, events, counts)


def _short(value: Any, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _params(params: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    skip = {"post", "targets"}
    return [(prefix + k, _short(v)) for k, v in params.items() if k not in skip]


def _content(runtime: Any, manifest: dict[str, Any]) -> bytes | None:
    if manifest.get("type") != "file":
        return None
    return stored_bytes(runtime, manifest)


def _current(workspace: str | None, path: str, manifest: dict[str, Any]) -> bytes | None:
    """The workspace file's bytes if it still holds exactly ``manifest``'s content."""
    if not workspace or manifest.get("type") != "file" or manifest.get("size", 0) > MAX_DIFF_BYTES:
        return None
    import hashlib
    import os

    from revex.runtime.effects.workspace import Workspace

    try:
        ws = Workspace(workspace)
    except OSError:
        return None
    try:
        fd = ws.open_file(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            data = f.read(MAX_DIFF_BYTES + 1)
    except (OSError, RevexError):
        return None
    finally:
        ws.close()
    return data if hashlib.sha256(data).hexdigest() == manifest.get("sha") else None


def _file_diffs(runtime: Any, intent: Record, done: Record,
                workspace: str | None) -> list[dict[str, Any]]:
    """Per path the action touched: its pre-image against its post-state. The post-state's
    bytes are shown when the store has them (a later action's pre-image) or the workspace still
    holds them; else a summary."""
    pre: dict[str, Any] = intent.undo.get("pre") or {}
    post: dict[str, Any] = done.result.get("post") or {}
    out = []
    for path in sorted(set(pre) | set(post)):
        before, after = pre.get(path, {"type": "absent"}), post.get(path, {"type": "absent"})
        entry: dict[str, Any] = {"path": path, "before": before.get("type"),
                                 "after": after.get("type"), "diff": "", "note": ""}
        a = _content(runtime, before)
        b = _content(runtime, after) or _current(workspace, path, after)
        if before.get("type") == "file" and a is None:
            entry["note"] = (f"before: {before.get('size', 0)} bytes "
                             f"(sha {before.get('sha', '')[:12]})")
        elif after.get("type") == "file" and b is None:
            entry["note"] = (f"after: {after.get('size', 0)} bytes (sha "
                             f"{after.get('sha', '')[:12]}; content not kept in the store)")
        else:
            try:
                old = (a or b"").decode().splitlines(keepends=True)
                new = (b or b"").decode().splitlines(keepends=True)
            except UnicodeDecodeError:
                entry["note"] = "binary content changed"
            else:
                entry["diff"] = "".join(difflib.unified_diff(old, new, f"a/{path}", f"b/{path}"))
        if before.get("type") == after.get("type") == "symlink":
            entry["note"] = f"{before.get('target')} -> {after.get('target')}"
        out.append(entry)
    return out


def _row_images(intent: Record) -> list[dict[str, Any]]:
    rows = []
    for table, change in (intent.undo.get("changes") or {}).items():
        for kind in ("removed", "added"):
            for raw in (change.get(kind) or [])[:MAX_ROWS]:
                try:
                    row = json.loads(raw) if isinstance(raw, str) else raw
                except json.JSONDecodeError:
                    row = raw
                if isinstance(row, dict):
                    row = {k: (v[1] if isinstance(v, list) and len(v) == 2 else v)
                           for k, v in row.items()}
                rows.append({"table": table, "image": "before" if kind == "removed"
                             else "after", "row": _short(row, 500)})
    return rows


def episodes_list(runtime: Any, status: str | None = None) -> list[dict[str, Any]]:
    out = []
    for ep in runtime.episodes(status or None):
        records = runtime.journal.records(ep.id)
        out.append({"id": ep.id, "status": ep.status, "created": ts(ep.created_at),
                    "policy": ep.config.get("policy", ""),
                    "workspace": ep.config.get("workspace", ""),
                    "actions": sum(1 for r in records if r.status is Status.INTENT),
                    "denied": sum(1 for r in records if r.status is Status.DENIED)})
    return out
