"""The policy engine: one short loop over the rules, first match wins.

Each condition a rule states is checked by a plain function ``(rule_value, action_value) -> bool``;
an action that lacks an attribute a rule names does not match that rule. The decision carries the
name of the rule that made it, and is journaled with the action.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from revex.policies.model import Decision, Policy, Rule

if TYPE_CHECKING:
    from revex.policies.explain import Explanation


@dataclass(frozen=True)
class PolicyDecision:
    decision: Decision
    rule: str
    reason: str = ""

    @property
    def allowed(self) -> bool:
        return self.decision is Decision.ALLOW


@dataclass(frozen=True)
class ApprovalRequest:
    """What an approver is asked about: an action a rule marked ``approve``."""

    episode_id: str
    kind: str
    target: str
    attrs: Mapping[str, Any]
    rule: str
    reason: str


Approver = Callable[[ApprovalRequest], bool]


@functools.lru_cache(maxsize=4096)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """Translate a path glob: ``**`` spans directories, ``*`` and ``?`` stay within one."""
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def glob_match(patterns: list[str], value: Any) -> bool:
    """True when ``value`` (or every element, for a list) matches one of ``patterns``."""
    values = value if isinstance(value, list | tuple) else [value]
    if not values:
        return False
    return all(
        any(glob_regex(p).match(str(v)) for p in patterns) for v in values
    )


def _case_insensitive_glob(patterns: list[str], value: Any) -> bool:
    lowered = [p.lower() for p in patterns]
    if isinstance(value, list | tuple):
        return glob_match(lowered, [str(v).lower() for v in value])
    return glob_match(lowered, str(value).lower())


def _equal(expected: Any, value: Any) -> bool:
    return bool(expected == value)


def _member(expected: list[Any], value: Any) -> bool:
    return value in expected


def _ceiling(limit: float, value: Any) -> bool:
    return value is not None and float(value) <= float(limit)


# condition name -> (action attribute, matcher)
CONDITIONS: Mapping[str, tuple[str, Callable[[Any, Any], bool]]] = {
    "kind": ("kind", glob_match),
    "path": ("path", glob_match),
    "statement": ("statement", _case_insensitive_glob),
    "tables": ("tables", _case_insensitive_glob),
    "method": ("method", _case_insensitive_glob),
    "host": ("host", _case_insensitive_glob),
    "scheme": ("scheme", _case_insensitive_glob),
    "url_path": ("url_path", glob_match),
    "language": ("language", glob_match),
    "port": ("port", _member),
    "network": ("network", _equal),
    "irreversible": ("irreversible", _equal),
    "where": ("where", _equal),
    "max_wall_s": ("wall_s", _ceiling),
    "max_cpu_s": ("cpu_s", _ceiling),
    "max_memory_mb": ("memory_mb", _ceiling),
    "max_pids": ("pids", _ceiling),
    "max_body_bytes": ("body_bytes", _ceiling),
    "max_bytes": ("bytes", _ceiling),
}


def rule_matches(rule: Rule, attrs: Mapping[str, Any]) -> bool:
    for condition, (attr, matcher) in CONDITIONS.items():
        expected = getattr(rule, condition)
        if expected is None:
            continue
        if attr not in attrs or not matcher(expected, attrs[attr]):
            return False
    return True


class PolicyEngine:
    """Decides allow / deny / approve for an action's attributes."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def check(self, attrs: Mapping[str, Any]) -> PolicyDecision:
        """``attrs`` always holds ``kind``; effects add their own (``path``, ``method``…)."""
        for rule in self.policy.rules:
            if rule_matches(rule, attrs):
                return PolicyDecision(rule.decision, rule.name, rule.reason)
        return PolicyDecision(
            self.policy.policy.default, f"{self.policy.name}:default", "no rule matched"
        )

    def explain(self, attrs: Mapping[str, Any]) -> Explanation:
        """Every rule in order with whether it matched (and the condition that did not); the
        decision is the one :meth:`check` makes."""
        from revex.policies.explain import explain

        return explain(self.policy, attrs)

    def over_quota(self, used: Mapping[str, float], cost: Mapping[str, float]) -> str | None:
        """The name of the first quota that ``cost`` would exceed, with numbers; else None."""
        quotas = self.policy.quotas
        for name, amount in cost.items():
            limit = getattr(quotas, name, None)
            if limit is not None and used.get(name, 0) + amount > limit:
                return f"{name}: {used.get(name, 0) + amount:g} > {limit:g}"
        return None
