"""Thin adapters for trainers that call a reward function in-process (verl, OpenRLHF).

Each adapter translates its trainer's calling convention onto the same judging code as
``revex serve`` (:mod:`revex.service.labels`); none has a pipeline of its own. They share one
runtime per process, opened on first use with the ``training`` policy (see
:func:`default_runtime`).
"""

from __future__ import annotations

import threading
from typing import Any

_lock = threading.Lock()
_runtime: Any = None


def default_runtime() -> Any:
    """This process's runtime for the adapters: ``training`` policy, state in the same cache
    dir as the trainer's rewards (:func:`revex.trainer.rewards.default_reward_state_dir`)."""
    global _runtime
    with _lock:
        if _runtime is None:
            from revex.runtime.runtime import Runtime
            from revex.trainer.rewards import default_reward_state_dir

            _runtime = Runtime(state_dir=default_reward_state_dir(), policy="training",
                               audit=None)
        return _runtime
