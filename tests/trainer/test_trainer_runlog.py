from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from revex.trainer.runlog import RunRecorder, plot_run, summarize, window_means, write_run_log


def _records(rewards: list[float]) -> list[dict[str, float]]:
    return [{"step": float(i + 1), "reward": r, "reward_std": 0.1, "safety/timeout": 0.0,
             "safety/reward_hacks": 0.25} for i, r in enumerate(rewards)]


def test_window_means_and_summary_report_first_and_last_reward() -> None:
    assert window_means([0.1, 0.2, 0.3, 0.4], 2) == pytest.approx((0.15, 0.35))
    assert all(math.isnan(x) for x in window_means([], 3))
    assert window_means([0.1, 0.5], 8) == pytest.approx((0.1, 0.5))
    assert window_means([0.3], 8) == pytest.approx((0.3, 0.3))
    summary = summarize(_records([0.1, 0.1, 0.3, 0.5, 0.5]), window=2)
    assert summary["reward_first_mean"] == pytest.approx(0.1)
    assert summary["reward_last_mean"] == pytest.approx(0.5)
    assert summary["reward_gain"] == pytest.approx(0.4)
    assert summary["reward_ratio"] == pytest.approx(5.0)
    assert summary["safety/reward_hacks_mean"] == pytest.approx(0.25)


def test_recorder_keeps_numeric_values_only() -> None:
    rec = RunRecorder(3, show_progress=False)
    rec.add(1, {"reward": 0.5, "note": "x", "flag": True, "loss": 1})
    assert set(rec.records[0]) == {"step", "reward", "loss", "elapsed_s"}


def test_write_run_log_is_valid_json_with_nan_as_null(tmp_path: Path) -> None:
    path = write_run_log(tmp_path / "sub" / "run_log.json", config={"lr": 1e-3},
                         records=_records([0.0]), summary=summarize(_records([0.0])))
    doc = json.loads(path.read_text())
    assert doc["config"] == {"lr": 1e-3}
    assert doc["summary"]["reward_ratio"] is None
    assert doc["steps"][0]["reward"] == 0.0


def test_plot_run_writes_a_png(tmp_path: Path) -> None:
    path = plot_run(tmp_path / "run.png", _records([0.1, 0.2, 0.4]))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = plot_run(tmp_path / "empty.png", [])
    assert empty.stat().st_size > 0
