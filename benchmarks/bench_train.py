"""Benchmark what the sandbox costs the RL trainer.

1. GRPO seconds per step on the tiny model with :class:`revex.trainer.rewards.TestPassReward`
   (every completion in a fresh, rolled-back episode of the runtime) against the same trainer
   with an UNSANDBOXED plain-subprocess reward (``python -I -S`` on the host, no limits, no
   journal). The unsandboxed reward exists only in this file, to measure the overhead; never
   train with it. Same model, tasks, seed and settings; runs alternate to spread drift.
2. Reward throughput (completions/s) of TestPassReward at concurrency 1 and 2 on a fixed batch.

Prints a table and writes ``benchmarks/results/bench_train.json``. Target: the sandboxed reward
adds at most 20 % to the step time.

usage: python benchmarks/bench_train.py [--steps N] [--repeats R] [--batch B]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = Path(__file__).parent / "results" / "bench_train.json"


class UnsandboxedSubprocessReward:
    """UNSANDBOXED, BENCHMARK ONLY: runs model output directly on the host.

    Runs ``prompt + completion + tests`` with ``python -I -S`` in a plain subprocess (no
    namespaces, no limits but a wall timeout, no journal, forgeable by ``sys.exit(0)``). It is
    the baseline the sandbox's overhead is measured against.
    """

    __name__ = "unsandboxed_subprocess"

    def __init__(self, timeout_s: float = 5.0) -> None:
        self.timeout_s = timeout_s
        self.seconds = 0.0

    def __call__(self, prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
        from revex.trainer.executor import truncate_completion

        t0 = time.perf_counter()
        out = []
        for prompt, completion, tests in zip(prompts, completions, kwargs["tests"], strict=True):
            src = prompt + truncate_completion(completion) + "\n\n" + tests + "\n"
            with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
                f.write(src)
            try:
                rc = subprocess.run([sys.executable, "-I", "-S", f.name], capture_output=True,
                                    timeout=self.timeout_s, check=False).returncode
            except subprocess.TimeoutExpired:
                rc = -1
            finally:
                os.unlink(f.name)
            out.append(1.0 if rc == 0 else 0.0)
        self.seconds += time.perf_counter() - t0
        return out


class TimedReward:
    """Wraps a reward to add up the seconds spent inside it (same name)."""

    def __init__(self, reward: Any) -> None:
        self.reward = reward
        self.__name__ = reward.__name__
        self.seconds = 0.0

    def __call__(self, prompts: list[Any], completions: list[Any], **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self.reward(prompts, completions, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0


def grpo_step_times(model_dir: Path, reward: Any, steps: int, seed: int,
                    workdir: Path) -> dict[str, Any]:
    """Train ``steps`` GRPO steps with ``reward``; seconds per step (the first is dropped)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from revex.trainer.tasks import builtin_tasks, to_dataset
    from revex.trainer.train import TrainConfig, _common_args, _quiet

    class StepTimer(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.times: list[float] = []
            self.t0 = 0.0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.t0 = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.times.append(time.perf_counter() - self.t0)

    config = TrainConfig(max_steps=steps, seed=seed, output_dir=str(workdir), progress=False)
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    args = GRPOConfig(**_common_args(config, on_gpu=False), loss_type=config.loss_type)
    timer = StepTimer()
    timed = TimedReward(reward)
    trainer = GRPOTrainer(model=model, reward_funcs=[timed], args=args,
                          train_dataset=to_dataset(builtin_tasks()), processing_class=tokenizer,
                          callbacks=[timer])
    _quiet(trainer)
    trainer.train()
    kept = timer.times[1:] or timer.times
    return {"s_per_step": statistics.mean(kept), "reward_s_per_step": timed.seconds / steps,
            "steps": steps}


def reward_throughput(reward: Any, batch: int) -> float:
    """Completions per second of ``reward`` on ``batch`` built-in task completions."""
    from revex.trainer.tasks import builtin_tasks

    tasks = builtin_tasks()
    rows = [tasks[i % len(tasks)] for i in range(batch)]
    # half correct, half wrong: both kinds cost a test session
    completions = [f"    {t.reference}\n" if i % 2 == 0 else "    return None\n"
                   for i, t in enumerate(rows)]
    t0 = time.perf_counter()
    reward(prompts=[t.prompt for t in rows], completions=completions,
           tests=[t.tests for t in rows], entry_point=[t.entry_point for t in rows])
    return batch / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="GRPO steps per run")
    parser.add_argument("--repeats", type=int, default=2, help="runs per reward (alternating)")
    parser.add_argument("--batch", type=int, default=64, help="completions for throughput")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write the JSON")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from revex import Runtime
    from revex.trainer.rewards import TestPassReward
    from revex.trainer.tiny import TinySpec, build_tiny

    console = Console()
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        model_dir = build_tiny(TinySpec(seed=0), cache_dir=root / "cache")
        with Runtime(state_dir=root / "state", policy="training", audit=None) as rt:
            runs: dict[str, list[dict[str, Any]]] = {"sandboxed": [], "unsandboxed": []}
            for r in range(args.repeats):
                for label in ("sandboxed", "unsandboxed"):
                    reward: Any = (TestPassReward(rt, concurrency=2) if label == "sandboxed"
                                   else UnsandboxedSubprocessReward())
                    runs[label].append(grpo_step_times(model_dir, reward, args.steps, seed=0,
                                                       workdir=root / f"{label}{r}"))
            throughput = {f"sandboxed_c{c}": reward_throughput(TestPassReward(rt, concurrency=c),
                                                               args.batch) for c in (1, 2)}
            throughput["unsandboxed_c1"] = reward_throughput(UnsandboxedSubprocessReward(),
                                                             args.batch)

    step = {k: statistics.mean(x["s_per_step"] for x in v) for k, v in runs.items()}
    reward_s = {k: statistics.mean(x["reward_s_per_step"] for x in v) for k, v in runs.items()}
    overhead = step["sandboxed"] / step["unsandboxed"] - 1

    table = Table(title="GRPO on the tiny model, 8 prompts x 8 completions per step (CPU)")
    for col in ("reward", "s/step", "reward s/step", "step time vs unsandboxed"):
        table.add_column(col, justify="right")
    table.add_row("TestPassReward (runtime, conc. 2)", f"{step['sandboxed']:.3f}",
                  f"{reward_s['sandboxed']:.3f}", f"{overhead:+.1%}")
    table.add_row("unsandboxed subprocess (bench only)", f"{step['unsandboxed']:.3f}",
                  f"{reward_s['unsandboxed']:.3f}", "baseline")
    console.print(table)
    tput = Table(title=f"reward throughput, {args.batch} completions")
    tput.add_column("reward")
    tput.add_column("completions/s", justify="right")
    for name, value in throughput.items():
        tput.add_row(name, f"{value:.1f}")
    console.print(tput)
    verdict = "meets" if overhead <= 0.20 else "misses"
    console.print(f"sandbox overhead on step time: {overhead:+.1%} ({verdict} the 20 % target)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": platform.platform(), "cpus": os.cpu_count(), "steps": args.steps,
        "repeats": args.repeats, "s_per_step": step, "reward_s_per_step": reward_s,
        "overhead": overhead, "runs": runs, "throughput_completions_per_s": throughput,
    }, indent=1))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
