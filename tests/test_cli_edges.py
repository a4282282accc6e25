"""CLI edges (issue 11, item 5): wildcard and ambiguous episode prefixes, unreadable inputs,
non-finite limits, a damaged journal and a state-free doctor each give one clear line on
stderr and a non-zero exit code, never a traceback; nothing is undone by a bad prefix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from revex import Runtime


def cli(*args: str, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real `revex` entry point in a subprocess (80 columns: no terminal)."""
    base = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "REVEX_STATE_DIR")}
    return subprocess.run([sys.executable, "-m", "revex.cli", *args], capture_output=True,
                          text=True, env={**base, **(env or {})}, timeout=120, cwd=cwd)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str,
                          code: int = 2) -> None:
    err = proc.stderr.strip()
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    assert "\n" not in err and err.startswith(("error:", "broken")), err
    for needle in needles:
        assert needle in err, err


def _committed(state: Path, ws: Path, n: int = 1) -> list[str]:
    ids = []
    with Runtime(state_dir=state, audit=None) as rt:
        for i in range(n):
            with rt.episode(workspace=ws, on_exit="commit") as ep:
                ep.fs.write_text(f"f{i}.txt", "x")
            ids.append(ep.id)
    return ids


@pytest.mark.parametrize("prefix", ["", "%", "_", "ep-%", "*", " "])
def test_undo_refuses_empty_and_wildcard_prefixes_and_undoes_nothing(
        tmp_path: Path, prefix: str) -> None:
    state, ws = tmp_path / "state", tmp_path / "ws"
    _committed(state, ws)
    proc = cli("undo", prefix, "--state-dir", str(state))
    assert_one_line_error(proc, "not an episode id")
    assert (ws / "f0.txt").read_text() == "x"


def test_an_ambiguous_prefix_lists_the_candidates_and_undoes_nothing(tmp_path: Path) -> None:
    state, ws = tmp_path / "state", tmp_path / "ws"
    ids = _committed(state, ws, n=2)
    proc = cli("undo", "ep-", "--state-dir", str(state))
    assert_one_line_error(proc, "matches 2 episodes", *ids)
    assert (ws / "f0.txt").exists() and (ws / "f1.txt").exists()
    assert "undid 1 action" in cli("undo", ids[1], "--state-dir", str(state)).stdout


def test_show_with_a_60000_character_id(tmp_path: Path) -> None:
    state = tmp_path / "state"
    _committed(state, tmp_path / "ws")
    proc = cli("show", "e" * 60_000, "--state-dir", str(state))
    assert_one_line_error(proc, "not an episode id", "60000 chars")
    assert len(proc.stderr) < 400


def test_run_with_a_missing_file_or_a_directory(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    state = str(tmp_path / "state")
    proc = cli("run", str(tmp_path / "missing.py"), "--workspace", str(ws), "--state-dir", state)
    assert_one_line_error(proc, "missing.py", "does not exist")
    proc = cli("run", str(tmp_path), "--workspace", str(ws), "--state-dir", state)
    assert_one_line_error(proc, "is a directory")
    (tmp_path / "bin.py").write_bytes(b"\xff\xfe\x00garbage")
    proc = cli("run", str(tmp_path / "bin.py"), "--workspace", str(ws), "--state-dir", state)
    assert_one_line_error(proc, "not UTF-8")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_run_with_a_non_finite_wall_time(tmp_path: Path, value: str) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (tmp_path / "a.py").write_text("print(1)\n")
    proc = cli("run", str(tmp_path / "a.py"), "--workspace", str(ws), "--wall-s", value,
               "--state-dir", str(tmp_path / "state"))
    assert_one_line_error(proc, "--wall-s", value)
    assert os.listdir(ws) == []


def test_eval_humaneval_with_a_missing_samples_file(tmp_path: Path) -> None:
    proc = cli("eval", "humaneval", "--samples", str(tmp_path / "missing.jsonl"))
    assert_one_line_error(proc, "missing.jsonl", "does not exist")
    assert not (tmp_path / "missing_results.jsonl").exists()


def test_verify_on_a_journal_file_with_garbage_bytes(tmp_path: Path) -> None:
    state = tmp_path / "state"
    _committed(state, tmp_path / "ws", n=3)
    journal = state / "journal.db"
    assert not (state / "journal.db-wal").exists() or (state / "journal.db-wal").stat().st_size == 0
    size = journal.stat().st_size
    with open(journal, "r+b") as f:  # the last page (a records page) becomes garbage
        f.seek(size - 4096)
        f.write(bytes(range(256)) * 16)
    proc = cli("verify", "--state-dir", str(state))
    assert_one_line_error(proc, "broken", "malformed", code=1)


def test_verify_reports_damaged_pages_the_chain_does_not_read(tmp_path: Path) -> None:
    import sqlite3

    state = tmp_path / "state"
    _committed(state, tmp_path / "ws", n=3)
    journal = state / "journal.db"
    db = sqlite3.connect(journal)
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name='records_episode'"
                         ).fetchone()
    db.close()
    with open(journal, "r+b") as f:  # the episode index: the hash chain never reads it
        f.seek((root - 1) * page_size)
        f.write(bytes(range(256)) * (page_size // 256))
    proc = cli("verify", "--state-dir", str(state))
    assert_one_line_error(proc, "broken:", "damaged", code=1)


def test_doctor_without_a_state_dir_creates_no_state(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "XDG_STATE_HOME": "", "COLUMNS": "300"}
    proc = cli("doctor", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "no journal yet" in proc.stdout
    assert not (home / ".local" / "state" / "revex").exists()
    assert sorted(os.listdir(tmp_path)) == ["home"]
