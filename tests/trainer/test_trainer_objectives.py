"""Real-run trainer features on CPU with the tiny model and the real runtime: weighted reward
components (each logged; the step reward is their weighted sum), the safety component, held-out
pass@1/pass@k during training, the pass-rate curriculum, saving, loading from a path, resuming
and LoRA."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random
from pathlib import Path

import pytest

from revex import Runtime
from revex.errors import ConfigError
from revex.trainer.curriculum import PassRateTracker
from revex.trainer.evaluate import pass_at_k, split_tasks
from revex.trainer.rewards import ExecutionCache
from revex.trainer.safety import SafetyReward
from revex.trainer.tasks import builtin_tasks
from revex.trainer.tiny import TinySpec, build_tiny
from revex.trainer.train import TrainConfig, train

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def test_pass_at_k_is_the_unbiased_estimator() -> None:
    for n, c, k in [(8, 0, 4), (8, 3, 1), (8, 3, 4), (5, 5, 2), (6, 2, 3)]:
        subsets = list(itertools.combinations(range(n), k))
        brute = sum(any(i < c for i in s) for s in subsets) / len(subsets)
        assert math.isclose(pass_at_k(n, c, k), brute)


def test_reward_weights_parse_and_refuse_bad_input() -> None:
    config = TrainConfig(rewards="test_pass:1.0, exec_feedback:0.2,safety")
    assert config.reward_names() == ["test_pass", "exec_feedback", "safety"]
    assert config.reward_weights() == [1.0, 0.2, 1.0]
    for bad, fragment in [("test_pass:x", "not a number"), ("test_pass:inf", "finite"),
                          ("exec_feedback:1", "test_pass"), ("test_pass,nope", "among")]:
        with pytest.raises(ConfigError, match=fragment):
            TrainConfig(rewards=bad).validate()
    with pytest.raises(ConfigError, match="curriculum"):
        TrainConfig(curriculum="hardest").validate()
    with pytest.raises(ConfigError, match="eval_k"):
        TrainConfig(eval_k=9, eval_samples=8).validate()
    with pytest.raises(ConfigError, match="resume needs save_steps"):
        TrainConfig(resume=True).validate()


def test_split_tasks_holds_out_a_seeded_share() -> None:
    tasks = builtin_tasks()
    train_set, held = split_tasks(tasks, 0.25, seed=3)
    assert len(held) == 32 and len(train_set) == 96
    assert not {t.task_id for t in held} & {t.task_id for t in train_set}
    assert split_tasks(tasks, 0.25, seed=3)[1] == held
    assert split_tasks(tasks, 0.25, seed=4)[1] != held
    # one member of every family is held out; its three relatives are trained on
    assert sorted(t.family or "" for t in held) == sorted({t.family or "" for t in tasks})
    for task in held:
        assert sum(t.family == task.family for t in train_set) == 3
    # without families (a JSONL file without the field): a seeded shuffle, as before
    plain = [dataclasses.replace(t, family=None) for t in tasks[:32]]
    train_plain, held_plain = split_tasks(plain, 0.25, seed=3)
    assert len(held_plain) == 8 and len(train_plain) == 24
    assert not {t.task_id for t in held_plain} & {t.task_id for t in train_plain}


def test_builtin_families_share_structure_under_other_names() -> None:
    tasks = builtin_tasks()
    family = [t for t in tasks if t.family == "sub"]
    assert [t.entry_point for t in family] == ["sub", "my_sub", "fn_sub", "do_sub"]
    assert family[1].prompt == 'def my_sub(x, y):\n    """Return x minus y."""\n'
    assert family[1].reference == "    return x - y\n"
    assert family[1].tests.startswith("assert my_sub(5, 3) == 2\n")
    count = [t for t in tasks if t.family == "count_a"][2]
    assert count.reference == "    return word.count('a')\n"  # the quoted 'a' is no name
    assert "letter a occurs in word" in count.prompt


def test_the_tiny_warm_start_never_sees_the_held_out_tasks(
        tmp_path: Path, tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train() splits before it builds the tiny model and excludes the held-out tasks (and
    built-in tasks with the same prompt) from its tokenizer corpus and warm start."""
    import revex.trainer.tiny as tiny_module

    specs: list[TinySpec] = []

    def fake_build(spec: TinySpec, **kw: object) -> Path:
        specs.append(spec)
        return tiny

    monkeypatch.setattr(tiny_module, "build_tiny", fake_build)
    tasks = tmp_path / "tasks.jsonl"  # copies of built-in tasks under other ids
    tasks.write_text("".join(json.dumps({"prompt": t.prompt, "tests": t.tests,
                                         "entry_point": t.entry_point,
                                         "task_id": f"copy/{t.entry_point}"}) + "\n"
                             for t in builtin_tasks()[:8]))
    config = TrainConfig(output_dir=str(tmp_path / "run"), model="tiny", tasks=str(tasks),
                         max_steps=1, prompts_per_step=1, num_generations=2,
                         max_completion_length=4, eval_every=1, eval_samples=2, eval_k=1,
                         progress=False, state_dir=str(tmp_path / "state"))
    doc = json.loads(train(config).log_path.read_text())
    held = doc["config"]["held_out_tasks"]
    assert len(held) == 2 and len(specs) == 1
    originals = {f"builtin/{h.split('/')[1]}" for h in held}
    assert set(specs[0].exclude) == set(held) | originals
    rows = [json.loads(line) for line in (tmp_path / "run" / "held_out.jsonl").open()]
    assert [r["task_id"] for r in rows] == held
    corpus = "\n".join(tiny_module.tokenizer_corpus(0, specs[0].exclude))
    for task in builtin_tasks()[:8]:
        assert (task.prompt in corpus) == (task.task_id not in originals), task.task_id


def test_safety_reward_scale(tmp_path: Path) -> None:
    task = builtin_tasks()[0]
    strict = tmp_path / "p.toml"
    with Runtime(state_dir=tmp_path / "s", policy="training", audit=None) as rt:
        cache = ExecutionCache()
        safety = SafetyReward(rt, cache=cache)
        clean = task.reference or ""
        shell = ("    import subprocess\n    subprocess.call(str(a), shell=True)\n"
                 "    return a + b\n")
        hack = "    import os\n    os._exit(0)\n"
        rewards = safety([task.prompt] * 3, [clean, shell, hack], tests=[task.tests] * 3,
                         entry_point=[task.entry_point] * 3)
        assert rewards == [0.0, -0.5, -1.0]
    strict.write_text('[policy]\nname = "tight"\ndefault = "deny"\n[[rules]]\nname = "fs"\n'
                      'kind = "fs.*"\ndecision = "allow"\n')
    with Runtime(state_dir=tmp_path / "s2", policy=strict, audit=None) as rt:
        blocked = SafetyReward(rt)([task.prompt], [clean], tests=[task.tests],
                                   entry_point=[task.entry_point])
        assert blocked == [-1.0]  # the policy refused to run it: a refusal costs the most


def test_pass_rate_curriculum_prefers_the_frontier() -> None:
    prompts = ["always", "never", "sometimes"]

    def reward(prompts: list, completions: list, **kw: object) -> list[float]:
        return [{"always": 1.0, "never": 0.0, "sometimes": random.choice([0.0, 1.0])}[p]
                for p in prompts]

    reward.__name__ = "test_pass"  # type: ignore[attr-defined]
    tracker = PassRateTracker(reward, prompts)
    assert tracker.weights()[0] == tracker.weights()[2]  # unseen tasks are all frontier
    random.seed(1)
    logged: dict[str, float] = {}
    for _ in range(10):
        tracker(prompts * 4, ["c"] * 12, log_metric=logged.__setitem__)
    w = tracker.weights()
    assert w[2] > 3 * w[0] and w[2] > 3 * w[1]
    assert logged["curriculum/frontier"] == pytest.approx(1 / 3)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny(TinySpec(warm_start_steps=0, stdlib_files=40),
                      cache_dir=tmp_path_factory.mktemp("tiny"))


def test_weighted_components_eval_and_curriculum_in_one_run(tmp_path: Path, tiny: Path) -> None:
    tasks = tmp_path / "tasks.jsonl"  # 8 tasks: 2 held out, so evaluation stays cheap
    tasks.write_text("".join(json.dumps({"prompt": t.prompt, "tests": t.tests,
                                         "entry_point": t.entry_point, "task_id": t.task_id})
                             + "\n" for t in builtin_tasks()[:8]))
    config = TrainConfig(output_dir=str(tmp_path / "run"), model=str(tiny), max_steps=2,
                         tasks=str(tasks),
                         prompts_per_step=2, num_generations=2, max_completion_length=8,
                         progress=False, rewards="test_pass:1.0,exec_feedback:0.2,safety:0.5",
                         eval_every=1, eval_samples=2, eval_k=2, curriculum="pass_rate",
                         save_model=True, state_dir=str(tmp_path / "state"))
    result = train(config)
    doc = json.loads(result.log_path.read_text())
    steps = [s for s in doc["steps"] if "reward" in s]
    assert len(steps) == 2
    for s in steps:
        parts = {k: s[f"rewards/{k}/mean"] for k in ("test_pass", "exec_feedback", "safety")}
        weighted = parts["test_pass"] + 0.2 * parts["exec_feedback"] + 0.5 * parts["safety"]
        assert s["reward"] == pytest.approx(weighted, abs=1e-4)  # TRL applied our weights
        assert "curriculum/frontier" in s
    evals = [s for s in doc["steps"] if "eval/pass@1" in s]
    assert [e["step"] for e in evals] == [0.0, 1.0, 2.0]
    assert all(0 <= e["eval/pass@2"] <= 1 and e["eval/pass@1"] <= 1 for e in evals)
    assert {"eval/pass@1_first", "eval/pass@1_last"} <= set(doc["summary"])
    assert len(doc["config"]["held_out_tasks"]) == 2
    saved = tmp_path / "run" / "model"
    assert (saved / "config.json").is_file()
    # the saved model trains again from its path, resumes, and trains LoRA adapters
    again = TrainConfig(output_dir=str(tmp_path / "run2"), model=str(saved), max_steps=2,
                        tasks=str(tasks),
                        prompts_per_step=1, num_generations=2, max_completion_length=8,
                        progress=False, save_steps=1, state_dir=str(tmp_path / "state"))
    train(again)
    assert (tmp_path / "run2" / "checkpoint-2").is_dir()
    resumed = TrainConfig(**{**again.__dict__, "max_steps": 3, "resume": True})
    doc = json.loads(train(resumed).log_path.read_text())
    assert [s["step"] for s in doc["steps"] if "reward" in s] == [3.0]
    lora = TrainConfig(output_dir=str(tmp_path / "run3"), model=str(saved), max_steps=1,
                       tasks=str(tasks),
                       prompts_per_step=1, num_generations=2, max_completion_length=8,
                       progress=False, lora=True, lora_r=4, state_dir=str(tmp_path / "state"))
    assert [s["step"] for s in train(lora).records if "reward" in s] == [1.0]
    with Runtime(state_dir=tmp_path / "state", audit=None) as rt:
        assert {e.status for e in rt.episodes()} == {"rolled_back"}


def test_evaluation_restores_the_training_state_and_matches_revex_eval_model(
        tmp_path: Path, tiny: Path) -> None:
    """The evaluation used during training: greedy pass@1 and sampled pass@k through the
    runtime, leaving train mode and torch's RNG as they were; ``revex eval model`` on the same
    weights saved to disk gives the same numbers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from typer.testing import CliRunner

    from revex.cli import app
    from revex.trainer.evaluate import evaluate
    from revex.trainer.rewards import TestPassReward
    from revex.trainer.tiny import warm_start

    tok = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny)
    by_name = {t.entry_point: t for t in builtin_tasks()}
    learnt = [by_name["add"], by_name["neg"]]
    warm_start(model, tok, [(t.prompt, t.reference or "") for t in learnt], steps=60, lr=3e-3,
               seed=0)
    tasks = [*learnt, by_name["upper"]]  # upper was never taught: its greedy answer fails
    model.train()
    rng = torch.get_rng_state()
    with Runtime(state_dir=tmp_path / "s", policy="training", audit=None) as rt:
        result = evaluate(model, tok, tasks, TestPassReward(rt, reward_mode="all_pass"), k=2,
                          samples=4)
    assert model.training and torch.equal(torch.get_rng_state(), rng)
    assert result.pass_at_1 == pytest.approx(2 / 3) and result.tasks == 3
    assert 2 / 3 <= result.pass_at_k <= 1
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    (tmp_path / "t.jsonl").write_text("".join(
        json.dumps({"prompt": t.prompt, "tests": t.tests, "entry_point": t.entry_point}) + "\n"
        for t in tasks))
    out = CliRunner().invoke(app, ["eval", "model", str(tmp_path / "m"), "--tasks",
                                   str(tmp_path / "t.jsonl"), "--k", "2", "--samples", "4",
                                   "--state-dir", str(tmp_path / "s2")])
    assert out.exit_code == 0, out.output
    assert (f"3 tasks: pass@1 {result.pass_at_1:.4f}, pass@2 {result.pass_at_k:.4f}"
            in out.output)
