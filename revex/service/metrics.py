"""Prometheus-style metrics for ``revex serve``, in the text exposition format (0.0.4).

Small on purpose: counters with labels and one latency histogram per route, guarded by a lock,
rendered on ``GET /metrics``. No global registry: each app owns one :class:`Metrics`.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable

#: Latency buckets in seconds (upper bounds), from a warm sandbox run to a slow compile.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + body + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
        self._help: dict[str, str] = {}
        self._hist: dict[str, list[int]] = {}
        self._hist_sum: dict[str, float] = defaultdict(float)
        self._hist_count: dict[str, int] = defaultdict(int)
        self._gauges: dict[str, Callable[[], float]] = {}

    def inc(self, name: str, help_text: str, value: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._help.setdefault(name, help_text)
            series = self._counters[name]
            series[key] = series.get(key, 0.0) + value

    def observe(self, route: str, seconds: float) -> None:
        with self._lock:
            counts = self._hist.setdefault(route, [0] * len(BUCKETS))
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    counts[i] += 1
            self._hist_sum[route] += seconds
            self._hist_count[route] += 1

    def gauge(self, name: str, read: Callable[[], float], help_text: str) -> None:
        self._help[name] = help_text
        self._gauges[name] = read

    def value(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._counters.get(name, {}).get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            for name in sorted(self._counters):
                lines += [f"# HELP {name} {self._help[name]}", f"# TYPE {name} counter"]
                for key, val in sorted(self._counters[name].items()):
                    lines.append(f"{name}{_labels(key)} {val:g}")
            name = "revex_request_seconds"
            lines += [f"# HELP {name} Request latency by route.", f"# TYPE {name} histogram"]
            for route in sorted(self._hist):
                for bound, count in zip(BUCKETS, self._hist[route], strict=True):
                    lines.append(f'{name}_bucket{{route="{_escape(route)}",le="{bound:g}"}} '
                                 f"{count}")
                lines.append(f'{name}_bucket{{route="{_escape(route)}",le="+Inf"}} '
                             f"{self._hist_count[route]}")
                lines.append(f'{name}_sum{{route="{_escape(route)}"}} {self._hist_sum[route]:.6f}')
                lines.append(f'{name}_count{{route="{_escape(route)}"}} '
                             f"{self._hist_count[route]}")
        for name, read in sorted(self._gauges.items()):
            lines += [f"# HELP {name} {self._help[name]}", f"# TYPE {name} gauge",
                      f"{name} {read():g}"]
        return "\n".join(lines) + "\n"
