"""Benchmark the RL trainer: tiny-model build time, seconds per step, and the reward it learns.

Runs ``revex.trainer.train`` with the calibrated defaults (GRPO on the built-in tasks, tiny
model) through the revex runtime, prints a table and writes ``benchmarks/results/bench_train.json``.

usage: python benchmarks/bench_train.py [--steps N] [--algorithm grpo|rloo|dpo] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

RESULTS = Path(__file__).parent / "results" / "bench_train.json"


def bench_build(seed: int) -> float:
    """Seconds to build the tiny model from scratch (tokenizer, init, warm start, save)."""
    from revex.trainer.tiny import TinySpec, build_tiny

    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        build_tiny(TinySpec(seed=seed), cache_dir=cache)
        return time.perf_counter() - t0


def bench_run(algorithm: str, steps: int, seed: int, workdir: Path) -> dict[str, Any]:
    """One training run; returns timings and the first/last reward windows."""
    from revex.trainer.train import TrainConfig, train

    config = TrainConfig(algorithm=algorithm, max_steps=steps, seed=seed, progress=False,
                         output_dir=str(workdir / f"{algorithm}-seed{seed}"))
    t0 = time.perf_counter()
    result = train(config)
    wall = time.perf_counter() - t0
    s = result.summary
    return {"algorithm": algorithm, "seed": seed, "steps": steps, "wall_s": wall,
            "s_per_step": wall / steps, "reward_first": s["reward_first_mean"],
            "reward_last": s["reward_last_mean"], "reward_gain": s["reward_gain"],
            "log": str(result.log_path)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="training steps per run")
    parser.add_argument("--algorithm", default="grpo", choices=["grpo", "rloo", "dpo"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    build_s = bench_build(args.seeds[0])
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for seed in args.seeds:
            rows.append(bench_run(args.algorithm, args.steps, seed, Path(work)))
    table = Table(title=f"revex trainer ({args.algorithm}, tiny model, built-in tasks)")
    for col in ("seed", "steps", "s/step", "reward first", "reward last", "gain"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["seed"]), str(r["steps"]), f"{r['s_per_step']:.2f}",
                      f"{r['reward_first']:.3f}", f"{r['reward_last']:.3f}",
                      f"{r['reward_gain']:+.3f}")
    console = Console()
    console.print(table)
    console.print(f"tiny model build: {build_s:.1f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.platform(), "cpus": os.cpu_count(),
                                    "build_s": build_s, "runs": rows}, indent=1))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
