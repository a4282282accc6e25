"""Requests per second and p50/p99 latency of ``POST /run_code`` at concurrency 1, 8 and 32.

Two workloads, each the way verl sends them (one request per test case):
- ``trivial``: ``print(1)``;
- ``10-case``: a stdin/stdout problem (read two ints, print their sum) judged over 10 cases, so
  one problem is 10 requests; the figure is problems per second.

Servers, each on loopback in its own process-free uvicorn thread, hit by one asyncio httpx client
in this process:
- ``revex``: ``revex serve``'s app (warm nsjail sandboxes, the default backend);
- ``plain``: a FastAPI endpoint with the same request/response shape that runs
  ``subprocess.run([python, "-c", code])`` with no isolation at all (the reference the issue
  names when SandboxFusion's server cannot run here: the ``sandbox-fusion`` package on PyPI is
  only its client SDK, and its server needs Docker images).

Prints a table and writes benchmarks/results/bench_service.json.
Run: ``PYTHONPATH=. python benchmarks/bench_service.py [--n 400]``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from revex import Runtime
from revex.service import ServiceConfig, create_app
from revex.testing.rest_app import serve

CONCURRENCY = (1, 8, 32)
SUM = "a, b = map(int, input().split())\nprint(a + b)\n"
CASES = [(f"{i} {i * 3}\n", f"{i * 4}\n") for i in range(10)]


def plain_app() -> FastAPI:
    """The unisolated reference: SandboxFusion's shape, a bare subprocess."""
    app = FastAPI()

    @app.post("/run_code")
    def run_code(body: dict[str, Any]) -> dict[str, Any]:
        start = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-c", body["code"]],
                                  input=(body.get("stdin") or "").encode(), capture_output=True,
                                  timeout=float(body.get("run_timeout", 10)))
        except subprocess.TimeoutExpired:
            return {"status": "Failed", "run_result": {"status": "TimeLimitExceeded"}}
        return {"status": "Success" if proc.returncode == 0 else "Failed", "message": "",
                "run_result": {"status": "Finished", "return_code": proc.returncode,
                               "execution_time": time.perf_counter() - start,
                               "stdout": proc.stdout.decode(), "stderr": proc.stderr.decode()}}

    return app


async def load(base: str, workload: str, n: int, concurrency: int) -> dict[str, float]:
    """``n`` units (requests, or 10-case problems) at ``concurrency``; per-unit latency."""
    latencies: list[float] = []
    failures = 0

    async with httpx.AsyncClient(base_url=base, timeout=120,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        async def unit() -> None:
            nonlocal failures
            start = time.perf_counter()
            if workload == "trivial":
                r = await client.post("/run_code", json={"code": "print(1)",
                                                         "language": "python"})
                failures += r.json()["status"] != "Success"
            else:
                for stdin, expected in CASES:
                    r = await client.post("/run_code", json={"code": SUM, "language": "python",
                                                             "stdin": stdin})
                    out = r.json()
                    failures += (out["status"] != "Success"
                                 or out["run_result"]["stdout"] != expected)
            latencies.append(time.perf_counter() - start)

        queue = list(range(n))

        async def worker() -> None:
            while queue:
                queue.pop()
                await unit()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    latencies.sort()
    return {"per_s": n / wall, "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
            "failures": failures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="units per cell (trivial requests)")
    args = parser.parse_args()
    results: dict[str, Any] = {"n": args.n, "cpus": os.cpu_count(), "rows": []}
    state = tempfile.mkdtemp(prefix="revex-bench-service-")
    with Runtime(state_dir=state, policy="training", audit=None) as rt:
        revex_app = create_app(rt, ServiceConfig(max_concurrency=32), log_stream=io.StringIO())
        with serve(revex_app) as revex_base, serve(plain_app()) as plain_base:
            for base in (revex_base, plain_base):  # warm both up (pool start, imports)
                asyncio.run(load(base, "trivial", 16, 8))
            for workload in ("trivial", "10-case"):
                n = args.n if workload == "trivial" else max(8, args.n // 10)
                for c in CONCURRENCY:
                    row: dict[str, Any] = {"workload": workload, "concurrency": c}
                    for name, base in (("revex", revex_base), ("plain", plain_base)):
                        row[name] = asyncio.run(load(base, workload, n, c))
                    row["ratio"] = row["revex"]["per_s"] / row["plain"]["per_s"]
                    results["rows"].append(row)
    unit = {"trivial": "req/s", "10-case": "problems/s"}
    print(f"{'workload':<9} {'c':>3} | {'revex /s':>9} {'p50 ms':>8} {'p99 ms':>8} | "
          f"{'plain /s':>9} {'p50 ms':>8} {'p99 ms':>8} | revex/plain (target >= 1.0 at c=32)")
    for row in results["rows"]:
        r, p = row["revex"], row["plain"]
        print(f"{row['workload']:<9} {row['concurrency']:>3} | {r['per_s']:>9.1f} "
              f"{r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} | {p['per_s']:>9.1f} {p['p50_ms']:>8.1f} "
              f"{p['p99_ms']:>8.1f} | {row['ratio']:.2f}x  ({unit[row['workload']]}; "
              f"failures {r['failures']}/{p['failures']})")
    out = Path(__file__).parent / "results" / "bench_service.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
