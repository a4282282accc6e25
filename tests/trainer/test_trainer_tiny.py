from __future__ import annotations

import json
from pathlib import Path

import pytest

from revex.trainer.tiny import ROUND_TRIP_SAMPLE, TinySpec, build_tiny

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]

SPEC = TinySpec(warm_start_steps=5, stdlib_files=40)


def test_tiny_build_is_deterministic_and_cached(tmp_path: Path) -> None:
    first = build_tiny(SPEC, cache_dir=tmp_path / "a")
    second = build_tiny(SPEC, cache_dir=tmp_path / "b")
    assert first.name == second.name == f"tiny-{SPEC.digest()}"
    for name in ("tokenizer.json", "model.safetensors", "config.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    info = json.loads((first / "build_info.json").read_text())
    assert len(info["warm_start_losses"]) == 5
    assert info["warm_start_losses"][-1] < info["warm_start_losses"][0]
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert build_tiny(SPEC, cache_dir=tmp_path / "a") == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".tiny-")]


def test_tiny_model_loads_with_auto_classes_and_round_trips_text(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_tiny(SPEC, cache_dir=tmp_path)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    ids = tok(ROUND_TRIP_SAMPLE, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == ROUND_TRIP_SAMPLE
    assert model.config.model_type == "llama"
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>"
    assert model.config.vocab_size == len(tok)


def test_renamed_copies_join_the_warm_start_but_held_out_tasks_stay_out(tmp_path: Path) -> None:
    from revex.trainer.tasks import builtin_tasks

    held = tuple(t.task_id for t in builtin_tasks()[:8])
    plain = TinySpec(warm_start_steps=1, stdlib_files=40, exclude=held)
    renamed = TinySpec(warm_start_steps=1, stdlib_files=40, exclude=held, rename_copies=2)
    assert plain.digest() != renamed.digest()  # another model, another cache entry
    info = json.loads((build_tiny(renamed, cache_dir=tmp_path) / "build_info.json").read_text())
    assert info["warm_start_tasks"] == (128 - 8) * 3
