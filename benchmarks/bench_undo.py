"""Benchmark the cost of reversibility for file actions.

(a) per-action overhead: median time of a journaled ``ep.fs.write_bytes`` of 100 bytes (a new
    file, and an overwrite of one existing file) and of a journaled ``ep.fs.read_bytes``,
    against a raw open/write/close and against one durable SQLite commit (a bare ``sqlite3``
    database in WAL mode with ``synchronous=FULL``, one INSERT and COMMIT, in the same temp
    directory), all interleaved in one loop so each saw the same load. Target: a journaled
    small write costs at most 1.5x the durable commit (issue 15, target 3).
(b) rollback of a fresh 10-action episode (10 new files), median of many episodes, against
    the same durable commit. Target: at most 1 ms (issue 15, target 4).
(c) rollback of episodes of 10, 100, 1,000 and 10,000 new-file writes, with the time per
    action (wall and CPU), and the file system's share: as many files unlinked directly in a
    directory of the same size. Target: linear, i.e. the CPU time per action at the largest
    size at most 1.5x its lowest at the smaller sizes (the wall time also holds the file
    system's waits, which on a shared disk vary several times between identical runs).

Prints a table and writes ``benchmarks/results/bench_undo.json``.
Usage: ``python benchmarks/bench_undo.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from revex import Runtime

RESULTS = Path(__file__).parent / "results" / "bench_undo.json"
PAYLOAD = b"x" * 100
WRITE_TARGET = 1.5  # journaled small write / one durable SQLite commit
ROLLBACK10_TARGET_MS = 1.0
LINEAR_TARGET = 1.5  # per action at the largest size / lowest per action below it


def _median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def verdict(value: float, target: float, unit: str = "x") -> str:
    return (f"{value:.2f}{unit} (target <= {target:g}{unit}) "
            f"{'MET' if value <= target else 'MISSED'}")


class DurableCommit:
    """The reference: one INSERT and COMMIT in a bare SQLite WAL database, synchronous=FULL."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")

    def __call__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute("INSERT INTO t (v) VALUES (?)", ("x" * 200,))
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()


def _timed(fn: Callable[..., object], *args: Any) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def bench_overhead(base: Path, n: int) -> dict[str, float]:
    """All cases in one loop, in a rotating order, so each sees the same load."""
    raw_dir = base / "raw"
    raw_dir.mkdir()
    commit = DurableCommit(base / "reference.db")
    rt = Runtime(base / "state", audit=None)
    samples: dict[str, list[float]] = {k: [] for k in (
        "raw_new", "raw_overwrite", "commit", "journaled_new", "journaled_overwrite",
        "journaled_read")}
    with rt.episode(base / "ws") as ep:
        ep.fs.write_bytes("same", PAYLOAD)
        (raw_dir / "same").write_bytes(PAYLOAD)

        def raw_new(i: int) -> None:
            with open(raw_dir / f"f{i}", "wb") as f:
                f.write(PAYLOAD)

        def raw_overwrite(i: int) -> None:
            with open(raw_dir / "same", "wb") as f:
                f.write(PAYLOAD)

        cases: list[tuple[str, Callable[[int], object]]] = [
            ("raw_new", raw_new),
            ("commit", lambda i: commit()),
            ("journaled_new", lambda i: ep.fs.write_bytes(f"f{i}", PAYLOAD)),
            ("raw_overwrite", raw_overwrite),
            ("journaled_overwrite", lambda i: ep.fs.write_bytes("same", PAYLOAD)),
            ("journaled_read", lambda i: ep.fs.read_bytes("same")),
        ]
        for i in range(n):
            shift = i % len(cases)
            for name, fn in cases[shift:] + cases[:shift]:
                samples[name].append(_timed(fn, i))
    rt.close()
    commit.close()
    out = {f"{name}_us": _median_us(s) for name, s in samples.items()}
    out["ratio_new_to_commit"] = out["journaled_new_us"] / out["commit_us"]
    out["ratio_overwrite_to_commit"] = out["journaled_overwrite_us"] / out["commit_us"]
    out["ratio_new_to_raw"] = out["journaled_new_us"] / out["raw_new_us"]
    out["ratio_overwrite_to_raw"] = out["journaled_overwrite_us"] / out["raw_overwrite_us"]
    return out


def bench_rollback10(base: Path, episodes: int) -> dict[str, float]:
    """Median rollback of fresh 10-action episodes, with a durable commit timed beside each."""
    rt = Runtime(base / "state-rb10", audit=None)
    commit = DurableCommit(base / "reference-rb10.db")
    rollbacks, commits = [], []
    for e in range(episodes):
        ws = base / "ws-rb10" / str(e)
        with rt.episode(ws) as ep:
            for i in range(10):
                ep.fs.write_bytes(f"f{i}", PAYLOAD)
            commits.append(_timed(commit))
            t = time.perf_counter()
            undone = ep.rollback()
            rollbacks.append(time.perf_counter() - t)
        assert undone == 10 and not os.listdir(ws), (undone, os.listdir(ws))
    rt.close()
    commit.close()
    return {"episodes": episodes, "rollback10_us": _median_us(rollbacks),
            "commit_us": _median_us(commits)}


def bench_rollback(base: Path, sizes: list[int]) -> list[dict[str, float]]:
    """Rollback of N new files, and beside it the file system's own share: unlinking N files
    made the same way in a directory of the same size (newest first, as a rollback does)."""
    rows = []
    rt = Runtime(base / "state-rb", audit=None)
    for n in sizes:
        raw = base / f"raw-{n}"
        raw.mkdir()
        for i in range(n):
            (raw / f"f{i}").write_bytes(PAYLOAD)
        t = time.perf_counter()
        for i in reversed(range(n)):
            os.unlink(raw / f"f{i}")
        unlink = time.perf_counter() - t
        ws = base / f"ws-{n}"
        with rt.episode(ws) as ep:
            for i in range(n):
                ep.fs.write_bytes(f"f{i}", PAYLOAD)
            t, cpu = time.perf_counter(), time.process_time()
            undone = ep.rollback()
            elapsed, cpu = time.perf_counter() - t, time.process_time() - cpu
        assert undone == n and not os.listdir(ws), (undone, n)
        rows.append({"actions": n, "rollback_s": elapsed, "per_action_us": elapsed / n * 1e6,
                     "cpu_per_action_us": cpu / n * 1e6,
                     "raw_unlink_per_file_us": unlink / n * 1e6})
    rt.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer samples, rollback sizes to 1,000")
    args = parser.parse_args()
    sizes = [10, 100, 1000] if args.quick else [10, 100, 1000, 10000]
    base = Path(tempfile.mkdtemp(prefix="revex-bench-"))
    load_before = os.getloadavg()
    try:
        overhead = bench_overhead(base, 100 if args.quick else 500)
        rollback10 = bench_rollback10(base, 20 if args.quick else 100)
        rollback = bench_rollback(base, sizes)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    # linear: revex's own work per action, its CPU time (the wall time also holds the file
    # system's waits, which on a shared disk vary several times between identical runs)
    per_action = [row["cpu_per_action_us"] for row in rollback]
    growth = per_action[-1] / min(per_action[:-1])
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cpus, "
                   f"Python {platform.python_version()}",
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "overhead": overhead,
        "rollback10": rollback10,
        "rollback": rollback,
        "rollback_growth": growth,
        "targets": {
            "write_new": verdict(overhead["ratio_new_to_commit"], WRITE_TARGET),
            "write_overwrite": verdict(overhead["ratio_overwrite_to_commit"], WRITE_TARGET),
            "rollback10": verdict(rollback10["rollback10_us"] / 1000, ROLLBACK10_TARGET_MS,
                                  " ms"),
            "rollback_linear": verdict(growth, LINEAR_TARGET),
        },
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")

    o, t = overhead, result["targets"]
    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")
    print("per-action overhead (median, 100 bytes), all cases interleaved")
    print(f"  {'':24} {'median':>10}  vs durable commit")
    print(f"  {'raw write, new file':24} {o['raw_new_us']:>8.1f}us")
    print(f"  {'raw write, overwrite':24} {o['raw_overwrite_us']:>8.1f}us")
    print(f"  {'durable SQLite commit':24} {o['commit_us']:>8.1f}us")
    print(f"  {'journaled new file':24} {o['journaled_new_us']:>8.1f}us  {t['write_new']}")
    print(f"  {'journaled overwrite':24} {o['journaled_overwrite_us']:>8.1f}us  "
          f"{t['write_overwrite']}")
    print(f"  {'journaled read':24} {o['journaled_read_us']:>8.1f}us")
    r10 = rollback10
    print(f"rollback of a 10-action episode (median of {r10['episodes']}): "
          f"{r10['rollback10_us']:.1f}us (durable commit beside it: {r10['commit_us']:.1f}us)"
          f"  {t['rollback10']}")
    print("rollback of N new files (raw unlink: the same number of files unlinked directly)")
    print(f"  {'actions':>8} {'total':>10} {'per action':>12} {'CPU/action':>12} "
          f"{'raw unlink':>12}")
    for row in rollback:
        print(f"  {row['actions']:>8} {row['rollback_s']:>9.3f}s "
              f"{row['per_action_us']:>10.1f}us {row['cpu_per_action_us']:>10.1f}us "
              f"{row['raw_unlink_per_file_us']:>10.1f}us")
    print(f"  growth of CPU per action (at {rollback[-1]['actions']} / lowest below it): "
          f"{t['rollback_linear']}")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
