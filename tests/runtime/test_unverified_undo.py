"""The generic side of verify-after-undo: when an effect's undo cannot verify that its target
holds the pre-state again (it raises ConflictError), rollback, close and ``rt.undo`` stop with a
message saying how far they got, journal no UNDONE for it, and never mark the episode rolled
back or undone. Once the target can be restored, the same episode rolls back completely.

The effect here is a minimal one (a value in a file) written against the Effect protocol; its
target lives on a real tmpfs that is remounted read-only, so the undo's write really fails and
its read-back really shows the post-state.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from fault_tmpfs import mounted, remount

from revex import ConflictError, Runtime
from revex.runtime.effects.base import EffectContext, Plan, UndoItem
from revex.runtime.episode import Episode
from revex.runtime.journal import Record, Status


class FileValueEffect:
    """One value per file; undo writes the old value back and re-reads it."""

    def __init__(self, ctx: EffectContext) -> None:
        self.ctx = ctx

    def plan(self, path: Path, value: str) -> Plan:
        def prepare() -> dict[str, Any]:
            return {"path": str(path), "pre": path.read_text()}

        def apply(undo: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            path.write_text(value)
            return None, {"value": value}

        return Plan(kind="value.set", target=str(path), params={"value": value},
                    prepare=prepare, apply=apply)

    def check_undo(self, items: Sequence[UndoItem]) -> list[str]:
        return [f"{item.describe()}: changed since" for item in items
                if Path(item.undo_info["path"]).read_text() != item.post["value"]]

    def undo(self, item: UndoItem, *, force: bool) -> None:
        path, pre = Path(item.undo_info["path"]), item.undo_info["pre"]
        try:
            path.write_text(pre)
        except OSError as exc:
            write_error = f" (the write failed: {exc})"
        else:
            write_error = ""
        now = path.read_text()
        if now != pre:  # verify after undo: a success only when the pre-state is back
            raise ConflictError(f"{item.describe()}: {path} holds {now!r} after the undo, not "
                                f"{pre!r}{write_error}", [str(path)])

    def resolve_intent(self, intent: Record) -> dict[str, Any] | None:
        value = Path(intent.undo["path"]).read_text()
        return None if value == intent.undo["pre"] else {"value": value}

    def close(self) -> None:
        pass


def _runtime(tmp_path: Path) -> Runtime:
    rt = Runtime(tmp_path / "state", policy="permissive", audit=None)
    rt._effect_factories["value"] = FileValueEffect  # an effect the runtime does not ship
    return rt


def _set(ep: Episode, path: Path, value: str) -> None:
    effect = ep._effect("value")
    assert isinstance(effect, FileValueEffect)
    ep._act(lambda: effect.plan(path, value), "value.set", str(path))


def _undone(rt: Runtime, episode_id: str) -> list[str]:
    return [r.target for r in rt.journal.records(episode_id) if r.status is Status.UNDONE]


def test_close_stops_at_an_unverified_undo_and_the_episode_is_not_rolled_back(
        tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    with mounted(tmp_path / "m", "1m") as mount:
        target = mount / "value.txt"
        target.write_text("pre")
        rt = _runtime(tmp_path)
        ep = rt.episode(ws)
        ep.fs.write_text("older.txt", "1")
        _set(ep, target, "post")
        ep.fs.write_text("newer.txt", "2")
        remount(mount, "ro")
        with pytest.raises(ConflictError) as info:
            ep.close()
        message = str(info.value)
        assert "value.set" in message and "not verified" in message and "'post'" in message
        assert "1 later action(s) were undone" in message and "still pending" in message
        assert rt.journal.episode(ep.id)["status"] == "active"  # type: ignore[index]
        assert ep.status == "active"
        assert _undone(rt, ep.id) == ["newer.txt"]
        assert target.read_text() == "post" and (ws / "older.txt").exists()

        remount(mount, "rw")
        ep.close()
        assert rt.journal.episode(ep.id)["status"] == "rolled_back"  # type: ignore[index]
        assert target.read_text() == "pre" and sorted(p.name for p in ws.iterdir()) == []
        rt.close()


def test_undo_after_commit_with_an_unverified_undo_is_a_conflict_not_undone(
        tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    with mounted(tmp_path / "m", "1m") as mount:
        target = mount / "value.txt"
        target.write_text("pre")
        rt = _runtime(tmp_path)
        with rt.episode(ws, on_exit="commit") as ep:
            _set(ep, target, "post")
            ep.fs.write_text("a.txt", "a")
        remount(mount, "ro")
        with pytest.raises(ConflictError, match="not verified"):
            rt.undo(ep.id)
        assert rt.journal.episode(ep.id)["status"] == "conflict"  # type: ignore[index]
        assert _undone(rt, ep.id) == ["a.txt"]
        remount(mount, "rw")
        assert rt.undo(ep.id) == 1
        assert rt.journal.episode(ep.id)["status"] == "undone"  # type: ignore[index]
        assert target.read_text() == "pre" and list(ws.iterdir()) == []
        assert rt.verify().ok
        rt.close()
