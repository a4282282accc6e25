"""Journaled REST requests against a plain httpx request to the same local server, same run.

Starts the test REST app (uvicorn, loopback) and times, interleaved request by request, each
operation sent by a plain ``httpx.Client`` and through ``ep.http`` (policy check, pre-image GET,
journal INTENT/DONE, post-state from the answer's ETag or a GET), plus two references measured
in the same loop: a plain GET of an item (one round trip) and one durable SQLite commit (WAL,
``synchronous=FULL``, 100-byte row, in the state directory's file system). Also counts the
requests the server saw per journaled operation, times POST into a 10,000-item collection (the
default, which reads the collection before a POST, and a service declared ``posts_create``,
which does not), and the rollback of everything the episodes did, then checks it was exact.

Targets (issue 15, target 6): a mutation costs at most one extra round trip (the pre-image GET)
and one durable commit over plain httpx: ``revex / (plain + GET + commit) <= 1.0x`` and at most
2 requests at the server; a declared POST into 10,000 items costs what one into a small
collection does (``<= 1.2x``). Prints a table; writes ``benchmarks/results/bench_http.json``.

    PYTHONPATH=. python benchmarks/bench_http.py [--n 100]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from revex.runtime.effects.http_compensations import Compensations
from revex.runtime.runtime import Runtime
from revex.testing.rest_app import create_app, serve

RESULTS = Path(__file__).parent / "results" / "bench_http.json"
BIG = 10_000
MUTATIONS = ("PUT item", "PATCH item", "DELETE item", "POST item",
             f"POST into {BIG:,} items", f"POST into {BIG:,} items, posts_create")


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def durable_commit(db: sqlite3.Connection) -> Callable[[], None]:
    def commit() -> None:
        db.execute("INSERT INTO t VALUES (?)", (os.urandom(100),))
        db.commit()
    return commit


def run(n: int) -> dict[str, Any]:
    app = create_app()
    data = app.state.data
    with serve(app) as base, tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        plain = httpx.Client()
        # plain and journaled requests touch disjoint items (a plain write to an item the
        # episode wrote would be drift, and rollback would rightly refuse): plain 1..n,
        # journaled n+1..2n
        for coll in ("items", "big", "bigdecl"):
            items = data.collections.setdefault(coll, {})
            count = 2 * n if coll == "items" else BIG
            for i in range(1, count + 1):
                items[i] = {"id": i, "name": f"seed{i}", "tags": [i]}
        before = copy.deepcopy(data.collections)
        db = sqlite3.connect(Path(tmp) / "ref.db", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE t (x BLOB)")
        db.isolation_level = ""
        trusting = Compensations()
        trusting.trust_posts_create("127.0.0.1:*")
        rt = Runtime(Path(tmp) / "state", policy="permissive", audit=None)
        rt2 = Runtime(Path(tmp) / "state2", policy="permissive", audit=None,
                      compensations=trusting)
        samples: dict[str, dict[str, list[float]]] = {}
        trips: dict[str, list[int]] = {}
        ep = rt.episode(Path(tmp) / "ws")
        ep2 = rt2.episode(Path(tmp) / "ws2")

        def ops(c: httpx.Client, c2: httpx.Client, o: int, i: int) -> dict[str, Callable[[], Any]]:
            item = f"{base}/items/{o + i + 1}"
            return {
                "GET item": lambda: c.get(item),
                "PUT item": lambda: c.put(item, json={"v": i}),
                "PATCH item": lambda: c.patch(item, json={"w": i}),
                "DELETE item": lambda: c.delete(item),
                "POST item": lambda: c.post(f"{base}/things{o}", json={"v": i}),
                f"POST into {BIG:,} items": lambda: c.post(f"{base}/big", json={"v": i}),
                f"POST into {BIG:,} items, posts_create":
                    lambda: c2.post(f"{base}/bigdecl", json={"v": i}),
                "POST item, posts_create": lambda: c2.post(f"{base}/small{o}", json={"v": i}),
            }

        commit = durable_commit(db)
        for i in range(n):
            samples.setdefault("durable commit", {}).setdefault("ref", []).append(timed(commit))
            mine = ops(plain, plain, 0, i)
            theirs = ops(ep.http, ep2.http, n, i)
            for name in mine:
                row = samples.setdefault(name, {"plain": [], "journaled": []})
                row["plain"].append(timed(mine[name]))
                seen = data.requests
                row["journaled"].append(timed(theirs[name]))
                trips.setdefault(name, []).append(data.requests - seen)
        actions = sum(1 for r in rt.journal.records(ep.id) + rt2.journal.records(ep2.id)
                      if r.status.name == "INTENT" and r.kind == "http.request") or 1
        start = time.perf_counter()
        undone = ep.rollback() + ep2.rollback()
        rollback_ms = (time.perf_counter() - start) * 1000
        ep.close()
        ep2.close()
        rt.close()
        rt2.close()
        db.close()
        plain.close()
        after = {c: data.collections[c] for c in before}
        # the plain client's own writes (items 1..n, n items POSTed to each collection) are
        # not the episode's to undo: compare the rest
        exact = all(after[c].get(k) == v for c, items in before.items()
                    for k, v in items.items() if not (c == "items" and k <= n)) \
            and all(len(after[c]) == BIG + n for c in ("big", "bigdecl")) \
            and not any(data.collections.get(f"{w}{n}") for w in ("things", "small"))
    if os.environ.get("BENCH_DEBUG"):
        for c, items in before.items():
            for k, v in items.items():
                if after[c].get(k) != v and not (c == "items" and k <= n):
                    print("differs", c, k, v, after[c].get(k))
        print({c: (len(before[c]), len(after[c])) for c in before},
              {c: len(v) for c, v in data.collections.items()})
    rows: dict[str, Any] = {}
    get_ms = median(samples["GET item"]["plain"])
    commit_ms = median(samples["durable commit"]["ref"])
    for name, row in samples.items():
        if name == "durable commit":
            continue
        p, j = median(row["plain"]), median(row["journaled"])
        rows[name] = {"plain_ms": p, "revex_ms": j, "overhead_ms": j - p,
                      "requests": median([float(t) for t in trips[name]])}
        if name in MUTATIONS or name.endswith("posts_create"):
            rows[name]["ratio"] = j / (p + get_ms + commit_ms)
    small = rows["POST item, posts_create"]["revex_ms"]
    rows[f"POST into {BIG:,} items, posts_create"]["size_ratio"] = \
        rows[f"POST into {BIG:,} items, posts_create"]["revex_ms"] / small
    return {"rows": rows, "get_ms": get_ms, "commit_ms": commit_ms,
            "rollback_per_action_ms": rollback_ms / actions, "undone": undone,
            "rollback_exact": exact}


def verdict(value: float, target: float) -> str:
    return f"{value:.2f}x (target <= {target:.2f}x) {'MET' if value <= target else 'MISSED'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="requests per operation")
    args = parser.parse_args()
    out = run(args.n)
    load = os.getloadavg()
    print(f"n={args.n}, medians; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"references: plain GET (one round trip) {out['get_ms']:.2f} ms, "
          f"durable SQLite commit {out['commit_ms']:.2f} ms")
    print(f"{'operation':<38}{'plain ms':>9}{'revex ms':>9}{'overhead':>9}{'reqs':>5}  "
          "revex / (plain + GET + commit)")
    for name, row in out["rows"].items():
        ratio = f"  {verdict(row['ratio'], 1.0)}" if "ratio" in row else ""
        flag = "" if row["requests"] <= 2 or name == "GET item" else " (>2 reqs)"
        print(f"{name:<38}{row['plain_ms']:>9.2f}{row['revex_ms']:>9.2f}"
              f"{row['overhead_ms']:>9.2f}{row['requests']:>5.0f}{ratio}{flag}")
    size = out["rows"][f"POST into {BIG:,} items, posts_create"]["size_ratio"]
    print(f"POST into {BIG:,} items / into a small collection, posts_create: "
          f"{verdict(size, 1.2)}")
    print(f"rollback: {out['undone']} actions, {out['rollback_per_action_ms']:.2f} ms per "
          f"action, exact: {out['rollback_exact']}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"n": args.n, "python": platform.python_version(),
                                   "machine": platform.machine(), "loadavg": load,
                                   "median_of": "n requests, interleaved", **out},
                                  indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
