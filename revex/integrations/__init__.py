"""Thin adapters for trainers that call a reward function in-process (verl, OpenRLHF).

Each adapter translates its trainer's calling convention onto the same judging code as
``revex serve`` (:mod:`revex.service.labels`); none has a pipeline of its own. They share one
runtime per process, opened on first use with the ``training`` policy (see
:func:`default_runtime`).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

_lock = threading.Lock()
_runtime: Any = None


def default_runtime() -> Any:
    """This process's runtime for the adapters: ``training`` policy, state dir
    ``$REVEX_STATE_DIR`` or ``$XDG_CACHE_HOME/revex/state`` (``~/.cache/revex/state``)."""
    global _runtime
    with _lock:
        if _runtime is None:
            from revex.runtime.runtime import Runtime

            state = os.environ.get("REVEX_STATE_DIR")
            if not state:
                cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
                state = str(Path(cache) / "revex" / "state")
            _runtime = Runtime(state_dir=state, policy="training", audit=None)
        return _runtime
