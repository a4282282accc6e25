"""OpenRLHF's Python reward function (``--reward.remote_url /path/reward_func.py``, before
0.11 ``--remote_rm_url``): a file that defines ``reward_func`` can simply be::

    from revex.integrations.openrlhf import reward_func

OpenRLHF calls it one sample at a time from a thread, with the query (prompt + response), the
prompt and the label (``--data.label_key``: the row's test cases as JSON). It gets back torch
tensors, as OpenRLHF requires. The HTTP form of the same contract is ``revex serve``'s
``POST /get_reward``; both score through :func:`revex.service.openrlhf.score`.
"""

from __future__ import annotations

from typing import Any

from revex.service.openrlhf import RewardRequest, score


def reward_func(queries: list[str], prompts: list[str], labels: list[Any],
                **kwargs: Any) -> dict[str, Any]:
    """``{"rewards": Tensor, "scores": Tensor, "extra_logs": {name: Tensor}}``; ``runtime=``
    may be passed through ``kwargs``. Raises ValueError when the lists differ in length."""
    import torch

    from revex.integrations import default_runtime

    runtime = kwargs.get("runtime") or default_runtime()
    resp = score(runtime, RewardRequest(query=list(queries), prompts=list(prompts),
                                        labels=list(labels)))
    return {"rewards": torch.tensor(resp.rewards), "scores": torch.tensor(resp.scores),
            "extra_logs": {k: torch.tensor(v) for k, v in resp.extra_logs.items()}}
