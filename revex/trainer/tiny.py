"""The default ``tiny`` model, built offline in seconds so training needs no model hub.

Three steps, all deterministic for a given :class:`TinySpec`:

1. a byte-level BPE tokenizer trained on local Python sources (the standard library and the
   HumanEval problems);
2. a small Llama-architecture causal LM (``LlamaConfig``: with ``qwen2`` the tokenizer reloads as
   ``Qwen2Tokenizer``, which swaps the pre-tokenizer and changes the ids);
3. a short supervised warm start on the reference solutions of the built-in tasks, so that
   sampled completions sometimes pass and RL has a reward signal (a random model never passes).

Tasks named in ``TinySpec.exclude`` (the held-out split of a run that evaluates) are left out of
both the tokenizer corpus and the warm start, so held-out scores measure what the model carries
over to unseen tasks, not what it memorised.

The result is saved with ``save_pretrained`` into ``<cache>/tiny-<hash of the spec>`` and reused.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from revex.errors import ConfigError

BUILD_FORMAT = 2  # bump when the build procedure changes, so old caches are not reused
SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class TinySpec:
    """Everything that determines the tiny model; its hash names the cache directory.

    vocab_size: BPE vocabulary size, special tokens included.
    hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads: Llama shape.
    max_position_embeddings: longest sequence (prompt + completion) the model accepts.
    stdlib_files: how many standard-library ``*.py`` files (sorted by name) train the tokenizer.
    warm_start_steps: full-batch SFT steps on the built-in references; 0 leaves the model random.
    warm_start_lr: AdamW learning rate of the warm start.
    seed: seeds weight init and the warm start.
    exclude: task ids left out of the tokenizer corpus and the warm start (held-out tasks).
    rename_copies: renamed copies (fresh argument names) of each warm-start task added to the
        warm start (``tasks.renamed_copies``), so the model learns to copy names.
    """

    vocab_size: int = 2048
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    max_position_embeddings: int = 512
    stdlib_files: int = 200
    warm_start_steps: int = 40
    warm_start_lr: float = 3e-3
    seed: int = 0
    exclude: tuple[str, ...] = ()
    rename_copies: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.exclude, tuple) or not all(
                isinstance(e, str) for e in self.exclude):
            raise ConfigError(f"TinySpec.exclude must be a tuple of task ids, got {self.exclude!r}")
        for f in dataclasses.fields(self):
            if f.name == "exclude":
                continue
            value = getattr(self, f.name)
            minimum = 0 if f.name in ("warm_start_steps", "seed", "warm_start_lr",
                                      "rename_copies") else 1
            if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
                raise ConfigError(f"TinySpec.{f.name} must be a number >= {minimum}, got {value!r}")
        if self.warm_start_lr <= 0:
            raise ConfigError(f"TinySpec.warm_start_lr must be > 0, got {self.warm_start_lr!r}")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ConfigError(
                "TinySpec: hidden_size must divide by num_heads and num_heads by num_kv_heads"
            )
        if self.vocab_size <= len(SPECIAL_TOKENS) + 256:
            raise ConfigError("TinySpec.vocab_size must exceed the 256 byte symbols + specials")

    def digest(self) -> str:
        """A short hash of the spec, the build format, the Python minor version and the
        built-in tasks (their texts shape the tokenizer and the warm start)."""
        from revex.trainer.tasks import builtin_tasks

        tasks = hashlib.sha256(json.dumps([dataclasses.asdict(t) for t in builtin_tasks()])
                               .encode()).hexdigest()
        payload = json.dumps(
            {"spec": dataclasses.asdict(self), "format": BUILD_FORMAT,
             "python": list(sys.version_info[:2]), "tasks": tasks},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def default_cache_dir() -> Path:
    """``$REVEX_CACHE_DIR`` if set, else ``~/.cache/revex``."""
    return Path(os.environ.get("REVEX_CACHE_DIR") or Path.home() / ".cache" / "revex")


def tokenizer_corpus(stdlib_files: int, exclude: Sequence[str] = ()) -> list[str]:
    """Texts the tokenizer learns from: stdlib sources, then HumanEval and built-in tasks
    (without the tasks whose id is in ``exclude``)."""
    from revex.trainer.tasks import builtin_tasks, load_humaneval

    stdlib = Path(os.__file__).parent
    texts = [p.read_text(encoding="utf-8", errors="replace")
             for p in sorted(stdlib.glob("*.py"))[:stdlib_files]]
    try:
        humaneval = load_humaneval()
    except ConfigError:
        humaneval = []
    skip = set(exclude)
    for task in [*humaneval, *builtin_tasks()]:
        if task.task_id in skip:
            continue
        texts.append(task.prompt + (task.reference or "") + "\n" + task.tests)
    return texts


def build_tokenizer(spec: TinySpec) -> Any:
    """Train the byte-level BPE tokenizer and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        show_progress=False,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(tokenizer_corpus(spec.stdlib_files, spec.exclude), trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=SPECIAL_TOKENS[0], eos_token=SPECIAL_TOKENS[0],
        pad_token=SPECIAL_TOKENS[1], padding_side="left",
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_model(spec: TinySpec, tokenizer: Any) -> Any:
    """A freshly initialised Llama causal LM sized by ``spec``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(spec.seed)
    return LlamaForCausalLM(config)


def warm_start(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], *, steps: int,
               lr: float, seed: int) -> list[float]:
    """Supervised fine-tuning on ``(prompt, completion)`` pairs; loss on completion tokens only.

    Prompt and completion are tokenized separately (as GRPO does) and the completion ends with
    EOS, so the model learns to stop. Full batch, AdamW. Returns the loss per step.
    """
    import torch

    if steps == 0 or not pairs:
        return []
    torch.manual_seed(seed)
    rows = []
    for prompt, completion in pairs:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append((p + c, [-100] * len(p) + c))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


def build_tiny(spec: TinySpec | None = None, *, cache_dir: str | Path | None = None,
               force: bool = False) -> Path:
    """Return the directory of the tiny model for ``spec``, building it on first use.

    The directory loads with ``AutoTokenizer``/``AutoModelForCausalLM.from_pretrained``. It is
    built in a temporary directory and renamed into place, so a crash never leaves half a cache.
    ``build_info.json`` inside records the spec and the warm-start losses.

    Raises:
        ConfigError: the spec is invalid.
        RevexError: the reloaded tokenizer does not reproduce the trained one's ids.
    """
    from revex.trainer.tasks import builtin_tasks, renamed_copies

    spec = spec or TinySpec()
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / f"tiny-{spec.digest()}"
    if target.is_dir() and not force:
        return target
    root.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tokenizer = build_tokenizer(spec)
    model = build_model(spec, tokenizer)
    warm = [t for t in builtin_tasks() if t.task_id not in spec.exclude]
    warm += renamed_copies(warm, spec.rename_copies, spec.seed)
    pairs = [(t.prompt, t.reference or "") for t in warm]
    losses = warm_start(model, tokenizer, pairs, steps=spec.warm_start_steps,
                        lr=spec.warm_start_lr, seed=spec.seed)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=root))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        info = {"spec": dataclasses.asdict(spec), "format": BUILD_FORMAT,
                "parameters": sum(p.numel() for p in model.parameters()),
                "warm_start_tasks": len(pairs), "warm_start_losses": losses}
        (staging / "build_info.json").write_text(json.dumps(info, indent=1))
        check_round_trip(staging, tokenizer)
        if force and target.exists():
            shutil.rmtree(target)
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():
                raise
            # Another process built the same spec meanwhile; the builds are identical.
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


ROUND_TRIP_SAMPLE = "def f(x):\n    \"\"\"Don't panic.\"\"\"\r\n    return x  # 12345 \u00e9\n"


def check_round_trip(path: str | Path, tokenizer: Any) -> None:
    """Reload the tokenizer from ``path`` and check it gives the same ids and text back.

    Raises:
        RevexError: the ids or the decoded text differ.
    """
    from transformers import AutoTokenizer

    from revex.errors import RevexError

    reloaded = AutoTokenizer.from_pretrained(str(path))
    want = tokenizer(ROUND_TRIP_SAMPLE, add_special_tokens=False)["input_ids"]
    got = reloaded(ROUND_TRIP_SAMPLE, add_special_tokens=False)["input_ids"]
    if want != got or reloaded.decode(got) != ROUND_TRIP_SAMPLE:
        raise RevexError(f"tiny tokenizer at {path} does not round-trip: {want} != {got}")
