"""revex: a secure code-execution sandbox with a reversible-action runtime."""

from __future__ import annotations

from revex.errors import (
    ActionFailed,
    ConfigError,
    ConflictError,
    EpisodeClosed,
    JournalError,
    PolicyError,
    PolicyViolation,
    RevexError,
    SandboxError,
    StateError,
)
from revex.runtime.sandbox.base import ExecResult, ExecStatus, Limits

__all__ = [
    "ActionFailed",
    "ConfigError",
    "ConflictError",
    "EpisodeClosed",
    "ExecResult",
    "ExecStatus",
    "JournalError",
    "Limits",
    "PolicyError",
    "PolicyViolation",
    "RevexError",
    "SandboxError",
    "StateError",
]
__version__ = "0.1.0"
