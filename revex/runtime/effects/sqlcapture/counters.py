"""Counters an undo must rewind: PostgreSQL sequences, SQLite's ``sqlite_sequence``, MariaDB's
AUTO_INCREMENT. No ROLLBACK gives back the ids a statement consumed on PostgreSQL or InnoDB,
so each action keeps ``seqs``: counter name -> [value before, value after], read around the
statement; undo puts a counter back only if it still holds the value the action left
(compare-and-set: ids someone else consumed since are never handed out twice).

MariaDB sets a counter with ALTER TABLE, which commits implicitly: inside a forward
transaction that still holds earlier actions' work (transactional mode, a rollback to a
checkpoint, a failed statement) the rewind waits until that transaction ends. Until then the
next action that moves the same counter takes over the rewind (its undo goes back to before
the waiting ids), so the chain of compare-and-sets is not broken by the gap.
"""

from __future__ import annotations

from typing import Any

from revex.runtime.effects.sqlcapture.base import Backend, Cursor


class Counters:
    """The counter rewinds of one database of an episode."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._waiting: dict[str, list[Any]] = {}
        """name -> [pre, post, oldest seq, newest seq] of rewinds that wait for the forward
        transaction to end."""

    def moved(self, before: dict[str, list[Any]], after: dict[str, list[Any]]
              ) -> dict[str, list[Any]]:
        """The ``seqs`` of an action from the counters read around it; takes over waiting
        rewinds of the counters it moved on."""
        seqs = {k: [before.get(k), after.get(k)] for k in {*before, *after}
                if before.get(k) != after.get(k)}
        for name, change in seqs.items():
            waiting = self._waiting.get(name)
            if waiting is not None and waiting[1] == change[0]:
                change[0] = waiting[0]
                del self._waiting[name]
        return seqs

    def restore(self, cur: Cursor, seqs: dict[str, list[Any]]) -> None:
        """Put back each counter that still holds its ``post`` value (MariaDB: commits)."""
        if not seqs:
            return
        now = self.backend.sequences(cur)
        for name, (pre, post) in seqs.items():
            if now.get(name) == post:
                self.backend.set_sequence(cur, name, pre)

    def defer(self, seq: int, seqs: dict[str, list[Any]]) -> bool:
        """Keep the rewinds of action ``seq`` for when the forward transaction ends, if this
        backend cannot set a counter inside it; True if they were kept."""
        if not self.backend.sequence_is_ddl or not seqs:
            return False
        for name, (pre, post) in seqs.items():
            have = self._waiting.setdefault(name, [pre, post, seq, seq])
            if seq <= have[2]:
                have[0], have[2] = pre, seq
            if seq >= have[3]:
                have[1], have[3] = post, seq
        return True

    def flush(self, cur: Cursor) -> bool:
        """The forward transaction has ended: do the waiting rewinds. True if any ran."""
        if not self._waiting:
            return False
        waiting, self._waiting = self._waiting, {}
        self.restore(cur, {name: [w[0], w[1]] for name, w in waiting.items()})
        return True
