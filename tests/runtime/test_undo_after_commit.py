"""Undo after commit, from a new process; drift makes the whole undo refuse (all-or-nothing)
with a ConflictError naming the action and the path; force=True undoes anyway."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from revex import ConflictError, Runtime
from tests.helpers import assert_same_tree, populate, snapshot_tree

ROOT = Path(__file__).resolve().parents[2]

UNDO = r"""
import sys
from revex import ConflictError, Runtime
rt = Runtime(sys.argv[1], audit=None)
try:
    print("undone", rt.undo(sys.argv[2], force=sys.argv[3] == "1"))
except ConflictError as exc:
    print("conflict", exc)
"""


def _undo_in_new_process(state: Path, episode_id: str, force: bool = False) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", UNDO, str(state), episode_id,
                          "1" if force else "0"], capture_output=True, text=True, env=env,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def _commit_three_writes(tmp_path: Path) -> tuple[Path, Path, str, dict[str, object]]:
    ws, state = tmp_path / "ws", tmp_path / "state"
    populate(ws)
    before = snapshot_tree(ws)
    with Runtime(state, audit=None) as rt, rt.episode(ws, on_exit="commit") as ep:
        ep.fs.write_text("keep.txt", "one")       # the oldest target
        ep.fs.write_text("new.txt", "two")
        ep.fs.mkdir("made")
        ep.fs.write_text("made/three.txt", "three")
        episode_id = ep.id
    return ws, state, episode_id, before


def test_undo_after_commit_from_a_new_process_restores_exactly(tmp_path: Path) -> None:
    ws, state, episode_id, before = _commit_three_writes(tmp_path)
    assert _undo_in_new_process(state, episode_id).startswith("undone 4")
    assert_same_tree(before, snapshot_tree(ws))
    with Runtime(state, audit=None) as rt:
        assert rt.verify().ok
        assert rt.journal.episode(episode_id)["status"] == "undone"  # type: ignore[index]


def test_drift_on_the_oldest_target_refuses_the_whole_undo_naming_action_and_path(
        tmp_path: Path) -> None:
    ws, state, episode_id, _ = _commit_three_writes(tmp_path)
    (ws / "keep.txt").write_text("changed by someone else")
    committed = snapshot_tree(ws)
    out = _undo_in_new_process(state, episode_id)
    assert out.startswith("conflict")
    assert "action #1 fs.write 'keep.txt'" in out
    assert_same_tree(committed, snapshot_tree(ws))  # nothing was undone, not even the newer ones
    with Runtime(state, audit=None) as rt:
        with pytest.raises(ConflictError) as info:
            rt.undo(episode_id)
        assert any("keep.txt" in c for c in info.value.conflicts)
    assert_same_tree(committed, snapshot_tree(ws))


def test_force_undoes_despite_drift(tmp_path: Path) -> None:
    ws, state, episode_id, before = _commit_three_writes(tmp_path)
    (ws / "keep.txt").write_text("changed by someone else")
    assert _undo_in_new_process(state, episode_id, force=True).startswith("undone 4")
    assert_same_tree(before, snapshot_tree(ws))


def test_file_added_by_an_outsider_inside_a_dir_the_episode_created_is_a_conflict(
        tmp_path: Path) -> None:
    ws, state, episode_id, _ = _commit_three_writes(tmp_path)
    (ws / "made" / "outsider.txt").write_text("mine")
    committed = snapshot_tree(ws)
    out = _undo_in_new_process(state, episode_id)
    assert out.startswith("conflict") and "outsider.txt" in out and "'made'" in out
    assert_same_tree(committed, snapshot_tree(ws))


def test_undo_of_an_episode_still_running_elsewhere_is_refused(tmp_path: Path) -> None:
    with Runtime(tmp_path / "state", audit=None) as rt, rt.episode(tmp_path / "ws") as ep:
        ep.fs.write_text("a", "a")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        out = subprocess.run([sys.executable, "-c", UNDO, str(tmp_path / "state"), ep.id, "0"],
                             capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode != 0 and "still running" in out.stderr
        assert (tmp_path / "ws" / "a").read_text() == "a"
