"""DPO from execution preferences: sample, run in the runtime, pair passing against failing.

The loop is short: :func:`sample_completions` draws several completions per prompt from the
current model, the runtime scores them (:func:`revex.trainer.executor.score_completions`),
:func:`build_dpo_pairs` pairs better-scoring against worse-scoring completions of the same prompt,
and TRL's ``DPOTrainer`` trains on the pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from revex.errors import ConfigError


def build_dpo_pairs(prompts: Sequence[str], completions: Sequence[str],
                    scores: Sequence[float | None], *, max_pairs_per_prompt: int = 4,
                    min_margin: float = 0.0) -> list[dict[str, str]]:
    """Build ``{prompt, chosen, rejected}`` preference rows from scored samples.

    The three sequences are parallel: ``completions[i]`` was sampled for ``prompts[i]`` and
    scored ``scores[i]`` (None means "not scored" and is skipped). For each prompt, duplicate
    completions are merged (keeping the first score), the best-scoring completions are chosen and
    every completion scoring more than ``min_margin`` below the best is a rejection candidate.
    Chosen and rejected are paired round-robin in sampling order, at most
    ``max_pairs_per_prompt`` pairs per prompt. Prompts whose samples all score alike give no pairs.
    Output order follows the first appearance of each prompt, so the result is deterministic.

    Raises:
        ConfigError: the sequences differ in length, ``max_pairs_per_prompt`` < 1 or
            ``min_margin`` < 0.
    """
    if not (len(prompts) == len(completions) == len(scores)):
        raise ConfigError(
            f"build_dpo_pairs: prompts ({len(prompts)}), completions ({len(completions)}) and "
            f"scores ({len(scores)}) must have the same length"
        )
    if max_pairs_per_prompt < 1:
        raise ConfigError("build_dpo_pairs: max_pairs_per_prompt must be >= 1")
    if min_margin < 0:
        raise ConfigError("build_dpo_pairs: min_margin must be >= 0")
    by_prompt: dict[str, dict[str, float]] = {}
    for prompt, completion, score in zip(prompts, completions, scores, strict=True):
        if score is None:
            continue
        by_prompt.setdefault(prompt, {}).setdefault(completion, float(score))
    pairs: list[dict[str, str]] = []
    for prompt, scored in by_prompt.items():
        if len(scored) < 2:
            continue
        best = max(scored.values())
        chosen = [c for c, s in scored.items() if s == best]
        rejected = [c for c, s in scored.items() if s < best - min_margin]
        if not rejected:
            continue
        n = min(max(len(chosen), len(rejected)), max_pairs_per_prompt)
        for k in range(n):
            pairs.append({"prompt": prompt, "chosen": chosen[k % len(chosen)],
                          "rejected": rejected[k % len(rejected)]})
    return pairs


def sample_completions(model: Any, tokenizer: Any, prompts: Sequence[str], *, num_samples: int,
                       max_new_tokens: int, temperature: float, seed: int, top_k: int = 0,
                       top_p: float = 1.0, batch_size: int = 16) -> list[list[str]]:
    """Sample ``num_samples`` completions for each prompt; returns one list per prompt.

    ``batch_size`` prompts (left-padded) go through one ``generate`` call.
    """
    import torch

    torch.manual_seed(seed)
    return generate_batched(model, tokenizer, prompts, batch_size=batch_size,
                            do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p,
                            max_new_tokens=max_new_tokens, num_return_sequences=num_samples)


def generate_batched(model: Any, tokenizer: Any, prompts: Sequence[str], *, batch_size: int,
                     num_return_sequences: int = 1, **generate_kwargs: Any) -> list[list[str]]:
    """``model.generate`` over ``prompts`` in left-padded batches (the model in eval mode);
    returns the decoded completions (special tokens dropped), one list per prompt."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    out: list[list[str]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start:start + batch_size])
        enc = tokenizer(chunk, return_tensors="pt", add_special_tokens=False, padding=True,
                        padding_side="left").to(device)
        with torch.no_grad():
            generated = model.generate(
                **enc, num_return_sequences=num_return_sequences,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                **generate_kwargs,
            )
        texts = tokenizer.batch_decode(generated[:, enc["input_ids"].shape[1]:],
                                       skip_special_tokens=True)
        for i in range(len(chunk)):
            out.append(texts[i * num_return_sequences:(i + 1) * num_return_sequences])
    return out


def dpo_config_kwargs(*, output_dir: str, max_steps: int, learning_rate: float, beta: float,
                      batch_size: int, seed: int, max_length: int, on_gpu: bool,
                      lr_scheduler_type: str = "constant_with_warmup",
                      warmup_steps: int = 0) -> dict[str, Any]:
    """Keyword arguments for ``trl.DPOConfig`` suited to a short offline run."""
    return {
        "output_dir": output_dir, "max_steps": max_steps, "learning_rate": learning_rate,
        "lr_scheduler_type": lr_scheduler_type, "warmup_steps": warmup_steps,
        "beta": beta, "per_device_train_batch_size": batch_size, "seed": seed,
        "max_length": max_length, "logging_steps": 1, "save_strategy": "no",
        "report_to": "none", "gradient_checkpointing": False, "disable_tqdm": True,
        "use_cpu": not on_gpu, "bf16": on_gpu,
    }


def train_dpo(model: Any, tokenizer: Any, pairs: list[dict[str, str]], *,
              config_kwargs: dict[str, Any], callbacks: Sequence[Any]) -> Any:
    """Train ``model`` with DPO on ``pairs``; the reference model is a frozen copy of ``model``.

    The copy is made in memory because TRL would otherwise reload the reference from
    ``config._name_or_path``, which need not be loadable offline.

    Raises:
        ConfigError: ``pairs`` is empty (every prompt's samples scored alike).
    """
    import copy

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    if not pairs:
        raise ConfigError("DPO found no preference pairs: every prompt's samples scored alike; "
                          "sample more completions per prompt or use a warmer model")
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model),
                         args=DPOConfig(**config_kwargs), train_dataset=Dataset.from_list(pairs),
                         processing_class=tokenizer, callbacks=list(callbacks))
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)  # the run recorder reports progress instead
    trainer.remove_callback(ProgressCallback)
    trainer.train()
    return trainer
