"""Scale-out overhead: the Ray pool vs the local pool, and docker vs nsjail latency.

* Throughput of trivial Python runs (``print(1)``) through ``run_many`` on the local pool
  (threads over nsjail) and on a Ray pool (2 actors x 2 runs each, nsjail inside each actor) on
  this machine: the difference is what going through Ray costs (actor calls, the JSON wire
  format, the object store). Ray's start-up and the actors' first run are excluded (warm-up).
* Latency of one trivial Python run and of one HumanEval problem (its canonical solution and
  tests) on nsjail (cold), the warm nsjail path, and the docker backend when an engine answers.

Prints a table and writes benchmarks/results/bench_scale.json.
Run: ``PYTHONPATH=. python benchmarks/bench_scale.py`` (about a minute; needs ``ray``, and an
engine from ``scripts/revex-podman.sh`` for the docker rows).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Any

from revex.errors import SandboxError
from revex.runtime.pool import LocalPool
from revex.runtime.sandbox import run_many
from revex.runtime.sandbox.base import ExecSpec, Limits, SandboxBackend, make_spec
from revex.runtime.sandbox.humaneval import humaneval_problems
from revex.runtime.sandbox.nsjail import NsjailBackend
from revex.runtime.sandbox.warm import WarmPythonBackend

N_THROUGHPUT = 40
N_LATENCY = 8
TRIVIAL = make_spec("print(1)", limits=Limits(wall_s=30))


def throughput(pool: Any, n: int) -> dict[str, float]:
    specs = [TRIVIAL] * n
    run_many(specs[:4], pool=pool)  # warm-up: actors started, backends probed
    t = time.perf_counter()
    results = run_many(specs, pool=pool)
    wall = time.perf_counter() - t
    assert all(r.ok for r in results), [r.status for r in results if not r.ok]
    return {"runs": n, "wall_s": round(wall, 3), "runs_per_s": round(n / wall, 2)}


def humaneval_spec() -> ExecSpec:
    problem = humaneval_problems()["HumanEval/0"]
    code = (problem["prompt"] + problem["canonical_solution"] + "\n" + problem["test"]
            + f"\ncheck({problem['entry_point']})\n")
    return make_spec(code, limits=Limits(wall_s=30))


def latency(backend: SandboxBackend, spec: ExecSpec, n: int) -> dict[str, float]:
    backend.run(spec)  # warm-up
    lat = []
    for _ in range(n):
        t = time.perf_counter()
        r = backend.run(spec)
        lat.append(time.perf_counter() - t)
        assert r.ok, (r.status, r.stderr[-300:])
    return {"median_ms": round(statistics.median(lat) * 1000, 1),
            "max_ms": round(max(lat) * 1000, 1)}


def main() -> None:
    out: dict[str, Any] = {"cpus": os.cpu_count(), "throughput": {}, "latency": {}}
    nsjail = NsjailBackend()
    out["throughput"]["local pool (4 threads, nsjail)"] = throughput(
        _Concurrency(LocalPool(nsjail), 4), N_THROUGHPUT)
    try:
        import ray

        from revex.runtime.ray_pool import RayPool
    except ImportError:
        print("ray not installed: Ray rows skipped", file=sys.stderr)
    else:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        pool = RayPool(backend="nsjail", actors=2, per_actor=2)
        try:
            out["throughput"]["Ray pool (2 actors x 2, nsjail)"] = throughput(pool, N_THROUGHPUT)
        finally:
            pool.close()
            ray.shutdown()

    backends: dict[str, SandboxBackend] = {"nsjail (cold)": nsjail}
    warm = WarmPythonBackend(cold=nsjail, size=2)
    backends["nsjail (warm)"] = warm
    docker = None
    try:
        from revex.runtime.sandbox.docker import DockerBackend

        docker = DockerBackend()
        backends["docker (Podman 4.3, runc)"] = docker
    except (ImportError, SandboxError) as exc:
        print(f"docker rows skipped: {exc}", file=sys.stderr)
    he = humaneval_spec()
    try:
        for name, be in backends.items():
            out["latency"][name] = {"trivial": latency(be, TRIVIAL, N_LATENCY),
                                    "humaneval_0": latency(be, he, N_LATENCY)}
    finally:
        warm.close()
        if docker is not None:
            docker.close()

    print(f"{'pool':<36} {'runs':>5} {'wall s':>8} {'runs/s':>8}")
    for name, row in out["throughput"].items():
        print(f"{name:<36} {row['runs']:>5} {row['wall_s']:>8} {row['runs_per_s']:>8}")
    print(f"\n{'backend':<28} {'trivial ms (med/max)':>22} {'HumanEval/0 ms (med/max)':>26}")
    for name, row in out["latency"].items():
        t, h = row["trivial"], row["humaneval_0"]
        print(f"{name:<28} {t['median_ms']:>12}/{t['max_ms']:<9} {h['median_ms']:>14}/"
              f"{h['max_ms']:<9}")
    os.makedirs("benchmarks/results", exist_ok=True)
    with open("benchmarks/results/bench_scale.json", "w") as f:
        json.dump(out, f, indent=2)


class _Concurrency:
    """A local pool at a fixed concurrency (the Ray pool's 2 x 2 slots), for a fair row."""

    name = "local"

    def __init__(self, pool: LocalPool, concurrency: int) -> None:
        self.pool, self.concurrency = pool, concurrency

    def run_many(self, specs: Any, *, concurrency: int = 0) -> Any:
        return self.pool.run_many(specs, concurrency=self.concurrency)

    def close(self) -> None:
        self.pool.close()


if __name__ == "__main__":
    main()
