from __future__ import annotations

import json
from pathlib import Path

import pytest

from revex import (
    ActionFailed,
    ConfigError,
    EpisodeClosed,
    Policy,
    PolicyViolation,
    Runtime,
    StateError,
)
from revex.runtime.journal import Status


@pytest.fixture
def rt(tmp_path: Path) -> Runtime:
    runtime = Runtime(state_dir=tmp_path / "state", audit=tmp_path / "audit.jsonl")
    yield runtime
    runtime.close()


def test_rollback_on_exit_removes_everything_the_episode_created(rt: Runtime, tmp_path: Path
                                                                 ) -> None:
    ws = tmp_path / "ws"
    with rt.episode(workspace=ws) as ep:
        ep.fs.mkdir("a/b", parents=True)
        ep.fs.write_text("a/b/c.txt", "x")
        assert (ws / "a/b/c.txt").read_text() == "x"
    assert list(ws.iterdir()) == []
    assert ep.status == "rolled_back"


def test_commit_keeps_effects_and_undo_reverts_them_later(rt: Runtime, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "f.txt").write_text("before")
    with rt.episode(workspace=ws, on_exit="commit") as ep:
        ep.fs.write_text("f.txt", "after")
    assert (ws / "f.txt").read_text() == "after"
    assert rt.undo(ep.id) == 1
    assert (ws / "f.txt").read_text() == "before"
    assert rt.journal.episode(ep.id)["status"] == "undone"


def test_an_exception_rolls_back_unless_on_error_keep(rt: Runtime, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    with pytest.raises(RuntimeError), rt.episode(workspace=ws, on_exit="commit") as ep:
        ep.fs.write_text("a.txt", "x")
        raise RuntimeError("agent crashed")
    assert not (ws / "a.txt").exists()
    with pytest.raises(RuntimeError), rt.episode(workspace=ws, on_error="keep") as ep:
        ep.fs.write_text("b.txt", "x")
        raise RuntimeError("agent crashed")
    assert (ws / "b.txt").exists() and ep.status == "committed"


def test_checkpoint_rollback_keeps_earlier_actions_and_the_episode_open(
        rt: Runtime, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    with rt.episode(workspace=ws) as ep:
        ep.fs.write_text("one.txt", "1")
        cp = ep.checkpoint("after one")
        ep.fs.write_text("two.txt", "2")
        ep.fs.write_text("one.txt", "changed")
        assert ep.rollback(to=cp) == 2
        assert sorted(p.name for p in ws.iterdir()) == ["one.txt"]
        assert (ws / "one.txt").read_text() == "1"
        ep.fs.write_text("three.txt", "3")
    assert list(ws.iterdir()) == []


def test_a_closed_episode_refuses_actions(rt: Runtime, tmp_path: Path) -> None:
    with rt.episode(workspace=tmp_path / "ws", on_exit="commit") as ep:
        pass
    with pytest.raises(EpisodeClosed):
        ep.fs.write_text("x", "y")


def test_policy_denial_is_journaled_with_its_rule(tmp_path: Path) -> None:
    rt = Runtime(state_dir=tmp_path / "state", policy="strict", audit=None)
    with rt.episode(workspace=tmp_path / "ws") as ep:
        ep.fs.mkdir("out")
        ep.fs.write_text("out/report.txt", "ok")
        with pytest.raises(PolicyViolation) as info:
            ep.fs.write_text("src.py", "nope")
        assert info.value.rule == "strict:default"
    denied = [r for r in rt.journal.records(ep.id) if r.status is Status.DENIED]
    assert [(r.kind, r.target, r.rule) for r in denied] == [
        ("fs.write", "src.py", "strict:default")]


def test_quotas_refuse_the_action_that_would_exceed_them(tmp_path: Path) -> None:
    policy = Policy.from_toml('[policy]\nname="q"\ndefault="allow"\n[quotas]\n'
                              'bytes_written=10\n')
    rt = Runtime(state_dir=tmp_path / "state", policy=policy, audit=None)
    with rt.episode(workspace=tmp_path / "ws") as ep:
        ep.fs.write_text("a", "12345")
        with pytest.raises(PolicyViolation, match="bytes_written: 11 > 10"):
            ep.fs.write_text("b", "123456")
        ep.fs.write_text("c", "12345")


def test_approval_rules_ask_the_approver(tmp_path: Path) -> None:
    policy = Policy.from_toml('[policy]\nname="a"\ndefault="allow"\n[[rules]]\nname="ask"\n'
                              'kind="fs.delete"\ndecision="approve"\n')
    asked = []

    def approver(request):  # a callback a human would answer
        asked.append((request.kind, request.target, request.rule))
        return request.target == "ok.txt"

    rt = Runtime(state_dir=tmp_path / "state", policy=policy, audit=None, approver=approver)
    with rt.episode(workspace=tmp_path / "ws") as ep:
        ep.fs.write_text("ok.txt", "x")
        ep.fs.write_text("no.txt", "x")
        ep.fs.delete("ok.txt")
        with pytest.raises(PolicyViolation, match="approver refused"):
            ep.fs.delete("no.txt")
    assert asked == [("fs.delete", "ok.txt", "ask"), ("fs.delete", "no.txt", "ask")]
    rt2 = Runtime(state_dir=tmp_path / "state2", policy=policy, audit=None)
    with rt2.episode(workspace=tmp_path / "ws2") as ep, pytest.raises(
            PolicyViolation, match="no approver is configured"):
        ep.fs.write_text("x", "1")
        ep.fs.delete("x")


def test_a_failed_effect_is_journaled_failed_and_leaves_nothing(rt: Runtime, tmp_path: Path
                                                                ) -> None:
    ws = tmp_path / "ws"
    with rt.episode(workspace=ws) as ep:
        ep.fs.mkdir("d")
        with pytest.raises(ActionFailed):
            ep.fs.write_text("d", "a directory is in the way")
        with pytest.raises(ActionFailed):
            ep.fs.delete("missing.txt")
        statuses = [r.status for r in rt.journal.records(ep.id) if r.kind != "episode.begin"]
    assert Status.FAILED in statuses


def test_every_journal_record_is_one_audit_event(rt: Runtime, tmp_path: Path) -> None:
    with rt.episode(workspace=tmp_path / "ws") as ep:
        ep.fs.write_text("a.txt", "x")
    events = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    records = rt.journal.records(ep.id)
    assert [e["seq"] for e in events] == [r.seq for r in records]
    assert {e["event"] for e in events} == {"journal.record"}


def test_workspace_and_state_dir_must_not_overlap(tmp_path: Path) -> None:
    rt = Runtime(state_dir=tmp_path / "ws" / ".state", audit=None)
    with pytest.raises(StateError, match="overlap"):
        rt.episode(workspace=tmp_path / "ws")


def test_bad_episode_arguments_are_clear(rt: Runtime, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="on_exit"):
        rt.episode(workspace=tmp_path / "ws", on_exit="keep")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown episode option"):
        rt.episode(workspace=tmp_path / "ws", colour="red")
    with pytest.raises(ConfigError, match="no episode"):
        rt.undo("ep-missing")
