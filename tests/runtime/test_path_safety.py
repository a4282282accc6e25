"""Path safety: no ``ep.fs`` call reaches outside the workspace, whether through ``..``, an
absolute path, or a symlink in any component (made by the episode or planted on disk by code it
ran). Each attempt raises PolicyViolation, is journaled as DENIED, and changes nothing."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from revex import PolicyViolation, Runtime
from revex.runtime.journal import Status
from tests.helpers import assert_same_tree, snapshot_tree


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, Any]]:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "sentinel.txt").write_text("do not touch")
    os.chmod(outside / "sentinel.txt", 0o644)
    ws = tmp_path / "ws"
    (ws / "dir").mkdir(parents=True)
    (ws / "dir" / "file.txt").write_text("inside")
    # planted directly on disk, as code the episode ran could have done
    os.symlink(str(outside), ws / "planted_dir")
    os.symlink(str(outside / "sentinel.txt"), ws / "planted_file")
    os.symlink("../outside", ws / "planted_rel")
    rt = Runtime(tmp_path / "state", audit=None)
    yield {"rt": rt, "ws": ws, "outside": outside, "tmp": tmp_path}
    rt.close()


OPS: dict[str, Callable[[Any, str], Any]] = {
    "write_text": lambda ep, p: ep.fs.write_text(p, "x"),
    "write_bytes": lambda ep, p: ep.fs.write_bytes(p, b"x"),
    "append": lambda ep, p: ep.fs.append(p, "x"),
    "read_text": lambda ep, p: ep.fs.read_text(p),
    "chmod": lambda ep, p: ep.fs.chmod(p, 0o777),
    "copy_to": lambda ep, p: ep.fs.copy("dir/file.txt", p),
    "copy_from": lambda ep, p: ep.fs.copy(p, "dir/copied.txt"),
    "delete": lambda ep, p: ep.fs.delete(p),
    "mkdir": lambda ep, p: ep.fs.mkdir(p),
    "rename_to": lambda ep, p: ep.fs.rename("dir/file.txt", p),
}

ESCAPES = [
    "../outside/sentinel.txt",
    "dir/../../outside/sentinel.txt",
    "/etc/passwd",
    "planted_dir/sentinel.txt",        # symlink (absolute target) as a middle component
    "planted_rel/sentinel.txt",        # symlink (relative target) as a middle component
    "planted_dir/new.txt",
]
FINAL_SYMLINK_OPS = ["write_text", "write_bytes", "append", "read_text", "chmod", "copy_to",
                     "copy_from"]


def _check_denied(env: dict[str, Any], op: str, path: str) -> None:
    rt, ws, outside = env["rt"], env["ws"], env["outside"]
    before_out, before_ws = snapshot_tree(outside), snapshot_tree(ws)
    with rt.episode(ws) as ep:
        with pytest.raises(PolicyViolation) as info:
            OPS[op](ep, path)
        assert info.value.rule == "path-safety"
        denied = [r for r in rt.journal.records(ep.id) if r.status is Status.DENIED]
        assert len(denied) == 1, denied
        assert denied[0].rule == "path-safety" and denied[0].decision == "deny"
        assert denied[0].error
        assert not [r for r in rt.journal.records(ep.id)
                    if r.status in (Status.INTENT, Status.DONE) and r.kind.startswith("fs.")]
    assert_same_tree(before_out, snapshot_tree(outside))
    assert_same_tree(before_ws, snapshot_tree(ws))
    assert rt.verify().ok


@pytest.mark.parametrize("path", ESCAPES)
@pytest.mark.parametrize("op", sorted(OPS))
def test_escaping_path_is_denied_journaled_and_changes_nothing(
        env: dict[str, Any], op: str, path: str) -> None:
    _check_denied(env, op, path)


@pytest.mark.parametrize("op", FINAL_SYMLINK_OPS)
@pytest.mark.parametrize("link", ["planted_file", "planted_dir"])
def test_symlink_as_final_component_is_never_followed(
        env: dict[str, Any], op: str, link: str) -> None:
    _check_denied(env, op, link)


@pytest.mark.parametrize("op", ["write_text", "append", "read_text", "chmod", "copy_to"])
def test_symlink_created_by_the_episode_is_not_followed(env: dict[str, Any], op: str) -> None:
    rt, ws, outside = env["rt"], env["ws"], env["outside"]
    before_out = snapshot_tree(outside)
    with rt.episode(ws) as ep:
        ep.fs.symlink("mylink", "dir")
        ep.fs.symlink("filelink", "dir/file.txt")
        for path in ("mylink/file.txt", "filelink"):
            with pytest.raises(PolicyViolation):
                OPS[op](ep, path)
        denied = [r for r in rt.journal.records(ep.id) if r.status is Status.DENIED]
        assert len(denied) == 2
    assert (ws / "dir" / "file.txt").read_text() == "inside"
    assert_same_tree(before_out, snapshot_tree(outside))


def test_symlink_pointing_outside_cannot_be_created(env: dict[str, Any]) -> None:
    rt, ws = env["rt"], env["ws"]
    with rt.episode(ws) as ep:
        for target in ("../outside", "/etc", "dir/../../outside", "a/../../x"):
            with pytest.raises(PolicyViolation):
                ep.fs.symlink("evil", target)
        denied = [r for r in rt.journal.records(ep.id) if r.status is Status.DENIED]
        assert len(denied) == 4
        assert not (ws / "evil").exists() and not (ws / "evil").is_symlink()


def test_component_swapped_for_symlink_after_the_episode_made_it_is_denied(
        env: dict[str, Any]) -> None:
    rt, ws, outside = env["rt"], env["ws"], env["outside"]
    before_out = snapshot_tree(outside)
    with rt.episode(ws, on_exit="commit") as ep:
        ep.fs.mkdir("work")
        ep.fs.write_text("work/a.txt", "a")
        # "code it ran" replaces the directory with a symlink to the outside
        os.rename(ws / "work", ws / "work.moved")
        os.symlink(str(outside), ws / "work")
        with pytest.raises(PolicyViolation):
            ep.fs.write_text("work/sentinel.txt", "pwned")
        with pytest.raises(PolicyViolation):
            ep.fs.read_text("work/sentinel.txt")
    assert_same_tree(before_out, snapshot_tree(outside))
