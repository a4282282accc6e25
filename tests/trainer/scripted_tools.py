"""A tiny tool-calling model for trainer tests whose generation is scripted (TRL's own test
technique): the first turn emits the given tool calls, every later turn says "done"."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def tool_model(cache_dir: Path) -> tuple[Any, Any]:
    """The offline tiny model and a tokenizer with a chat template TRL parses tool calls of."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.chat_template_utils import qwen2_5_chat_template

    from revex.trainer.tiny import TinySpec, build_tiny

    path = build_tiny(TinySpec(warm_start_steps=0, stdlib_files=40), cache_dir=cache_dir)
    tok = AutoTokenizer.from_pretrained(path)
    tok.add_special_tokens({"additional_special_tokens": [
        "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]})
    tok.chat_template = qwen2_5_chat_template
    model = AutoModelForCausalLM.from_pretrained(path)
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    return model, tok


def scripted_generate(tok: Any, calls: list[tuple[str, dict[str, Any]]]
                      ) -> Callable[..., Any]:
    """A stand-in for ``model.generate``: tool calls first, then "done"."""
    import torch

    first_turn = "".join(f"<tool_call>\n{json.dumps({'name': n, 'arguments': a})}\n</tool_call>"
                         for n, a in calls) + "<|im_end|>"
    response_id = tok.convert_tokens_to_ids("<tool_response>")

    def fake_generate(input_ids: torch.Tensor, **kwargs: object) -> torch.Tensor:
        rows = []
        for row in input_ids:
            text = "done<|im_end|>" if (row == response_id).any() else first_turn
            ids = tok(text, add_special_tokens=False)["input_ids"]
            rows.append(torch.cat([row, torch.tensor(ids)]))
        width = max(len(r) for r in rows)
        return torch.stack([torch.cat([r, torch.full((width - len(r),), tok.pad_token_id)])
                            for r in rows])

    return fake_generate
