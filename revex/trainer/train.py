"""``train(config)``: RL on function-writing tasks with the revex runtime as the only environment.

The loop, in the order it happens:

1. resolve the model (``"tiny"`` builds the offline model, anything else is a local path or hub
   id) and the tasks (``builtin``, ``humaneval`` or a JSONL file);
2. open the runtime (policy ``training``); every completion is executed there, never here;
3. GRPO (default) or RLOO: TRL samples ``num_generations`` completions per prompt and the
   :class:`~revex.trainer.rewards.TestPassReward` scores each in a fresh, rolled-back episode;
   DPO: sample, score, pair passing against failing completions, train on the pairs;
4. write ``run_log.json`` (per-step reward and safety metrics) and ``run_log.png`` into
   ``output_dir``.

CPU (fp32, ``use_cpu=True``) or GPU (bf16) is chosen automatically unless ``device`` says.

Calibration (the defaults): GRPO on the built-in tasks with the tiny model (205k parameters,
40 warm-start steps), 8 prompts x 8 generations per step, temperature 0.7, learning rate 1e-3
(constant after 10 warm-up steps), 60 steps. Mean reward over the first vs the last 8 steps, on
2 CPU cores, measured on the former 32-task set (before each task got three renamed variants):
seed 0 0.058 -> 0.292, seed 1 0.105 -> 0.242, seed 2 0.121 -> 0.303. Held-out evidence on the
current 128-task set (``--eval-every``) is in the README's Training section. Observed while
calibrating (one run each): 60 warm-start steps start near 0.46 and gained only 0.07; at
temperature 1.0 the reward stayed flat or fell; without warm-up the first Adam steps knocked the
reward down before it recovered; without masking truncated completions the completions shrank
to 2-3 tokens.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from revex import _pyast
from revex.errors import ConfigError
from revex.runtime.sandbox.base import Limits
from revex.trainer.executor import TestRunner, open_runtime
from revex.trainer.rewards import TestPassReward
from revex.trainer.runlog import RunRecorder, plot_run, summarize, write_run_log
from revex.trainer.tasks import Task, load_tasks, to_dataset

ALGORITHMS = ("grpo", "rloo", "dpo")
REWARDS = ("test_pass", "exec_feedback", "code_quality", "efficiency", "safety")


@dataclass
class TrainConfig:
    """Settings of one training run. Defaults are the calibrated tiny-model run (see README)."""

    model: str = "tiny"
    """Model to train: "tiny" (built offline and cached), a local directory or a hub id."""
    algorithm: str = "grpo"
    """"grpo", "rloo" or "dpo" (DPO on pairs of passing vs failing sampled completions)."""
    tasks: str = "builtin"
    """Task source: "builtin" (128 easy functions: 32 families of an original and three
    renamed variants), "humaneval", or a path to a JSONL file of {prompt, tests,
    entry_point[, reference, family]}."""
    output_dir: str = "runs/train"
    """Directory for the run log, the plot and TRL's output."""
    max_steps: int = 60
    """Optimizer steps (GRPO/RLOO: one batch of prompts x generations per step)."""
    learning_rate: float = 1e-3
    """Optimizer learning rate. Tiny models need a large one; real models ~1e-6."""
    lr_scheduler_type: str = "constant_with_warmup"
    """Learning-rate schedule ("constant_with_warmup", "linear", "cosine", ...); short RL runs
    learn more with a constant rate than with one that decays to zero."""
    warmup_steps: int = 10
    """Steps of linear learning-rate warm-up. Adam's first updates move every weight by about
    the learning rate whatever the gradient, which knocks a warm-started tiny model back."""
    num_iterations: int = 1
    """Optimizer updates per generated batch (GRPO/RLOO); >1 reuses each batch, clipped."""
    num_generations: int = 8
    """Completions sampled per prompt (GRPO/RLOO group size; DPO samples per prompt)."""
    prompts_per_step: int = 8
    """Distinct prompts per step; the batch is prompts_per_step x num_generations."""
    max_completion_length: int = 24
    """Most tokens generated per completion."""
    temperature: float = 0.7
    """Sampling temperature."""
    mask_truncated_completions: bool = True
    """Leave completions cut off at max_completion_length out of the loss (GRPO/RLOO); without
    this, long failing samples push the policy towards ending every completion early."""
    loss_type: str = "dapo"
    """GRPO loss normalisation: "dapo", "grpo", "dr_grpo", "bnpo" ... (see TRL GRPOConfig)."""
    scale_rewards: str = "group"
    """GRPO advantage scaling (RLOO leaves advantages unscaled): "group" divides by each
    prompt's reward std, "batch" by the batch's, "none" not at all. With weighted rewards,
    "group" undoes the weights: a group in which only a small component varies (e.g.
    exec_feedback, when no completion passes) gets advantages as large as one where test_pass
    varies, which drove a tiny model to empty completions (they run cleanly)."""
    top_k: int = 0
    """Sample only from the k most likely tokens (0: no limit). A small k keeps a tiny model
    from sampling junk tokens whose pushed-down logits dominate the policy gradient."""
    top_p: float = 1.0
    """Nucleus sampling: sample from the smallest token set with this much probability."""
    beta: float = 0.0
    """KL coefficient against the initial model (GRPO/RLOO); DPO's beta is dpo_beta."""
    dpo_beta: float = 0.1
    """DPO temperature of the preference loss."""
    dpo_max_pairs_per_prompt: int = 4
    """At most this many (chosen, rejected) pairs per prompt."""
    rewards: str = "test_pass"
    """Comma-separated reward components, each optionally weighted as name:weight (TRL's
    reward_weights), e.g. test_pass:1.0,exec_feedback:0.2,code_quality:0.1,safety:0.5. Names:
    test_pass (required), exec_feedback, code_quality, efficiency (needs a reference column),
    safety (in [-1, 0]: refusals, denied actions, reward hacks, high-severity bandit findings).
    Each component is logged on its own; all execution goes through the runtime."""
    reward_mode: str = "pass_rate"
    """"pass_rate" (fraction of tests passed) or "all_pass" (1 only if every test passes)."""
    wall_s: float = 5.0
    """Wall-clock limit for running one completion's tests."""
    memory_mb: int = 256
    """Memory limit for running one completion's tests."""
    concurrency: int = 2
    """Completions executed in parallel by the runtime."""
    state_dir: str | None = None
    """Runtime state directory (journal, pre-images); default <output_dir>/.revex-state."""
    policy: str = "training"
    """Runtime policy: a preset name or a TOML path."""
    tiny_warm_start_steps: int = 40
    """Warm-start SFT steps when model is "tiny" (more steps: higher initial reward)."""
    tiny_rename_copies: int = 0
    """Renamed copies of each warm-start task (fresh argument names in the signature,
    docstring and reference) added to the tiny model's warm start; held-out tasks get none.
    Teaches taking names from the signature (0: off). The RL tasks stay as they are."""
    tiny_cache_dir: str | None = None
    """Where the tiny model is cached; default $REVEX_CACHE_DIR or ~/.cache/revex."""
    device: str = "auto"
    """"auto" (GPU with bf16 if available, else CPU fp32), "cpu" or "cuda"."""
    seed: int = 0
    """Seed for the tiny model, sampling and training."""
    window: int = 8
    """Steps averaged for the first-vs-last reward summary."""
    progress: bool = True
    """Show a rich progress bar."""
    curriculum: str = "off"
    """Task order: "off" (shuffled), "difficulty" (easy first, by the tasks' difficulty) or
    "pass_rate" (draw more of the tasks the model sometimes solves)."""
    eval_every: int = 0
    """Evaluate pass@1 (greedy) and pass@k (sampled) on the held-out tasks every N steps, at
    the start and at the end (0: no evaluation, no held-out split)."""
    eval_fraction: float = 0.25
    """Share of the tasks held out for evaluation when eval_every > 0: one member per family
    and round (tasks with a family), else a seeded shuffle. The tiny model's tokenizer and
    warm start never see the held-out tasks; the split is written to held_out.jsonl."""
    eval_k: int = 4
    """k of pass@k."""
    eval_samples: int = 8
    """Completions sampled per held-out task for pass@k (n of the unbiased estimator)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches accumulated per optimizer step (the batch per step stays
    prompts_per_step x num_generations)."""
    save_steps: int = 0
    """Save a checkpoint every N steps into output_dir (0: only the final model when
    save_model is on)."""
    save_model: bool = False
    """Save the trained model and tokenizer to output_dir/model at the end (load it with
    --model, or evaluate it with `revex eval model`)."""
    resume: bool = False
    """Resume from the last checkpoint in output_dir (needs save_steps)."""
    lora: bool = False
    """Train LoRA adapters (peft) instead of all weights."""
    lora_r: int = 8
    """LoRA rank."""

    def validate(self) -> None:
        """Check every field.

        Raises:
            ConfigError: naming the field and the accepted values.
        """
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"algorithm must be one of {', '.join(ALGORITHMS)}, "
                              f"got {self.algorithm!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if self.reward_mode not in ("pass_rate", "all_pass"):
            raise ConfigError(f"reward_mode must be 'pass_rate' or 'all_pass', "
                              f"got {self.reward_mode!r}")
        positive_ints = ("max_steps", "prompts_per_step", "max_completion_length",
                         "concurrency", "memory_mb", "dpo_max_pairs_per_prompt", "window",
                         "num_iterations")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.num_generations, int) or self.num_generations < 2:
            raise ConfigError(f"num_generations must be >= 2 (GRPO/RLOO compare completions "
                              f"within a group), got {self.num_generations!r}")
        for name in ("learning_rate", "temperature", "wall_s", "dpo_beta"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ConfigError(f"top_k must be >= 0 and top_p in (0, 1], got {self.top_k!r}, "
                              f"{self.top_p!r}")
        if self.beta < 0:
            raise ConfigError(f"beta must be >= 0, got {self.beta!r}")
        if self.scale_rewards not in ("group", "batch", "none"):
            raise ConfigError(f"scale_rewards must be 'group', 'batch' or 'none', "
                              f"got {self.scale_rewards!r}")
        if self.curriculum not in ("off", "difficulty", "pass_rate"):
            raise ConfigError(f"curriculum must be 'off', 'difficulty' or 'pass_rate', "
                              f"got {self.curriculum!r}")
        for name in ("eval_every", "save_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
        for name in ("eval_k", "eval_samples", "gradient_accumulation_steps", "lora_r"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.eval_k > self.eval_samples:
            raise ConfigError(f"eval_k ({self.eval_k}) must be <= eval_samples "
                              f"({self.eval_samples})")
        if not 0 < self.eval_fraction < 1:
            raise ConfigError(f"eval_fraction must be in (0, 1), got {self.eval_fraction!r}")
        if self.resume and not self.save_steps:
            raise ConfigError("resume needs save_steps > 0 (checkpoints to resume from)")
        self.reward_weights()  # parses name:weight, raising ConfigError
        unknown = set(self.reward_names()) - set(REWARDS)
        if unknown or "test_pass" not in self.reward_names():
            raise ConfigError(f"rewards must include test_pass and be among "
                              f"{', '.join(REWARDS)}, got {self.rewards!r}")
        if self.warmup_steps < 0:
            raise ConfigError("warmup_steps must be >= 0")
        if self.tiny_warm_start_steps < 0:
            raise ConfigError("tiny_warm_start_steps must be >= 0")
        copies = self.tiny_rename_copies
        if not isinstance(copies, int) or isinstance(copies, bool) or not 0 <= copies <= 32:
            raise ConfigError(f"tiny_rename_copies must be an integer from 0 to 32, "
                              f"got {copies!r}")
        if not self.model:
            raise ConfigError("model must be 'tiny', a local path or a hub id")


    def reward_names(self) -> list[str]:
        """The names in ``rewards``, in order (weights stripped)."""
        return [item.split(":", 1)[0].strip() for item in self.rewards.split(",")
                if item.strip()]

    def reward_weights(self) -> list[float]:
        """The weight of each reward in ``rewards`` (1.0 where none is given).

        Raises:
            ConfigError: a weight that is not a finite number.
        """
        import math

        weights = []
        for item in self.rewards.split(","):
            if not item.strip():
                continue
            name, sep, weight = item.partition(":")
            try:
                value = float(weight) if sep else 1.0
            except ValueError:
                raise ConfigError(f"reward weight {weight!r} of {name.strip()!r} is not a "
                                  "number; write name:weight, e.g. exec_feedback:0.2") from None
            if not math.isfinite(value):
                raise ConfigError(f"reward weight of {name.strip()!r} must be finite")
            weights.append(value)
        return weights


def field_docs(cls: type = TrainConfig) -> dict[str, str]:
    """Map each dataclass field of ``cls`` to the docstring written under it (the --help text)."""
    import ast
    import inspect
    import itertools
    import textwrap

    tree = _pyast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in itertools.pairwise(body):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


@dataclass
class TrainResult:
    """What a run produced. ``summary`` has reward_first_mean, reward_last_mean, reward_gain."""

    output_dir: Path
    log_path: Path
    plot_path: Path
    model_path: str
    records: list[dict[str, float]] = field(default_factory=list)
    summary: dict[str, float] = field(default_factory=dict)


def resolve_model(config: TrainConfig, held_out: Sequence[Task] = ()) -> str:
    """The model directory or hub id to load; builds the tiny model for ``"tiny"``.

    The tiny model's tokenizer and warm start leave out ``held_out`` and every built-in task
    with the same prompt (a JSONL copy of a built-in task under another id), so held-out
    scores are not contaminated by the warm start.
    """
    if config.model != "tiny":
        return config.model
    from revex.trainer.tasks import builtin_tasks
    from revex.trainer.tiny import TinySpec, build_tiny

    prompts = {t.prompt for t in held_out}
    exclude = {t.task_id for t in held_out} | {t.task_id for t in builtin_tasks()
                                               if t.prompt in prompts}
    spec = TinySpec(warm_start_steps=config.tiny_warm_start_steps, seed=config.seed,
                    exclude=tuple(sorted(exclude)),
                    rename_copies=config.tiny_rename_copies)
    return str(build_tiny(spec, cache_dir=config.tiny_cache_dir))


def fit_tasks(tasks: list[Task], tokenizer: Any, max_positions: int | None,
              max_completion_length: int) -> tuple[list[Task], list[str]]:
    """Drop tasks whose prompt plus a full completion exceeds the model's context.

    TRL does not truncate prompts, so such a task would fail inside the model. Returns the
    tasks that fit and the ids of those left out.

    Raises:
        ConfigError: no task fits.
    """
    if not max_positions:
        return tasks, []
    budget = max_positions - max_completion_length
    keep = [t for t in tasks if len(tokenizer(t.prompt)["input_ids"]) <= budget]
    skipped = [t.task_id for t in tasks if t not in keep]
    if not keep:
        raise ConfigError(f"no task prompt fits in {budget} tokens (context {max_positions} minus "
                          f"max_completion_length {max_completion_length})")
    return keep, skipped


def _on_gpu(config: TrainConfig) -> bool:
    import torch

    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but no CUDA GPU is available")
    return config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())


def _common_args(config: TrainConfig, on_gpu: bool) -> dict[str, Any]:
    return {
        "output_dir": config.output_dir, "max_steps": config.max_steps,
        "learning_rate": config.learning_rate, "seed": config.seed,
        "lr_scheduler_type": config.lr_scheduler_type, "warmup_steps": config.warmup_steps,
        "num_generations": config.num_generations,
        "max_completion_length": config.max_completion_length,
        "per_device_train_batch_size": (config.prompts_per_step * config.num_generations
                                        // config.gradient_accumulation_steps),
        "temperature": config.temperature, "top_k": config.top_k, "top_p": config.top_p,
        "beta": config.beta, "logging_steps": 1,
        "mask_truncated_completions": config.mask_truncated_completions,
        "num_iterations": config.num_iterations,
        "save_strategy": "steps" if config.save_steps else "no",
        "save_steps": config.save_steps or 500,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "report_to": "none", "gradient_checkpointing": False,
        "disable_tqdm": True, "use_cpu": not on_gpu, "bf16": on_gpu,
    }


def policy_gradient_args(config: TrainConfig, on_gpu: bool = False) -> dict[str, Any]:
    """Keyword arguments of TRL's GRPOConfig (or RLOOConfig) for ``config``."""
    args = _common_args(config, on_gpu)
    args["reward_weights"] = config.reward_weights()
    if config.algorithm == "grpo":
        args["loss_type"] = config.loss_type
        args["scale_rewards"] = config.scale_rewards
    return args


def build_rewards(config: TrainConfig, runner: TestRunner, reward: TestPassReward) -> list[Any]:
    """The reward functions ``config.rewards`` names; executing ones share ``reward``'s cache.

    Raises:
        ConfigError: code_quality is asked for and ruff/bandit are missing.
    """
    from revex.trainer.rewards import (
        CodeQualityReward,
        EfficiencyReward,
        ExecutionFeedbackReward,
    )

    limits, cache = _limits(config), reward.cache
    funcs: list[Any] = []
    for name in config.reward_names():
        if name == "test_pass":
            funcs.append(reward)
        elif name == "exec_feedback":
            funcs.append(ExecutionFeedbackReward(runner, limits=limits, cache=cache,
                                                 concurrency=config.concurrency))
        elif name == "code_quality":
            funcs.append(CodeQualityReward())
        elif name == "efficiency":
            funcs.append(EfficiencyReward(runner, limits=limits, cache=cache,
                                          concurrency=config.concurrency))
        elif name == "safety":
            from revex.trainer.safety import SafetyReward

            funcs.append(SafetyReward(runner, limits=limits, cache=cache,
                                      concurrency=config.concurrency,
                                      reward_mode=config.reward_mode))
    return funcs


def _run_policy_gradient(config: TrainConfig, model: Any, tokenizer: Any, tasks: list[Task],
                         reward_funcs: list[Any], recorder: RunRecorder, on_gpu: bool,
                         callbacks: list[Any]) -> None:
    """GRPO or RLOO through TRL, with the runtime-backed rewards (weighted), the curriculum
    and the evaluation callback."""
    from revex.trainer.curriculum import PassRateTracker, curriculum_sampler

    if config.algorithm == "grpo":
        from trl import GRPOConfig as ArgsCls
        from trl import GRPOTrainer as TrainerCls
    else:
        from trl import RLOOConfig as ArgsCls  # type: ignore[assignment]
        from trl import RLOOTrainer as TrainerCls  # type: ignore[assignment]
    args = policy_gradient_args(config, on_gpu)
    if config.curriculum == "difficulty":
        tasks = sorted(tasks, key=lambda t: (t.difficulty is None, t.difficulty or 0.0))
        args["shuffle_dataset"] = False
    tracker = None
    if config.curriculum == "pass_rate":
        tracker = PassRateTracker(reward_funcs[0], [t.prompt for t in tasks])
        reward_funcs = [tracker, *reward_funcs[1:]]
    trainer_cls = TrainerCls
    if tracker is not None:
        base_cls, sampler_tracker = TrainerCls, tracker

        class _CurriculumTrainer(base_cls):  # type: ignore[misc, valid-type]
            def _get_train_sampler(self, dataset: Any = None) -> Any:
                return curriculum_sampler(super()._get_train_sampler(dataset),
                                          sampler_tracker, config.seed)

        trainer_cls = _CurriculumTrainer
    peft_config = None
    if config.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=config.lora_r, lora_alpha=2 * config.lora_r,
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = trainer_cls(model=model, reward_funcs=reward_funcs, args=ArgsCls(**args),
                          train_dataset=to_dataset(tasks), processing_class=tokenizer,
                          callbacks=[recorder.callback(), *callbacks], peft_config=peft_config)
    _quiet(trainer)
    trainer.train(resume_from_checkpoint=_last_checkpoint(config) if config.resume else None)
    if config.save_model:
        trainer.save_model(str(Path(config.output_dir) / "model"))
        tokenizer.save_pretrained(str(Path(config.output_dir) / "model"))


def _last_checkpoint(config: TrainConfig) -> str | None:
    """The newest ``checkpoint-N`` in output_dir, or None (training starts fresh)."""
    found = sorted(Path(config.output_dir).glob("checkpoint-*"),
                   key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit()
                   else -1)
    return str(found[-1]) if found else None


def _quiet(trainer: Any) -> None:
    """Drop transformers' per-step dict printing; the recorder and progress bar replace it."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def _pass_rate(config: TrainConfig, reward: TestPassReward, model: Any, tokenizer: Any,
               tasks: list[Task], seed: int) -> tuple[list[str], list[str], list[float]]:
    """Sample num_generations completions per task and score them in the runtime."""
    from revex.trainer.dpo import sample_completions

    samples = sample_completions(model, tokenizer, [t.prompt for t in tasks],
                                 num_samples=config.num_generations,
                                 max_new_tokens=config.max_completion_length,
                                 temperature=config.temperature, seed=seed,
                                 top_k=config.top_k, top_p=config.top_p)
    prompts, completions, tests, entries = [], [], [], []
    for task, outs in zip(tasks, samples, strict=True):
        for out in outs:
            prompts.append(task.prompt)
            completions.append(out)
            tests.append(task.tests)
            entries.append(task.entry_point)
    scores = reward.score(prompts, completions, tests, entries)
    return prompts, completions, [s.reward for s in scores]


def _run_dpo(config: TrainConfig, reward: TestPassReward, model: Any, tokenizer: Any,
             tasks: list[Task], recorder: RunRecorder, on_gpu: bool) -> None:
    """Sample, score, pair, train; the sampled mean reward before and after is recorded."""
    from revex.trainer.dpo import build_dpo_pairs, dpo_config_kwargs, train_dpo

    prompts, completions, rewards = _pass_rate(config, reward, model, tokenizer, tasks,
                                               config.seed)
    recorder.add(0, {"reward": sum(rewards) / len(rewards)})
    pairs = build_dpo_pairs(prompts, completions, rewards,
                            max_pairs_per_prompt=config.dpo_max_pairs_per_prompt)
    kwargs = dpo_config_kwargs(
        output_dir=config.output_dir, max_steps=config.max_steps,
        learning_rate=config.learning_rate, beta=config.dpo_beta,
        batch_size=config.prompts_per_step * 2, seed=config.seed,
        max_length=model.config.max_position_embeddings, on_gpu=on_gpu,
        lr_scheduler_type=config.lr_scheduler_type, warmup_steps=config.warmup_steps)
    train_dpo(model, tokenizer, pairs, config_kwargs=kwargs, callbacks=[recorder.callback()])
    _, _, after = _pass_rate(config, reward, model, tokenizer, tasks, config.seed + 1)
    recorder.add(config.max_steps, {"reward": sum(after) / len(after), "dpo_pairs": len(pairs)})


def _write_tasks(path: Path, tasks: Sequence[Task]) -> None:
    """Write ``tasks`` as a JSONL task file (``--tasks`` of ``revex train``/``eval model``)."""
    import json

    path.write_text("".join(json.dumps({k: v for k, v in dataclasses.asdict(t).items()
                                        if v is not None}) + "\n" for t in tasks))


def _limits(config: TrainConfig) -> Limits:
    return Limits(wall_s=config.wall_s, cpu_s=config.wall_s, memory_mb=config.memory_mb)


def train(config: TrainConfig, *, runner: TestRunner | None = None) -> TrainResult:
    """Train ``config.model`` on ``config.tasks`` with rewards from executing completions.

    ``runner`` is the runtime that executes completions; by default a ``revex.Runtime`` with
    ``config.policy`` over ``config.state_dir``. Returns the paths of the run log and plot.

    Raises:
        ConfigError: an invalid config, an unknown task source, no GPU for device="cuda", or DPO
            finding no preference pairs.
    """
    config.validate()
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    tasks = load_tasks(config.tasks)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if runner is not None:
        return _train(config, runner, tasks, output_dir)
    runtime = open_runtime(config.state_dir or str(output_dir / ".revex-state"), config.policy)
    try:
        return _train(config, runtime, tasks, output_dir)
    finally:
        close = getattr(runtime, "close", None)
        if close is not None:
            close()  # the warm sandbox pool and the journal


def _train(config: TrainConfig, runner: TestRunner, tasks: list[Task],
           output_dir: Path) -> TrainResult:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    set_seed(config.seed)
    on_gpu = _on_gpu(config)
    held_out: list[Task] = []
    if config.eval_every:
        from revex.trainer.evaluate import split_tasks

        # split before the tiny model is built: its warm start must not see held-out tasks
        tasks, held_out = split_tasks(tasks, config.eval_fraction, config.seed)
    model_path = resolve_model(config, held_out)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    positions = model.config.max_position_embeddings
    tasks, skipped = fit_tasks(tasks, tokenizer, positions, config.max_completion_length)
    if held_out:
        held_out, skipped_eval = fit_tasks(held_out, tokenizer, positions,
                                           config.max_completion_length)
        skipped += skipped_eval
    recorder = RunRecorder(config.max_steps, show_progress=config.progress,
                           description=config.algorithm)
    reward = TestPassReward(runner, limits=_limits(config), concurrency=config.concurrency,
                            reward_mode=config.reward_mode)
    callbacks: list[Any] = []
    if held_out:
        from revex.trainer.evaluate import eval_callback, evaluate

        eval_reward = TestPassReward(runner, limits=_limits(config),
                                     concurrency=config.concurrency, reward_mode="all_pass")

        def evaluate_now(m: Any) -> Any:
            return evaluate(m, tokenizer, held_out, eval_reward, k=config.eval_k,
                            samples=config.eval_samples,
                            max_new_tokens=config.max_completion_length,
                            temperature=config.temperature, seed=config.seed,
                            top_k=config.top_k, top_p=config.top_p)

        _write_tasks(output_dir / "held_out.jsonl", held_out)  # for `revex eval model`
        recorder.add(0, evaluate_now(model).metrics())  # the untrained model
        callbacks.append(eval_callback(config.eval_every, evaluate_now, recorder))
    if config.algorithm == "dpo":
        _run_dpo(config, reward, model, tokenizer, tasks, recorder, on_gpu)
    else:
        _run_policy_gradient(config, model, tokenizer, tasks,
                             build_rewards(config, runner, reward), recorder, on_gpu,
                             callbacks)

    summary = summarize(recorder.records, config.window)
    log_path = write_run_log(output_dir / "run_log.json",
                             config={**dataclasses.asdict(config), "model_path": model_path,
                                     "skipped_tasks": skipped,
                                     "held_out_tasks": [t.task_id for t in held_out]},
                             records=recorder.records, summary=summary)
    plot_path = plot_run(output_dir / "run_log.png", recorder.records,
                         title=f"{config.algorithm} on {config.tasks} ({config.model})")
    return TrainResult(output_dir=output_dir, log_path=log_path, plot_path=plot_path,
                       model_path=model_path, records=recorder.records, summary=summary)
