"""Journaled HTTP request overhead vs a plain httpx request to the same local server.

Starts the test REST app (uvicorn, loopback) and times, in the same run, per operation:
a plain ``httpx.Client`` request, and the same request through ``ep.http`` (policy check,
pre-image GET, journal INTENT/DONE with fsync, post-image GET). Also times the rollback of the
journaled requests. Prints a table; writes ``benchmarks/results/bench_http.json``.

    PYTHONPATH=. python benchmarks/bench_http.py [--n 200]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from revex.runtime.runtime import Runtime
from revex.testing.rest_app import create_app, serve

RESULTS = Path(__file__).parent / "results" / "bench_http.json"


def timed(fn: Callable[[int], Any], n: int) -> list[float]:
    out = []
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - start) * 1000)
    return out


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"median_ms": statistics.median(ordered),
            "p90_ms": ordered[int(len(ordered) * 0.9) - 1]}


def run(n: int) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    with serve(create_app()) as base, tempfile.TemporaryDirectory() as tmp:
        plain = httpx.Client()
        # plain and journaled requests touch disjoint items: a plain write to an item the
        # episode wrote would be drift, and rollback would rightly refuse
        for i in range(2 * n):
            plain.post(f"{base}/items", json={"name": f"seed{i}"})
        ops: dict[str, Callable[[httpx.Client, int], Callable[[int], Any]]] = {
            "GET item": lambda c, o: lambda i: c.get(f"{base}/items/{o + i + 1}"),
            "PUT item": lambda c, o: lambda i: c.put(f"{base}/items/{o + i + 1}", json={"v": i}),
            "PATCH item": lambda c, o: lambda i: c.patch(f"{base}/items/{o + i + 1}",
                                                         json={"w": i}),
            "POST item": lambda c, o: lambda i: c.post(f"{base}/things{o}", json={"v": i}),
        }
        rt = Runtime(Path(tmp) / "state", policy="permissive", audit=None)
        with rt.episode(Path(tmp) / "ws") as ep:
            for name, make in ops.items():
                base_ms = summary(timed(make(plain, 0), n))
                ep_ms = summary(timed(make(ep.http, n), n))
                rows[name] = {"plain": base_ms, "journaled": ep_ms,
                              "overhead_ms": ep_ms["median_ms"] - base_ms["median_ms"],
                              "ratio": ep_ms["median_ms"] / base_ms["median_ms"]}
            actions = 3 * n  # PUT, PATCH, POST are undoable
            start = time.perf_counter()
            ep.rollback()
            rows["rollback per action"] = {
                "journaled": {"median_ms": (time.perf_counter() - start) * 1000 / actions}}
        rt.close()
        plain.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="requests per operation")
    args = parser.parse_args()
    rows = run(args.n)
    print(f"{'operation':<22}{'plain ms':>10}{'revex ms':>10}{'overhead':>10}{'ratio':>8}")
    for name, row in rows.items():
        if "plain" in row:
            print(f"{name:<22}{row['plain']['median_ms']:>10.2f}"
                  f"{row['journaled']['median_ms']:>10.2f}{row['overhead_ms']:>10.2f}"
                  f"{row['ratio']:>8.1f}")
        else:
            print(f"{name:<22}{'':>10}{row['journaled']['median_ms']:>10.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"n": args.n, "python": platform.python_version(),
                                   "machine": platform.machine(), "median_of": "n requests",
                                   "rows": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
