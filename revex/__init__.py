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
from revex.policies.engine import ApprovalRequest, PolicyDecision
from revex.policies.model import Policy
from revex.runtime.episode import Checkpoint, Episode
from revex.runtime.runtime import Runtime
from revex.runtime.sandbox.base import ExecResult, ExecStatus, Limits

__all__ = [
    "ActionFailed",
    "ApprovalRequest",
    "Checkpoint",
    "ConfigError",
    "ConflictError",
    "Episode",
    "EpisodeClosed",
    "ExecResult",
    "ExecStatus",
    "JournalError",
    "Limits",
    "Policy",
    "PolicyDecision",
    "PolicyError",
    "PolicyViolation",
    "RevexError",
    "Runtime",
    "SandboxError",
    "StateError",
]
__version__ = "0.1.0"
