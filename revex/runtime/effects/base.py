"""What every effect provides to the pipeline and to rollback.

Forward path: an effect turns a call (``ep.fs.write_text(...)``) into a :class:`Plan`: the
attributes the policy sees, the parameters the journal keeps, what it costs against the quotas,
and three callables: ``prepare`` captures the undo information (pre-images) before anything
happens, ``apply`` performs the effect and returns what it left behind (the post-state), and
``cleanup`` undoes a partial effect when ``apply`` fails.

Backward path: an effect implements :class:`Effect`: a batch drift check (all-or-nothing, before
the first undo step), an idempotent compare-and-set ``undo`` of one action, and ``resolve_intent``
to decide after a crash whether an action with an INTENT but no DONE took effect.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from revex.runtime.journal import Record
from revex.runtime.store import ContentStore


@dataclass
class Plan:
    kind: str
    target: str
    attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    cost: dict[str, float] = field(default_factory=dict)
    prepare: Callable[[], dict[str, Any]] | None = None
    apply: Callable[[dict[str, Any]], tuple[Any, dict[str, Any]]] | None = None
    cleanup: Callable[[dict[str, Any]], None] | None = None
    read_only: bool = False
    # the outcome (DONE) may wait for the next transaction instead of a commit of its own:
    # only for effects whose resolve_intent finds exactly whether, and how, the action took
    # effect (files), since a crash before that transaction leaves the INTENT to probing
    defer_outcome: bool = False


@dataclass(frozen=True)
class UndoItem:
    """One DONE action awaiting undo: its INTENT (undo info) and DONE (post-state) records."""

    intent: Record
    done: Record

    @property
    def seq(self) -> int:
        return self.intent.seq

    @property
    def undo_info(self) -> dict[str, Any]:
        return self.intent.undo

    @property
    def post(self) -> dict[str, Any]:
        return self.done.result

    def describe(self) -> str:
        return f"action #{self.intent.action_seq} {self.intent.kind} {self.intent.target!r}"


@dataclass(frozen=True)
class EffectContext:
    """What an effect needs to act for one episode, rebuilt from the journal after a crash."""

    episode_id: str
    config: dict[str, Any]
    store: ContentStore


class Effect(Protocol):
    """The backward half of an effect; one instance per episode."""

    def check_undo(self, items: Sequence[UndoItem]) -> list[str]:
        """Drift lines for ``items`` (newest first) whose targets changed since; [] if none."""
        ...

    def undo(self, item: UndoItem, *, force: bool) -> None:
        """Put the target back as it was before ``item``, then check that it is.

        The verify-after-undo rule: return normally only after re-reading the target (the
        file, the rows, the resource) and finding its pre-state; rollback journals UNDONE only
        then. An undo that cannot be verified (the target still differs, or cannot be read
        back) raises ConflictError naming the action, the target and what differs: rollback,
        close, ``rt.undo`` and recovery then stop, and the episode is never marked rolled
        back or undone. Idempotent: undoing an action whose target already holds the
        pre-state only verifies it. Raises ConflictError on drift unless ``force``."""
        ...

    def resolve_intent(self, intent: Record) -> dict[str, Any] | None:
        """After a crash: the post-state if the action (even partly) took effect, else None
        (and whatever it left half-done that is not part of the target is cleaned up)."""
        ...

    def close(self) -> None: ...


EffectFactory = Callable[[EffectContext], Effect]
