"""Rollback and crash recovery over the journal.

Rollback takes the DONE actions not yet undone, newest first, asks each effect for drift on all
of them before touching anything (all-or-nothing), then undoes them one by one. Each undo writes
a compensation record (UNDONE). CLRs are committed in groups: an undo is compare-and-set and
idempotent (an action whose target already holds its pre-state is only marked), so a crash
between an undo and its CLR resumes without undoing anything twice.

Durability: the ``episode.rollback.begin`` record is durable before the first undo (it is what
tells recovery that the newest :data:`CLR_BATCH` items may be undone without their CLRs, and
must be finished, forced), and so is every full batch of CLRs but the last (each moves that
window). The last batch and ``episode.rollback.end`` are one commit without an fsync: a power
loss that drops them leaves a begin without an end and at most one batch of items undone
without CLRs, which is the window recovery finishes; the episode's next durable append (its
close, its next INTENT) makes them durable. A rollback of a few actions therefore costs one
fsync. A failed rollback's last CLRs and its ``episode.rollback.failed`` record are durable:
recovery must not force the item that failed.

After the last undo of a run, each effect may *settle* what the step-by-step undo cannot
guarantee alone (files: every touched directory gets the mtime it had before the oldest undone
action, whatever order the undos ran in, including a rollback resumed after a crash). The CLRs
of the last batch are committed only after that, so a crash while settling redoes that batch,
and settles again, on recovery.

Recovery (on opening a Runtime): an episode that is active or rolling back and whose owner lock
is free has lost its process. Its INTENTs without an outcome are resolved by probing the real
state, then it is rolled back to its start. A live rollback and close resolve such INTENTs the
same way first (a DONE that could not be written, e.g. on a full disk).

An effect's ``undo`` returns only after it has verified that the target holds its pre-state
again; a ConflictError from it stops the rollback (the CLRs of what was undone before it are
kept) and the episode is not marked rolled back or undone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from revex.errors import ConflictError, StateError
from revex.runtime.effects.base import Effect, UndoItem
from revex.runtime.journal import Journal, Record, Status

CLR_BATCH = 64


def prefix_of(kind: str) -> str:
    return kind.split(".", 1)[0]


def pending_items(records: Sequence[Record], after_action: int = 0) -> list[UndoItem]:
    """DONE actions with ``action_seq > after_action`` not yet undone, newest first."""
    done: dict[int, Record] = {}
    undone: set[int] = set()
    for rec in records:
        if rec.refers_to is None:
            continue
        if rec.status is Status.DONE:
            done[rec.refers_to] = rec
        elif rec.status is Status.UNDONE:
            undone.add(rec.refers_to)
    items = [
        UndoItem(intent=rec, done=done[rec.seq])
        for rec in records
        if rec.status is Status.INTENT and rec.seq in done and rec.seq not in undone
        and rec.action_seq > after_action and not rec.undo.get("irreversible")
    ]
    items.reverse()
    return items


def unresolved_intents(records: Sequence[Record]) -> list[Record]:
    outcome = {r.refers_to for r in records if r.refers_to is not None}
    return [r for r in records if r.status is Status.INTENT and r.seq not in outcome]


def interrupted_rollback(records: Sequence[Record]) -> bool:
    state = False
    for rec in records:
        if rec.kind == "episode.rollback.begin":
            state = True
        elif rec.kind in ("episode.rollback.end", "episode.rollback.failed"):
            state = False
    return state


@dataclass
class RollbackReport:
    undone: int = 0
    conflicts: list[str] = field(default_factory=list)


def rollback(
    journal: Journal,
    episode_id: str,
    items: Sequence[UndoItem],
    effect_for: Callable[[str], Effect],
    *,
    force: bool = False,
    resume_window: int = 0,
    note: dict[str, Any] | None = None,
) -> RollbackReport:
    """Undo ``items`` (newest first). Raises ConflictError before any change on drift.

    ``resume_window``: the first that many items belong to an interrupted rollback (undone or
    not, their CLRs may be missing). They are finished first, forced, before the drift check of
    the rest: until they are, the state of a path they share with an older item is unknown.
    """
    report = RollbackReport()
    if not items:
        return report
    window, rest = list(items[:resume_window]), list(items[resume_window:])
    if window:
        _undo_items(journal, episode_id, window, effect_for, force=True, report=report,
                    note={"resumed": True, **(note or {})})
    if not rest:
        return report
    groups: dict[str, list[UndoItem]] = {}
    for item in rest:
        groups.setdefault(prefix_of(item.intent.kind), []).append(item)
    conflicts: list[str] = []
    for prefix, group in groups.items():
        conflicts.extend(effect_for(prefix).check_undo(group))
    if conflicts and not force:
        journal.append(episode_id=episode_id, kind="episode.rollback.refused", target="",
                       status=Status.EVENT, params={"conflicts": conflicts[:50]},
                       durable=False)
        raise ConflictError(
            f"episode {episode_id}: {len(conflicts)} target(s) changed since the episode "
            "touched them; nothing was undone (force=True overwrites):\n  "
            + "\n  ".join(conflicts[:20]),
            conflicts,
        )
    report.conflicts = conflicts
    _undo_items(journal, episode_id, rest, effect_for, force=force, report=report, note=note,
                settle=window + rest)
    return report


def _undo_items(journal: Journal, episode_id: str, items: Sequence[UndoItem],
                effect_for: Callable[[str], Effect], *, force: bool, report: RollbackReport,
                note: dict[str, Any] | None, settle: Sequence[UndoItem] | None = None) -> None:
    """Undo ``items`` in order, then settle ``settle`` (default: ``items``) before the CLRs
    of the last batch are committed."""
    journal.append(episode_id=episode_id, kind="episode.rollback.begin", target="",
                   status=Status.EVENT,
                   params={"actions": len(items), "force": force, **(note or {})})
    batch: list[dict[str, Any]] = []
    undone = 0
    try:
        for i, item in enumerate(items):
            try:
                effect_for(prefix_of(item.intent.kind)).undo(item, force=force)
            except ConflictError as exc:
                # drift found late, or an undo whose result the effect could not verify: a
                # conflict, never a success; say how far the rollback got
                raise ConflictError(
                    f"episode {episode_id}: undo of {item.describe()} is not verified: {exc} "
                    f"({undone} later action(s) were undone before it; it and "
                    f"{len(items) - i - 1} earlier one(s) are still pending, and the episode "
                    "is not marked rolled back)", exc.conflicts or [str(exc)]) from exc
            batch.append(dict(episode_id=episode_id, action_seq=item.intent.action_seq,
                              kind=item.intent.kind, target=item.intent.target,
                              status=Status.UNDONE, refers_to=item.seq,
                              params={"forced": bool(force)}))
            undone += 1
            report.undone += 1
            if len(batch) >= CLR_BATCH and i < len(items) - 1:
                journal.append_many(batch)
                batch = []
        _settle(items if settle is None else settle, effect_for)
    except BaseException as exc:
        journal.append_many([*batch, dict(
            episode_id=episode_id, kind="episode.rollback.failed", target="",
            status=Status.EVENT, error=f"{type(exc).__name__}: {exc}")])
        raise
    journal.append_many([*batch, dict(episode_id=episode_id, kind="episode.rollback.end",
                                      target="", status=Status.EVENT,
                                      params={"undone": undone})], durable=False)


def _settle(items: Sequence[UndoItem], effect_for: Callable[[str], Effect]) -> None:
    groups: dict[str, list[UndoItem]] = {}
    for item in items:
        groups.setdefault(prefix_of(item.intent.kind), []).append(item)
    for prefix, group in groups.items():
        settle = getattr(effect_for(prefix), "settle", None)
        if settle is not None:
            settle(group)


def resolve_intents(journal: Journal, episode_id: str, records: Sequence[Record],
                    effect_for: Callable[[str], Effect]) -> int:
    """Give every INTENT without an outcome a DONE (it took effect) or FAILED (it did not)."""
    resolved = 0
    for intent in unresolved_intents(records):
        post = effect_for(prefix_of(intent.kind)).resolve_intent(intent)
        common = dict(episode_id=episode_id, action_seq=intent.action_seq, kind=intent.kind,
                      target=intent.target, refers_to=intent.seq)
        # an outcome, like the one it replaces: durable with the rollback's begin that follows
        if post is None:
            journal.append(**common, status=Status.FAILED, durable=False,
                           error="it had not taken effect (probed: the journal held no outcome)")
        else:
            journal.append(**common, status=Status.DONE, result=post,
                           params={"probed": True}, durable=False)
        resolved += 1
    return resolved


class OwnerLock:
    """An flock held by the process that owns an episode; free means the owner is gone."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self, *, block: bool = False) -> bool:
        """Take the lock; False if another process holds it.

        Raises StateError when the lock file cannot be created (read-only or full state dir).
        """
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateError(f"cannot create the episode lock {self.path}: {exc}; the state "
                             "dir must be writable") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        # the pid is only informative (for messages): the flock is what owns the episode, so
        # a full disk that refuses these few bytes must not lose the lock
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return True

    def release(self, *, remove: bool = False) -> None:
        if self.fd is None:
            return
        if remove:
            with contextlib.suppress(OSError):  # gone, or a read-only dir: the flock ends below
                os.unlink(self.path)
        os.close(self.fd)
        self.fd = None

    def owner_pid(self) -> int | None:
        try:
            return int(self.path.read_text() or 0) or None
        except (OSError, ValueError):
            return None
