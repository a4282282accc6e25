"""Benchmark the cost of reversibility for file actions.

(a) per-action overhead: median time of a journaled ``ep.fs.write_bytes`` of 100 bytes (new
    files, and overwrites of one existing file) against a raw open/write/close;
(b) rollback time of episodes with 10, 100, 1,000 and 10,000 small-file writes, with the time
    per action so that linear growth is visible.

Prints a table and writes ``benchmarks/results/bench_undo.json``.
Usage: ``python benchmarks/bench_undo.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from revex import Runtime

RESULTS = Path(__file__).parent / "results" / "bench_undo.json"
PAYLOAD = b"x" * 100


def _median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def bench_overhead(base: Path, n: int) -> dict[str, float]:
    raw_dir = base / "raw"
    raw_dir.mkdir()
    raw_new, raw_over = [], []
    for i in range(n):
        t = time.perf_counter()
        with open(raw_dir / f"f{i}", "wb") as f:
            f.write(PAYLOAD)
        raw_new.append(time.perf_counter() - t)
    for _ in range(n):
        t = time.perf_counter()
        with open(raw_dir / "same", "wb") as f:
            f.write(PAYLOAD)
        raw_over.append(time.perf_counter() - t)

    rt = Runtime(base / "state", audit=None)
    new, over = [], []
    with rt.episode(base / "ws") as ep:
        for i in range(n):
            t = time.perf_counter()
            ep.fs.write_bytes(f"f{i}", PAYLOAD)
            new.append(time.perf_counter() - t)
        ep.fs.write_bytes("same", PAYLOAD)
        for _ in range(n):
            t = time.perf_counter()
            ep.fs.write_bytes("same", PAYLOAD)
            over.append(time.perf_counter() - t)
    rt.close()
    out = {
        "raw_new_us": _median_us(raw_new),
        "journaled_new_us": _median_us(new),
        "raw_overwrite_us": _median_us(raw_over),
        "journaled_overwrite_us": _median_us(over),
    }
    out["ratio_new"] = out["journaled_new_us"] / out["raw_new_us"]
    out["ratio_overwrite"] = out["journaled_overwrite_us"] / out["raw_overwrite_us"]
    return out


def bench_rollback(base: Path, sizes: list[int]) -> list[dict[str, float]]:
    rows = []
    rt = Runtime(base / "state-rb", audit=None)
    for n in sizes:
        ws = base / f"ws-{n}"
        with rt.episode(ws) as ep:
            # a mix over at most 1,000 names: new files, then overwrites of them
            for i in range(n):
                ep.fs.write_bytes(f"f{i % 1000}", PAYLOAD + str(i).encode())
            t = time.perf_counter()
            undone = ep.rollback()
            elapsed = time.perf_counter() - t
        assert undone == n and not os.listdir(ws), (undone, n)
        rows.append({"actions": n, "rollback_s": elapsed, "per_action_us": elapsed / n * 1e6})
    rt.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, sizes to 1,000")
    args = parser.parse_args()
    sizes = [10, 100, 1000] if args.quick else [10, 100, 1000, 10000]
    base = Path(tempfile.mkdtemp(prefix="revex-bench-"))
    try:
        overhead = bench_overhead(base, 200 if args.quick else 1000)
        rollback = bench_rollback(base, sizes)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cpus, "
                   f"Python {platform.python_version()}",
        "overhead": overhead,
        "rollback": rollback,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")

    o = overhead
    print("per-action overhead (median, 100-byte write)")
    print(f"  {'':12} {'raw':>10} {'journaled':>12} {'ratio':>8}")
    print(f"  {'new file':12} {o['raw_new_us']:>8.1f}us {o['journaled_new_us']:>10.1f}us "
          f"{o['ratio_new']:>7.1f}x")
    print(f"  {'overwrite':12} {o['raw_overwrite_us']:>8.1f}us "
          f"{o['journaled_overwrite_us']:>10.1f}us {o['ratio_overwrite']:>7.1f}x")
    print("rollback")
    print(f"  {'actions':>8} {'total':>10} {'per action':>12}")
    for row in rollback:
        print(f"  {row['actions']:>8} {row['rollback_s']:>9.3f}s "
              f"{row['per_action_us']:>10.1f}us")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
