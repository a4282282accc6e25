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

Calibration (the defaults): GRPO on the 32 built-in tasks with the tiny model (205k parameters,
40 warm-start steps), 8 prompts x 8 generations per step, temperature 0.7, learning rate 1e-3
(constant after 10 warm-up steps), 60 steps. Mean reward over the first vs the last 8 steps, on
2 CPU cores: seed 0 0.058 -> 0.292, seed 1 0.105 -> 0.242, seed 2 0.121 -> 0.303. Observed while
calibrating (one run each): 60 warm-start steps start near 0.46 and gained only 0.07; at
temperature 1.0 the reward stayed flat or fell; without warm-up the first Adam steps knocked the
reward down before it recovered; without masking truncated completions the completions shrank
to 2-3 tokens.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from revex.errors import ConfigError
from revex.runtime.sandbox.base import Limits
from revex.trainer.executor import TestRunner, open_runtime
from revex.trainer.rewards import TestPassReward
from revex.trainer.runlog import RunRecorder, plot_run, summarize, write_run_log
from revex.trainer.tasks import Task, load_tasks, to_dataset

ALGORITHMS = ("grpo", "rloo", "dpo")
REWARDS = ("test_pass", "exec_feedback", "code_quality", "efficiency")


@dataclass
class TrainConfig:
    """Settings of one training run. Defaults are the calibrated tiny-model run (see README)."""

    model: str = "tiny"
    """Model to train: "tiny" (built offline and cached), a local directory or a hub id."""
    algorithm: str = "grpo"
    """"grpo", "rloo" or "dpo" (DPO on pairs of passing vs failing sampled completions)."""
    tasks: str = "builtin"
    """Task source: "builtin" (32 easy functions), "humaneval", or a path to a JSONL file of
    {prompt, tests, entry_point[, reference]}."""
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
    """Comma-separated reward functions: test_pass (always first), exec_feedback,
    code_quality, efficiency (needs a reference column); all execution goes through the
    runtime."""
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
        unknown = set(self.reward_names()) - set(REWARDS)
        if unknown or "test_pass" not in self.reward_names():
            raise ConfigError(f"rewards must include test_pass and be among "
                              f"{', '.join(REWARDS)}, got {self.rewards!r}")
        if self.warmup_steps < 0:
            raise ConfigError("warmup_steps must be >= 0")
        if self.tiny_warm_start_steps < 0:
            raise ConfigError("tiny_warm_start_steps must be >= 0")
        if not self.model:
            raise ConfigError("model must be 'tiny', a local path or a hub id")


    def reward_names(self) -> list[str]:
        """The names in ``rewards``, in order."""
        return [name.strip() for name in self.rewards.split(",") if name.strip()]


def field_docs(cls: type = TrainConfig) -> dict[str, str]:
    """Map each dataclass field of ``cls`` to the docstring written under it (the --help text)."""
    import ast
    import inspect
    import itertools
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
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


def resolve_model(config: TrainConfig) -> str:
    """The model directory or hub id to load; builds the tiny model for ``"tiny"``."""
    if config.model != "tiny":
        return config.model
    from revex.trainer.tiny import TinySpec, build_tiny

    spec = TinySpec(warm_start_steps=config.tiny_warm_start_steps, seed=config.seed)
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
        "per_device_train_batch_size": config.prompts_per_step * config.num_generations,
        "temperature": config.temperature, "top_k": config.top_k, "top_p": config.top_p,
        "beta": config.beta, "logging_steps": 1,
        "mask_truncated_completions": config.mask_truncated_completions,
        "num_iterations": config.num_iterations,
        "save_strategy": "no", "report_to": "none", "gradient_checkpointing": False,
        "disable_tqdm": True, "use_cpu": not on_gpu, "bf16": on_gpu,
    }


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
    return funcs


def _run_policy_gradient(config: TrainConfig, model: Any, tokenizer: Any, tasks: list[Task],
                         reward_funcs: list[Any], recorder: RunRecorder, on_gpu: bool) -> None:
    """GRPO or RLOO through TRL, with the runtime-backed reward."""
    if config.algorithm == "grpo":
        from trl import GRPOConfig as ArgsCls
        from trl import GRPOTrainer as TrainerCls
    else:
        from trl import RLOOConfig as ArgsCls  # type: ignore[assignment]
        from trl import RLOOTrainer as TrainerCls  # type: ignore[assignment]
    args = _common_args(config, on_gpu)
    if config.algorithm == "grpo":
        args["loss_type"] = config.loss_type
    trainer = TrainerCls(model=model, reward_funcs=reward_funcs, args=ArgsCls(**args),
                         train_dataset=to_dataset(tasks), processing_class=tokenizer,
                         callbacks=[recorder.callback()])
    _quiet(trainer)
    trainer.train()


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
    model_path = resolve_model(config)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    tasks, skipped = fit_tasks(tasks, tokenizer, model.config.max_position_embeddings,
                               config.max_completion_length)
    recorder = RunRecorder(config.max_steps, show_progress=config.progress,
                           description=config.algorithm)
    reward = TestPassReward(runner, limits=_limits(config), concurrency=config.concurrency,
                            reward_mode=config.reward_mode)
    if config.algorithm == "dpo":
        _run_dpo(config, reward, model, tokenizer, tasks, recorder, on_gpu)
    else:
        _run_policy_gradient(config, model, tokenizer, tasks,
                             build_rewards(config, runner, reward), recorder, on_gpu)

    summary = summarize(recorder.records, config.window)
    log_path = write_run_log(output_dir / "run_log.json",
                             config={**dataclasses.asdict(config), "model_path": model_path,
                                     "skipped_tasks": skipped},
                             records=recorder.records, summary=summary)
    plot_path = plot_run(output_dir / "run_log.png", recorder.records,
                         title=f"{config.algorithm} on {config.tasks} ({config.model})")
    return TrainResult(output_dir=output_dir, log_path=log_path, plot_path=plot_path,
                       model_path=model_path, records=recorder.records, summary=summary)
