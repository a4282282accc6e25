"""Trusted comparisons of what a solution produced with what the dataset expects.

They run on the host, on plain data only: stdout decoded as text, or values the harness decoded
into built-in types (so no object of the solution's can take part in ``==``).
"""

from __future__ import annotations

import math
import re
from typing import Any

from revex.judge.cases import Compare

_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")


def _close(got: float, want: float, cmp: Compare) -> bool:
    diff = abs(got - want)
    return diff <= (cmp.abs_tol or 0.0) or diff <= (cmp.rel_tol or 0.0) * abs(want)


def tokens_match(got: str, want: str, cmp: Compare) -> bool:
    if got == want:
        return True
    if not cmp.tolerant or not (_NUMBER.match(got) and _NUMBER.match(want)):
        return False
    g, w = float(got), float(want)
    return math.isfinite(g) and math.isfinite(w) and _close(g, w, cmp)


def output_matches(got: str, want: str, cmp: Compare) -> bool:
    """Whether stdout ``got`` matches the expected ``want`` under ``cmp``."""
    if cmp.mode == "exact":
        return got == want
    if cmp.mode == "lines":
        g = [line.rstrip() for line in got.replace("\r\n", "\n").rstrip().split("\n")]
        w = [line.rstrip() for line in want.replace("\r\n", "\n").rstrip().split("\n")]
        if cmp.tolerant:
            return len(g) == len(w) and all(
                output_matches(a, b, Compare("tokens", cmp.abs_tol, cmp.rel_tol))
                for a, b in zip(g, w, strict=True))
        return g == w
    gt, wt = got.split(), want.split()
    return len(gt) == len(wt) and all(tokens_match(a, b, cmp) for a, b in zip(gt, wt,
                                                                           strict=True))


def _plain(v: Any) -> Any:
    # JSON has no tuples: a returned tuple matches an expected list (as in APPS' checker).
    if isinstance(v, tuple | list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def value_matches(got: Any, want: Any, cmp: Compare) -> bool:
    """Whether a returned value matches the expected JSON value: equal (tuples as lists,
    floats within tolerance when set), or, as in APPS, equal to ``want[0]`` when the dataset
    wrapped the expected value in a one-element list."""
    g = _plain(got)
    if _equal(g, want, cmp):
        return True
    return isinstance(want, list) and len(want) == 1 and _equal(g, want[0], cmp)


def _equal(g: Any, w: Any, cmp: Compare) -> bool:
    if type(g) in (int, float) and type(w) in (int, float) and cmp.tolerant:
        return bool(g == w) or (math.isfinite(g) and math.isfinite(w) and _close(g, w, cmp))
    if isinstance(g, list) and isinstance(w, list):
        return len(g) == len(w) and all(_equal(a, b, cmp) for a, b in zip(g, w, strict=True))
    if isinstance(g, dict) and isinstance(w, dict):
        return g.keys() == w.keys() and all(_equal(g[k], w[k], cmp) for k in g)
    return (type(g) is type(w) and bool(g == w)) or (
        type(g) in (int, float) and type(w) in (int, float) and bool(g == w))
