"""Undo after commit and crash recovery: rolling back an episode whose owner is gone.

Both act only while holding the episode's owner lock (a live owner keeps it, so its episode is
never touched), read the episode's records through the hash chain
(:meth:`Journal.episode_records`), check the episodes table's config against the digest in the
chained begin record, and resolve INTENTs without an outcome by probing before undoing. Recovery
rolls back only episodes whose chained records say they are active.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from revex.errors import (
    ActionFailed,
    ConfigError,
    ConflictError,
    JournalCorrupt,
    JournalError,
    StateError,
)
from revex.runtime.effects.base import Effect, EffectContext
from revex.runtime.integrity import chain_status
from revex.runtime.journal import Record, config_digest
from revex.runtime.rollback import (
    CLR_BATCH,
    OwnerLock,
    interrupted_rollback,
    pending_items,
    resolve_intents,
    rollback,
)

if TYPE_CHECKING:
    from revex.runtime.runtime import Runtime

ACTIVE = ("active", "rolling_back")


def undo(rt: Runtime, episode_id: str, *, force: bool = False) -> int:
    """:meth:`Runtime.undo` (which says what it returns and raises)."""
    info = rt.journal.episode(episode_id)
    if info is None:
        raise ConfigError(f"no episode {episode_id!r}; `revex episodes` lists them")
    lock = OwnerLock(rt.lock_path(episode_id))
    if not lock.acquire():
        raise ConfigError(f"episode {episode_id} is still running in process "
                          f"{lock.owner_pid()}; roll it back there")
    try:
        return undo_locked(rt, episode_id, info["config"], force=force)
    finally:
        lock.release(remove=True)


def checked_records(rt: Runtime, episode_id: str, config: dict[str, Any]) -> list[Record]:
    """The episode's records checked against the chain, and its config (from the episodes
    table, which only indexes the chain) against the digest in its begin record."""
    records = rt.journal.episode_records(episode_id)
    if not records:
        raise JournalCorrupt(f"episode {episode_id} has no records in the journal at "
                             f"{rt.journal.path}; run `revex verify`")
    want = records[0].params.get("config_sha256")
    if want is not None and want != config_digest(config):
        raise JournalCorrupt(
            f"the config of episode {episode_id} in the episodes table does not match its "
            "hash-chained begin record (the table was edited); nothing was undone. Run "
            "`revex verify`")
    return records


def undo_locked(rt: Runtime, episode_id: str, config: dict[str, Any], *, force: bool,
                resume_window: int = 0, final: str = "undone", check_pages: bool = True) -> int:
    """Undo every pending action of ``episode_id`` (whose lock the caller holds), then set it
    ``final``; a ConflictError sets it ``conflict`` instead. ``check_pages=False``: the
    caller has run :meth:`Journal.check_pages` itself (once for a whole recovery pass: it
    reads the whole file)."""
    effects: dict[str, Effect] = {}

    def effect_for(prefix: str) -> Effect:
        if prefix not in effects:
            effects[prefix] = rt.make_effect(
                prefix, EffectContext(episode_id, config, rt.store))
        return effects[prefix]

    try:
        if check_pages:  # a damaged page must refuse the undo before it starts
            rt.journal.check_pages()
        records = checked_records(rt, episode_id, config)
        if resolve_intents(rt.journal, episode_id, records, effect_for):
            records = checked_records(rt, episode_id, config)
        items = pending_items(records)
        if resume_window == 0 and interrupted_rollback(records):
            resume_window = CLR_BATCH
        rt.journal.set_episode_status(episode_id, "rolling_back")
        report = rollback(rt.journal, episode_id, items, effect_for, force=force,
                          resume_window=resume_window)
        rt.journal.set_episode_status(episode_id, final, kind="episode.undo",
                                      params={"undone": report.undone})
        return report.undone
    except ConflictError as exc:
        rt.journal.set_episode_status(episode_id, "conflict",
                                      params={"reason": str(exc)[:2000]})
        raise
    finally:
        for effect in effects.values():
            effect.close()


def recover(rt: Runtime) -> list[str]:
    """:meth:`Runtime.recover`: roll back the episodes of dead owners; returns their ids."""
    recovered = []
    pages_checked = False
    for info in rt.journal.episodes():
        if info["status"] not in ACTIVE:
            continue
        lock = OwnerLock(rt.lock_path(info["id"]))
        try:
            if not lock.acquire():
                continue  # its owner lives: its status is the owner's to change
        except StateError as exc:
            warnings.warn(f"recovery of episode {info['id']} skipped: {exc}", stacklevel=3)
            continue
        try:
            current = rt.journal.episode(info["id"])
            if current is None or current["status"] not in ACTIVE:
                continue
            try:
                chained = chain_status(checked_records(rt, info["id"], current["config"]))
                if chained not in ACTIVE:
                    raise JournalCorrupt(
                        f"the episodes table says {current['status']!r} but its "
                        f"hash-chained records say {chained!r} (the table was edited); "
                        "nothing was rolled back. Run `revex verify`")
                if not pages_checked:  # once per pass, before the first undo
                    rt.journal.check_pages()
                    pages_checked = True
                undo_locked(rt, info["id"], current["config"], force=False,
                            final="recovered", check_pages=False)
            except (ConflictError, ConfigError, ActionFailed, JournalError) as exc:
                # drift, a database that is down, a damaged journal: the episode stays
                # pending; one bad episode must not block the runtime
                warnings.warn(f"recovery of episode {info['id']} stopped: {exc}",
                              stacklevel=3)
                continue
            rt.drop_forks(current["config"])
            recovered.append(info["id"])
        finally:
            lock.release(remove=True)
    return recovered
