"""OpenRLHF's remote reward contract: ``POST /get_reward``.

OpenRLHF (``--reward.remote_url``, ``--remote_rm_url`` before 0.11) posts one sample at a time:
``{"query": [prompt + response], "prompts": [prompt], "labels": [label]}`` and expects
``{"rewards": [r], "scores": [s], "extra_logs": {name: [v]}}`` with a 2xx answer even when a
sample fails (it retries non-2xx five times, then drops the reward). The label carries the
tests (``--data.label_key``): a JSON object (or its text) in one of the shapes
:func:`revex.service.labels.parse_label` accepts.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_validator

from revex.errors import ConfigError
from revex.service.labels import extract_code, judge_label, parse_label


class RewardRequest(BaseModel):
    query: list[str] = Field(max_length=4096)
    prompts: list[str] | None = None
    labels: list[Any] = Field(max_length=4096)

    @model_validator(mode="after")
    def _same_lengths(self) -> RewardRequest:
        if len(self.labels) != len(self.query):
            raise ValueError(f"labels has {len(self.labels)} entries but query has "
                             f"{len(self.query)}: give one label per query")
        if self.prompts is not None and len(self.prompts) != len(self.query):
            raise ValueError(f"prompts has {len(self.prompts)} entries but query has "
                             f"{len(self.query)}")
        return self


class RewardResponse(BaseModel):
    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float]]


def response_of(query: str, prompt: str | None) -> str:
    """The model's response: the query with its prompt removed (OpenRLHF sends both)."""
    if prompt and query.startswith(prompt):
        return query[len(prompt):]
    return query


def score(runtime: Any, req: RewardRequest) -> RewardResponse:
    """Score each sample: the pass rate of its code against its label's tests, in the sandbox.

    A sample whose label is malformed or whose response has no code scores 0 and is counted in
    ``extra_logs["invalid"]``; nothing raises for one bad sample.
    """
    rewards: list[float] = []
    passed: list[float] = []
    invalid: list[float] = []
    for i, query in enumerate(req.query):
        prompt = req.prompts[i] if req.prompts else None
        code = extract_code(response_of(query, prompt))
        try:
            label = parse_label(req.labels[i])
        except ConfigError:
            label = None
        if code is None or label is None:
            rewards.append(0.0)
            passed.append(0.0)
            invalid.append(1.0)
            continue
        try:
            verdict = judge_label(runtime, code, label)
        except ConfigError:
            rewards.append(0.0)
            passed.append(0.0)
            invalid.append(1.0)
            continue
        rewards.append(verdict.pass_rate)
        passed.append(1.0 if verdict.all_passed else 0.0)
        invalid.append(0.0)
    return RewardResponse(rewards=rewards, scores=list(rewards),
                          extra_logs={"all_passed": passed, "invalid": invalid})
