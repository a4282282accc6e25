"""Code run by an episode: its change set becomes journaled file actions, undone exactly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from revex import ConfigError, Limits, Policy, PolicyViolation, Runtime
from revex.demo import tree_digest
from revex.runtime.journal import Status


@pytest.fixture
def base(tmp_path: Path) -> Path:
    os.chmod(tmp_path, 0o755)  # the sandbox user must be able to traverse to the workspace
    return tmp_path


@pytest.fixture
def rt(base: Path) -> Runtime:
    runtime = Runtime(state_dir=base / "state", audit=None)
    yield runtime
    runtime.close()


def _seed(ws: Path) -> None:
    ws.mkdir()
    (ws / "keep.txt").write_text("keep")
    (ws / "gone.txt").write_text("will be deleted")
    (ws / "dir").mkdir()
    (ws / "dir" / "inner.txt").write_text("inner")
    os.chmod(ws / "keep.txt", 0o640)


EDIT = """
import os, shutil
open("keep.txt", "a").write(" more")
os.remove("gone.txt")
os.makedirs("new/deeper")
open("new/deeper/file.bin", "wb").write(bytes(range(256)) * 100)
os.chmod("keep.txt", 0o600)
shutil.rmtree("dir")
os.mkdir("dir")
open("dir/other.txt", "w").write("replaced")
os.symlink("keep.txt", "link")
"""


def test_sandbox_changes_are_journaled_file_actions_and_rollback_is_exact(
        rt: Runtime, base: Path) -> None:
    ws = base / "ws"
    _seed(ws)
    before = tree_digest(ws)
    with rt.episode(workspace=ws) as ep:
        result = ep.run(code=EDIT, limits=Limits(wall_s=10))
        assert result.status == "ok", result.stderr
        assert result.changes_applied is True
        assert (ws / "keep.txt").read_text() == "keep more"
        assert not (ws / "gone.txt").exists()
        assert (ws / "new/deeper/file.bin").read_bytes() == bytes(range(256)) * 100
        assert os.readlink(ws / "link") == "keep.txt"
        assert sorted(os.listdir(ws / "dir")) == ["other.txt"]
        records = rt.journal.records(ep.id)
        sourced = [r for r in records if r.status is Status.INTENT
                   and r.params.get("source", "").startswith("exec#")]
        assert {r.kind for r in sourced} >= {"fs.write", "fs.delete", "fs.mkdir", "fs.symlink"}
        run = [r for r in records if r.kind == "exec.run"]
        assert run[0].status is Status.DONE and run[0].result["status"] == "ok"
    assert tree_digest(ws) == before


def test_a_refused_change_set_is_discarded_whole_and_journaled(rt: Runtime, base: Path) -> None:
    ws = base / "ws"
    _seed(ws)
    before = tree_digest(ws)
    with rt.episode(workspace=ws) as ep:
        result = ep.run(code="import os\nopen('fine.txt','w').write('x')\n"
                             "os.symlink('/etc/passwd', 'evil')\n")
        assert result.changes_applied is False
        assert any("evil" in line for line in result.changes_refused)
        assert tree_digest(ws) == before  # fine.txt was not applied either
        denied = [r for r in rt.journal.records(ep.id) if r.status is Status.DENIED]
        assert [(r.kind, r.target, r.rule) for r in denied] == [
            ("fs.symlink", "evil", "path-safety")]


def test_policy_path_rules_apply_to_sandbox_changes(base: Path) -> None:
    policy = Policy.from_toml("""
[policy]
name = "no-config"
default = "allow"
[[rules]]
name = "protect-config"
kind = "fs.*"
path = "config/**"
decision = "deny"
""")
    ws = base / "ws"
    ws.mkdir()
    (ws / "config").mkdir()
    with Runtime(state_dir=base / "state", policy=policy, audit=None) as rt, rt.episode(
            workspace=ws) as ep:
        result = ep.run(code="open('config/app.toml','w').write('debug=true')\n")
        assert result.changes_applied is False
        assert result.changes_refused and "protect-config" in result.changes_refused[0]
        assert not (ws / "config" / "app.toml").exists()


def test_apply_changes_false_discards_them(rt: Runtime, base: Path) -> None:
    ws = base / "ws"
    _seed(ws)
    with rt.episode(workspace=ws, on_exit="commit") as ep:
        result = ep.run(code="open('x.txt','w').write('x')", apply_changes=False)
        assert [c.path for c in result.changes] == ["x.txt"]
        assert result.changes_applied is False
    assert not (ws / "x.txt").exists()


def test_network_needs_a_rule_and_denials_are_journaled(rt: Runtime, base: Path) -> None:
    with rt.episode(workspace=base / "ws") as ep:
        with pytest.raises(PolicyViolation):
            ep.run(code="print(1)", network=True)
        denied = [r for r in rt.journal.records(ep.id) if r.status is Status.DENIED]
        assert denied[0].kind == "exec.run" and denied[0].params["network"] is True


def test_run_tests_in_an_episode_is_journaled_with_its_verdict(rt: Runtime, base: Path) -> None:
    with rt.episode(workspace=base / "ws") as ep:
        report = ep.run_tests("def inc(x):\n    return x + 1\n",
                              "assert inc(1) == 2\nassert inc(5) == 7\n", "inc")
        assert (report.passed, report.total) == (1, 2)
        rec = next(r for r in rt.journal.records(ep.id) if r.kind == "exec.tests")
        assert rec.result["passed"] == 1 and rec.result["total"] == 2


def test_one_off_runs_and_tests_outside_an_episode(rt: Runtime) -> None:
    result = rt.run(code="import sys; print(sys.stdin.read().upper())", stdin="abc")
    assert result.status == "ok" and result.stdout.strip() == "ABC"
    bash = rt.run(code="echo $((6 * 7))", language="bash")
    assert bash.stdout.strip() == "42"
    report = rt.run_tests("def f():\n    return 3\n", "def check(candidate):\n"
                          "    assert candidate() == 3\n", "f")
    assert report.pass_rate == 1.0
    reports = rt.run_tests_many(["def f():\n    return 3\n", "def f():\n    return 4\n"],
                                "assert f() == 3\n", "f", concurrency=2)
    assert [r.passed for r in reports] == [1, 0]


def test_malformed_run_requests_are_clear(rt: Runtime) -> None:
    with pytest.raises(ConfigError, match="exactly one of code"):
        rt.run(code="print(1)", argv=["python3"])
    with pytest.raises(ConfigError, match="unknown language"):
        rt.run(code="puts 1", language="ruby")
    with pytest.raises(ConfigError, match="argv must be"):
        rt.run(argv="python3 -c 1")  # type: ignore[arg-type]
