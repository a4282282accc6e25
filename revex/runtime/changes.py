"""What an episode changed in its workspace since a point: per path, the state before (from the
journaled pre-images) against the state now, with a unified text diff where both are text.

This is a read-only audit view (the MCP ``diff`` tool, ``revex report``): it reads the journal
and the workspace without journaling anything and never follows a symlink. The "before" of a
path is the pre-image of the first file action after ``after_action`` that touched it (and was
not undone); paths inside a directory removed recursively come from its deep pre-image.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from typing import Any

from revex.errors import RevexError
from revex.runtime.effects.workspace import Workspace
from revex.runtime.journal import Record, Status

#: Files larger than this are compared by hash only, not diffed line by line.
MAX_DIFF_BYTES = 512 * 1024


@dataclass(frozen=True)
class FileDiff:
    """One path's change. ``change`` is ``added``, ``deleted``, ``modified`` (content),
    ``metadata`` (mode or mtime only), or ``type`` (e.g. a file became a symlink)."""

    path: str
    change: str
    before: dict[str, Any]
    after: dict[str, Any]
    diff: str = ""
    binary: bool = False


def _flatten(path: str, manifest: dict[str, Any], out: dict[str, dict[str, Any]]) -> None:
    children = manifest.get("children")
    out.setdefault(path, {k: v for k, v in manifest.items() if k != "children"})
    for name, child in (children or {}).items():
        _flatten(f"{path}/{name}", child, out)


def before_states(records: list[Record], after_action: int = 0) -> dict[str, dict[str, Any]]:
    """Each touched path's manifest as it was at ``after_action``."""
    outcome: dict[int, Status] = {}
    undone: set[int] = set()
    for rec in records:
        if rec.refers_to is not None:
            if rec.status is Status.UNDONE:
                undone.add(rec.refers_to)
            elif rec.status in (Status.DONE, Status.FAILED):
                outcome[rec.refers_to] = rec.status
    before: dict[str, dict[str, Any]] = {}
    for rec in records:
        if (rec.status is Status.INTENT and rec.kind.startswith("fs.")
                and rec.action_seq > after_action and outcome.get(rec.seq) is Status.DONE
                and rec.seq not in undone):
            for path, manifest in (rec.undo.get("pre") or {}).items():
                if path not in before:
                    _flatten(path, manifest, before)
    return before


def workspace_changes(runtime: Any, episode_id: str, workspace: str,
                      after_action: int = 0) -> list[FileDiff]:
    """The paths that differ now from their state at ``after_action``, sorted by path."""
    before = before_states(runtime.journal.records(episode_id), after_action)
    ws = Workspace(workspace)
    try:
        out = []
        for path in sorted(before):
            was = before[path]
            try:
                now = ws.snapshot(path, None)
            except (OSError, ValueError, RevexError) as exc:
                now = {"type": "unreadable", "error": str(exc)}
            diff = _compare(runtime, ws, path, was, now)
            if diff is not None:
                out.append(diff)
        return out
    finally:
        ws.close()


def _compare(runtime: Any, ws: Workspace, path: str, was: dict[str, Any],
             now: dict[str, Any]) -> FileDiff | None:
    wtype, ntype = was.get("type"), now.get("type")
    if wtype == "absent" and ntype == "absent":
        return None
    if wtype == "absent":
        change = "added"
    elif ntype == "absent":
        change = "deleted"
    elif wtype != ntype:
        change = "type"
    elif (was.get("sha"), was.get("target")) != (now.get("sha"), now.get("target")):
        change = "modified"  # a file's bytes or a symlink's target
    elif was.get("mode") != now.get("mode") or (
            wtype != "dir" and was.get("mtime_ns") != now.get("mtime_ns")):
        change = "metadata"
    else:
        return None
    text, binary = "", False
    if "file" in (wtype, ntype) and change in ("added", "deleted", "modified", "type"):
        old = stored_bytes(runtime, was) if wtype == "file" else b""
        new = _read(ws, path, now) if ntype == "file" else b""
        if old is None or new is None:
            binary = True
        else:
            try:
                a, b = old.decode().splitlines(keepends=True), new.decode().splitlines(
                    keepends=True)
            except UnicodeDecodeError:
                binary = True
            else:
                text = "".join(difflib.unified_diff(a, b, f"a/{path}", f"b/{path}"))
    return FileDiff(path, change, was, now, text, binary)


def stored_bytes(runtime: Any, manifest: dict[str, Any]) -> bytes | None:
    """A file manifest's bytes from the content store; None when too big to diff or not kept."""
    if manifest.get("size", 0) > MAX_DIFF_BYTES:
        return None
    try:
        # the manifest's size is what was recorded; read no more than that, whatever the blob
        data: bytes = runtime.store.read_bytes(manifest["sha"], MAX_DIFF_BYTES + 1)
        return None if len(data) > MAX_DIFF_BYTES else data
    except (OSError, KeyError, RevexError):  # a post-state's bytes are not always kept
        return None


def _read(ws: Workspace, path: str, manifest: dict[str, Any]) -> bytes | None:
    if manifest.get("size", 0) > MAX_DIFF_BYTES:
        return None
    try:
        fd = ws.open_file(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(MAX_DIFF_BYTES + 1)[:MAX_DIFF_BYTES]
    finally:
        os.close(fd)


def undo_preview(runtime: Any, episode_id: str) -> list[str]:
    """The drift lines an undo of the episode would stop at, computed without changing
    anything (the same all-or-nothing checks ``rt.undo`` runs first); [] when it would go
    through. Actions whose outcome a crash left unknown are not probed here."""
    from revex.runtime.effects.base import EffectContext, UndoItem
    from revex.runtime.rollback import pending_items, prefix_of

    info = runtime.journal.episode(episode_id)
    if info is None:
        return []
    items = pending_items(runtime.journal.records(episode_id))
    groups: dict[str, list[UndoItem]] = {}
    for item in items:
        groups.setdefault(prefix_of(item.intent.kind), []).append(item)
    lines: list[str] = []
    for prefix, group in groups.items():
        effect = runtime.make_effect(prefix, EffectContext(episode_id, info["config"],
                                                           runtime.store))
        try:
            lines.extend(effect.check_undo(group))
        except Exception as exc:  # a preview reports what it could not check, it never fails
            lines.append(f"cannot check the {prefix}.* actions now: {type(exc).__name__}: {exc}")
        finally:
            effect.close()
    return lines
