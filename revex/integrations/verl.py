"""verl's ``custom_reward_function``: revex judges in-process, no SandboxFusion server needed.

In verl's config::

    custom_reward_function:
      path: /path/to/site-packages/revex/integrations/verl.py   # or a file that imports it
      name: compute_score

``ground_truth`` is the row's test cases (``reward_model.ground_truth``), in any shape
:func:`revex.service.labels.parse_label` accepts: ``{"inputs", "outputs"}`` (with optional
``fn_name``), ``{"tests", "entry_point"}``, ``{"test_list"}``. The solution is the last fenced
code block of ``solution_str`` (or all of it when it has no fence). The score is the fraction
of cases passed, 0.0 for a malformed label or a response without code.
"""

from __future__ import annotations

from typing import Any

from revex.errors import ConfigError
from revex.service.labels import extract_code, judge_label, parse_label


def compute_score(data_source: str, solution_str: str, ground_truth: Any,
                  extra_info: dict[str, Any] | None = None, **kwargs: Any) -> float:
    """verl's reward signature; ``runtime=`` may be passed through ``kwargs`` (a
    :class:`revex.Runtime`), else the process's :func:`~revex.integrations.default_runtime`."""
    from revex.integrations import default_runtime

    runtime = kwargs.get("runtime") or default_runtime()
    code = extract_code(solution_str)
    if code is None:
        return 0.0
    try:
        label = parse_label(ground_truth)
        return judge_label(runtime, code, label).pass_rate
    except ConfigError:
        return 0.0
