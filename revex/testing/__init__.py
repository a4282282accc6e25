"""Helpers for testing code written against revex.

- :mod:`revex.testing.rest_app`: a small JSON REST app (ids, ETags, idempotency keys, awkward
  endpoints) and ``serve(app)`` to run it on loopback (needs the ``service`` extra: fastapi,
  uvicorn).
- :class:`ApprovalRecorder`: an approver that answers from a rule and records what it was asked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from revex.policies.engine import ApprovalRequest


@dataclass
class ApprovalRecorder:
    """An approver for tests: ``decide(request) -> bool`` (default: approve everything);
    every request it saw is kept in ``requests``."""

    decide: Callable[[ApprovalRequest], bool] = lambda request: True
    requests: list[ApprovalRequest] = field(default_factory=list)

    def __call__(self, request: ApprovalRequest) -> bool:
        self.requests.append(request)
        return self.decide(request)


__all__ = ["ApprovalRecorder"]
