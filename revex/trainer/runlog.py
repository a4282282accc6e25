"""What a training run leaves behind: a JSON log of per-step metrics and a PNG plot of them.

:class:`RunRecorder` is a transformers ``TrainerCallback`` that keeps every logged step (reward,
loss, safety metrics) and drives a rich progress bar. :func:`write_run_log` and :func:`plot_run`
turn the records into ``run_log.json`` and ``run_log.png`` in the output directory.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REWARD_KEYS = ("reward", "reward_std")
#: safety metrics that are counts per step (plotted on their own axis), not fractions
COUNT_METRICS = frozenset({"safety/rollbacks", "safety/policy_denials"})
SAFETY_PREFIX = "safety/"
EVAL_PREFIX = "eval/"


def _make_callback_base() -> type:
    # transformers is imported only when a recorder is built, never at module import time.
    from transformers import TrainerCallback

    return TrainerCallback


class RunRecorder:
    """Collects per-step metrics from a Trainer and shows progress.

    Use :meth:`callback` to get the ``TrainerCallback`` to hand to a trainer; ``records`` holds
    one dict per logged step (``step`` plus every numeric value TRL logged).
    """

    def __init__(self, total_steps: int, *, show_progress: bool = True,
                 description: str = "training") -> None:
        self.total_steps = total_steps
        self.show_progress = show_progress
        self.description = description
        self.records: list[dict[str, float]] = []
        self.started = time.perf_counter()
        self._progress: Any = None
        self._task: Any = None

    def add(self, step: int, logs: Mapping[str, Any]) -> None:
        """Record the numeric values of one log entry for ``step``."""
        row: dict[str, float] = {"step": float(step)}
        for key, value in logs.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                row[key] = float(value)
        row["elapsed_s"] = time.perf_counter() - self.started
        self.records.append(row)
        if self._progress is not None and "reward" in row:
            self._progress.update(self._task, description=f"{self.description} "
                                  f"reward={row['reward']:.3f}")

    def start(self) -> None:
        """Start the progress bar (no-op when progress is off)."""
        self.started = time.perf_counter()
        if not self.show_progress:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self._progress = Progress("[progress.description]{task.description}", BarColumn(),
                                  MofNCompleteColumn(), TimeElapsedColumn())
        self._task = self._progress.add_task(self.description, total=self.total_steps)
        self._progress.start()

    def advance(self, step: int) -> None:
        """Move the progress bar to ``step``."""
        if self._progress is not None:
            self._progress.update(self._task, completed=step)

    def stop(self) -> None:
        """Stop the progress bar."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def callback(self) -> Any:
        """A ``TrainerCallback`` that feeds this recorder."""
        base = _make_callback_base()
        recorder = self

        class _Callback(base):  # type: ignore[valid-type, misc]
            def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                recorder.start()

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                recorder.advance(state.global_step)

            def on_log(self, args: Any, state: Any, control: Any, logs: Any = None,
                       **kw: Any) -> None:
                if logs and "train_runtime" not in logs:
                    recorder.add(state.global_step, logs)

            def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                recorder.stop()

        return _Callback()


def window_means(values: Sequence[float], window: int) -> tuple[float, float]:
    """Mean of the first and of the last ``window`` values (NaN when there are none).

    With fewer than ``2 * window`` values each window shrinks to half of them (at least one).
    """
    clean = [v for v in values if not math.isnan(v)]
    if not clean:
        return math.nan, math.nan
    w = max(1, min(window, len(clean) // 2))  # the two windows never overlap
    return sum(clean[:w]) / w, sum(clean[-w:]) / w


def summarize(records: Sequence[Mapping[str, float]], window: int = 5) -> dict[str, float]:
    """First-window and last-window mean reward, their gap and ratio, and safety totals."""
    rewards = [r["reward"] for r in records if "reward" in r]
    first, last = window_means(rewards, window)
    summary: dict[str, float] = {
        "steps_logged": float(len(rewards)),
        "reward_first_mean": first,
        "reward_last_mean": last,
        "reward_gain": last - first,
        "reward_ratio": last / first if first and not math.isnan(first) else math.nan,
        "window": float(window),
    }
    safety_keys = sorted({k for r in records for k in r if k.startswith(SAFETY_PREFIX)})
    for key in safety_keys:
        vals = [r[key] for r in records if key in r]
        summary[f"{key}_mean"] = sum(vals) / len(vals)
    for key in sorted({k for r in records for k in r if k.startswith(EVAL_PREFIX)}):
        vals = [r[key] for r in records if key in r]
        summary[f"{key}_first"], summary[f"{key}_last"] = vals[0], vals[-1]
    return summary


def write_run_log(path: str | Path, *, config: Mapping[str, Any],
                  records: Sequence[Mapping[str, float]], summary: Mapping[str, Any]) -> Path:
    """Write ``{"config", "summary", "steps"}`` as JSON (NaN written as null)."""
    def clean(value: Any) -> Any:
        if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
            return None
        if isinstance(value, Mapping):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"config": clean(dict(config)), "summary": clean(dict(summary)),
           "steps": [clean(dict(r)) for r in records]}
    path.write_text(json.dumps(doc, indent=1, sort_keys=False))
    return path


def plot_run(path: str | Path, records: Sequence[Mapping[str, float]], *,
             title: str = "revex training run") -> Path:
    """Plot reward (with its std band and its weighted components), held-out pass@1/pass@k
    (when evaluated) and the safety metrics per step into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    steps = [r["step"] for r in records if "reward" in r]
    eval_keys = sorted({k for r in records for k in r if k.startswith(EVAL_PREFIX)})
    if eval_keys:  # held-out evaluation on its own panel, between reward and safety
        fig, (ax_r, ax_e, ax_s) = plt.subplots(3, 1, figsize=(9, 10), sharex=True,
                                               height_ratios=(3, 2, 3))
    else:
        fig, (ax_r, ax_s) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    colours = itertools.cycle(plt.get_cmap("tab20")(i) for i in range(20))  # distinct colours
    if steps:
        reward = [r["reward"] for r in records if "reward" in r]
        std = [r.get("reward_std", 0.0) for r in records if "reward" in r]
        ax_r.plot(steps, reward, marker=".", label="mean reward")
        if len(reward) >= 8:  # a trailing mean makes the trend readable through batch noise
            k = 8
            trend = [sum(reward[max(0, i - k + 1): i + 1]) / len(reward[max(0, i - k + 1): i + 1])
                     for i in range(len(reward))]
            ax_r.plot(steps, trend, color="black", linewidth=2, label=f"mean of last {k}")
        ax_r.fill_between(steps, [m - s for m, s in zip(reward, std, strict=True)],
                          [m + s for m, s in zip(reward, std, strict=True)], alpha=0.2,
                          label="± std")
    for key in eval_keys:
        pts = [(r["step"], r[key]) for r in records if key in r]
        ax_e.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", linestyle="-.",
                  label=f"held-out {key.removeprefix(EVAL_PREFIX)}")
    if eval_keys:
        ax_e.set_ylabel("held-out pass rate")
        ax_e.set_ylim(-0.02, max(0.1, *(r[k] for r in records for k in eval_keys if k in r))
                      * 1.15)
        ax_e.legend(loc="best", fontsize="x-small")
    components = sorted({k for r in records for k in r
                         if k.startswith("rewards/") and k.endswith("/mean")})
    if len(components) > 1:  # weighted multi-objective run: each component on its own line
        for key in components:
            pts = [(r["step"], r[key]) for r in records if key in r]
            ax_r.plot([p[0] for p in pts], [p[1] for p in pts], linewidth=1.0, alpha=0.8,
                      color=next(colours),
                      label=key.removeprefix("rewards/").removesuffix("/mean"))
    loss_steps = [r["step"] for r in records if "loss" in r]
    if loss_steps and not steps:
        ax_r.plot(loss_steps, [r["loss"] for r in records if "loss" in r], label="loss")
    ax_r.set_ylabel("reward")
    if ax_r.get_legend_handles_labels()[0]:
        ax_r.legend(loc="best", fontsize="x-small")
    ax_r.set_title(title)
    safety_keys = sorted({k for r in records for k in r if k.startswith(SAFETY_PREFIX)})
    ax_n = None
    for key in safety_keys:
        pts = [(r["step"], r[key]) for r in records if key in r]
        if key in COUNT_METRICS:  # a count per step, not a fraction: its own axis
            ax_n = ax_n or ax_s.twinx()
            ax_n.plot([p[0] for p in pts], [p[1] for p in pts], color="grey", linestyle="--",
                      label=f"{key.removeprefix(SAFETY_PREFIX)} (count, right axis)")
            ax_n.set_ylabel("count per step")
            ax_n.legend(loc="upper right", fontsize="x-small")
            continue
        ax_s.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", color=next(colours),
                  label=key.removeprefix(SAFETY_PREFIX))
    ax_s.set_ylabel("fraction of completions")
    ax_s.set_xlabel("step")
    if safety_keys:
        ax_s.legend(loc="upper left", fontsize="x-small", ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
