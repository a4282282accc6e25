"""Crash safety: kill -9 a process in the middle of a durable episode (or of its rollback),
reopen the Runtime (recovery runs on open) and the database is exactly as before."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sql_cases import create_schema

from revex.runtime.effects.sql_dump import canonical_dump
from revex.runtime.runtime import Runtime

CHILD = r'''
import sys
from revex.runtime.runtime import Runtime
state, ws, url, phase, mode = sys.argv[1:6]
rt = Runtime(state, policy="permissive", audit=None)
ep = rt.episode(workspace=ws, databases={"app": url}, sql_mode=mode)
db = ep.sql("app")
for i in range(1000 if phase == "forward" else 12):
    db.execute("UPDATE parent SET score = score + 1 WHERE id = :i", {"i": 1 + i % 3})
    db.execute("INSERT INTO nopk VALUES (:a, 'crash')", {"a": i})
    db.execute("DELETE FROM child WHERE id = :i", {"i": 10 + i % 3})
    if i % 4 == 0:
        db.script(f"CREATE TABLE t{i} (id INT PRIMARY KEY); INSERT INTO t{i} VALUES (1)")
    if i == 2:
        print("STARTED", flush=True)
print("ROLLBACK", flush=True)
ep.rollback()
print("DONE", flush=True)
'''


def _crash_once(url: str, tmp: Path, phase: str, mode: str, rng: random.Random) -> None:
    state, ws = tmp / f"state-{phase}-{mode}", tmp / "ws"
    script = tmp / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    errors = tmp / "child.err"
    with errors.open("w") as err, subprocess.Popen(
            [sys.executable, str(script), str(state), str(ws), url, phase, mode],
            stdout=subprocess.PIPE, stderr=err, text=True, env=env) as proc:
        assert proc.stdout is not None
        wait_for = "STARTED" if phase == "forward" else "ROLLBACK"
        for line in proc.stdout:
            if line.strip() == wait_for:
                break
        else:
            pytest.fail(f"child ended early: {errors.read_text()}")
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with Runtime(state, policy="permissive", audit=None) as rt:  # recovery runs here
        statuses = {e.status for e in rt.episodes()}
        assert statuses <= {"recovered", "rolled_back", "active"}, statuses


def _run(db_url: str, tmp_path: Path, iterations: int, seed: int, mode: str) -> None:
    create_schema(db_url)
    before = canonical_dump(db_url)
    rng = random.Random(seed)
    for i in range(iterations):
        phase = "forward" if i % 2 == 0 else "rollback"
        _crash_once(db_url, tmp_path, phase, mode, rng)
        after = canonical_dump(db_url)
        assert after == before, f"iteration {i} ({phase}, {mode}): {_diff(before, after)}"


def _diff(before: dict, after: dict) -> str:
    lines = []
    for part in sorted({*before, *after}):
        b, a = before.get(part), after.get(part)
        if isinstance(b, dict) and isinstance(a, dict):
            for key in sorted({*b, *a}):
                if b.get(key) != a.get(key):
                    lines.append(f"{part}.{key}: {b.get(key)!r} -> {a.get(key)!r}")
        elif b != a:
            lines.append(f"{part}: {b!r} -> {a!r}")
    return "; ".join(lines)[:3000]


@pytest.mark.parametrize("mode", ["durable", "transactional"])
def test_kill_9_during_episode_and_rollback_recovers_exactly(db_url: str, tmp_path: Path,
                                                             mode: str) -> None:
    (tmp_path / "ws").mkdir()
    _run(db_url, tmp_path, iterations=2, seed=1, mode=mode)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["durable", "transactional"])
def test_kill_9_many_times(db_url: str, tmp_path: Path, mode: str) -> None:
    (tmp_path / "ws").mkdir()
    _run(db_url, tmp_path, iterations=20, seed=2, mode=mode)
