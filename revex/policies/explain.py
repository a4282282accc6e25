"""Why a policy decides what it decides: every rule in order, whether it matched, and the first
condition that did not; and a table of the presets generated from their files.

``PolicyEngine.explain(attrs)`` (and ``revex policy explain``) uses this; the decision it
reports is the one :meth:`PolicyEngine.check` makes, from the same loop order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from revex.policies.model import Decision, Policy, Rule


@dataclass(frozen=True)
class RuleTrace:
    """One rule's verdict on the action: ``matched``, or the condition that failed and why."""

    rule: str
    decision: Decision
    matched: bool
    why_not: str = ""
    reason: str = ""


@dataclass(frozen=True)
class Explanation:
    decision: Decision
    rule: str
    reason: str
    matched: list[str] = field(default_factory=list)
    trace: list[RuleTrace] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"decision: {self.decision} by {self.rule}"
               + (f" ({self.reason})" if self.reason else "")]
        for t in self.trace:
            mark = "MATCH" if t.matched else "no   "
            first = " <- decides" if t.matched and t.rule == self.rule else ""
            out.append(f"  {mark} {t.rule} -> {t.decision}"
                       + (f": {t.why_not}" if t.why_not else "") + first)
        return out


def why_not(rule: Rule, attrs: Mapping[str, Any]) -> str:
    """'' when ``rule`` matches ``attrs``, else the first condition that fails, in words."""
    from revex.policies.engine import CONDITIONS

    for condition, (attr, matcher) in CONDITIONS.items():
        expected = getattr(rule, condition)
        if expected is None:
            continue
        if attr not in attrs:
            return f"{condition} = {expected!r}, but the action has no {attr!r}"
        if not matcher(expected, attrs[attr]):
            return f"{condition} = {expected!r} does not match {attrs[attr]!r}"
    return ""


def explain(policy: Policy, attrs: Mapping[str, Any]) -> Explanation:
    trace = []
    decided: RuleTrace | None = None
    for rule in policy.rules:
        reason = why_not(rule, attrs)
        t = RuleTrace(rule.name, rule.decision, not reason, reason, rule.reason)
        trace.append(t)
        if decided is None and t.matched:
            decided = t
    matched = [t.rule for t in trace if t.matched]
    if decided is None:
        return Explanation(policy.policy.default, f"{policy.name}:default", "no rule matched",
                           matched, trace)
    return Explanation(decided.decision, decided.rule, decided.reason, matched, trace)


def _conditions(rule: Rule) -> str:
    from revex.policies.engine import CONDITIONS

    parts = []
    for condition in CONDITIONS:
        value = getattr(rule, condition)
        if value is None:
            continue
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        parts.append(f"{condition}={value}")
    return "; ".join(parts) or "(everything)"


def preset_table(names: tuple[str, ...] = ("default", "strict", "permissive", "training")) -> str:
    """A Markdown table of the presets' rules, in the order they are checked."""
    rows = ["| preset | rule | when | decision |", "|---|---|---|---|"]
    for name in names:
        policy = Policy.load(name)
        desc = policy.policy.description
        for rule in policy.rules:
            when = _conditions(rule).replace("|", "\\|")
            rows.append(f"| `{name}` | {rule.name} | {when} | {rule.decision} |")
        rows.append(f"| `{name}` | *(default)* | anything else | "
                    f"{policy.policy.default} |")
        quotas = "; ".join(f"{k}={v:_}" for k, v in policy.quotas.model_dump().items()
                           if v is not None)
        if quotas:
            rows.append(f"| `{name}` | *(quotas)* | {quotas} per episode | |")
        if desc:
            rows.append(f"| `{name}` | *(about)* | {desc} | |")
    return "\n".join(rows)
