"""The exceptions revex raises.

Every error revex raises derives from one root, so ``except RevexError`` catches them all::

    RevexError
    ├── PolicyViolation          an action was refused (policy rule, path safety, quota, approval)
    ├── ConflictError            undo found its target changed by someone else (drift)
    ├── PolicyError              a policy file or object is malformed
    ├── ConfigError              bad input to the API: a path, a URL, an argument of the wrong shape
    │   └── InvalidPath          a workspace path that is malformed (not UTF-8, NUL byte, empty)
    ├── StateError               the state directory cannot be used (unwritable, not a directory)
    ├── JournalError             the journal cannot be read or appended to
    │   ├── JournalFormatError   a journal written by a newer (or unknown) format
    │   └── JournalCorrupt       the journal file is damaged
    ├── EpisodeClosed            an action on an episode that was committed or closed
    ├── ActionFailed             the effect itself failed (an OSError on a write, a DB error);
    │                            the partial effect was undone and the cause is chained
    └── SandboxError             the sandbox could not run the code at all (not a result status)

What sandboxed code does (a timeout, a crash, a non-zero exit) is a result with a status, never an
exception.
"""

from __future__ import annotations


class RevexError(Exception):
    """Root of every error raised by revex."""


class PolicyViolation(RevexError):
    """An action was refused before it touched anything.

    ``rule`` names the rule (or built-in check such as ``path-safety``) that refused it, and
    ``action_kind``/``target`` say what was refused.
    """

    def __init__(
        self, message: str, *, rule: str = "", action_kind: str = "", target: str = ""
    ) -> None:
        super().__init__(message)
        self.rule = rule
        self.action_kind = action_kind
        self.target = target


class ConflictError(RevexError):
    """An undo found its target in a state the episode did not leave it in.

    Nothing was changed. ``conflicts`` lists one human-readable line per drifted target.
    Pass ``force=True`` to undo anyway (the drifted change is then overwritten).
    """

    def __init__(self, message: str, conflicts: list[str] | None = None) -> None:
        super().__init__(message)
        self.conflicts = list(conflicts or [])


class PolicyError(RevexError):
    """A policy (TOML file or object) is malformed; the message names file, line and field."""


class ConfigError(RevexError):
    """An argument or configuration value is wrong; the message says how to fix it."""


class InvalidPath(ConfigError):
    """A workspace path is malformed (empty, contains NUL, not valid UTF-8)."""


class StateError(RevexError):
    """The state directory cannot be used (missing permissions, not a directory, inside a
    workspace)."""


class JournalError(RevexError):
    """The journal cannot be opened, read or appended to."""


class JournalFormatError(JournalError):
    """The journal was written by a newer or unknown revex format version."""


class JournalCorrupt(JournalError):
    """The journal file is damaged (not a database, or a broken schema)."""


class EpisodeClosed(RevexError):
    """The episode was committed or closed; start a new one to act again."""


class ActionFailed(RevexError):
    """The effect of an allowed action failed; whatever it did partially was undone.

    The original exception is chained as ``__cause__``.
    """


class SandboxError(RevexError):
    """The sandbox backend could not start or supervise the code (not a status of the code)."""
