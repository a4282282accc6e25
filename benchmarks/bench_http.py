"""Journaled REST requests against a plain httpx request to the same local server, same run.

Starts the test REST app (uvicorn, loopback) and times, interleaved request by request, each
operation sent by a plain ``httpx.Client`` and through ``ep.http`` (policy check, pre-image GET,
journal INTENT/DONE, post-state from the answer's ETag or a GET), plus two references measured
in the same loop: a plain GET of an item (one round trip) and one durable SQLite commit (WAL,
``synchronous=FULL``, 100-byte row, in the state directory's file system). Also counts the
requests the server saw per journaled operation, times POST into a 10,000-item collection (the
default, which reads the collection before its first POST only and then knows it is large, and
a service declared ``posts_create``, which never does), and the rollback of everything the
episodes did, then checks it was exact. Beside each wall time, the CPU time of the calling
thread (the server runs in another thread): what revex adds is less blurred by the load there.

Targets (issue 15, target 6): a mutation costs at most one extra round trip (the pre-image GET)
and one durable commit over plain httpx: ``revex / (plain + GET + commit) <= 1.0x`` and at most
2 requests at the server; a POST into 10,000 items costs what one into a small collection does
(``<= 1.2x``), by default and declared. Prints a table; writes
``benchmarks/results/bench_http.json``.

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


CPU: list[float] = []  # the calling thread's CPU ms of the last timed() calls


def timed(fn: Callable[[], Any]) -> float:
    start, cpu = time.perf_counter(), time.thread_time()
    fn()
    CPU.append((time.thread_time() - cpu) * 1000)
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
        cpu: dict[str, dict[str, list[float]]] = {}
        trips: dict[str, list[int]] = {}
        first: dict[str, float] = {}
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
                crow = cpu.setdefault(name, {"plain": [], "journaled": []})
                row["plain"].append(timed(mine[name]))
                crow["plain"].append(CPU[-1])
                seen = data.requests
                took = timed(theirs[name])
                crow["journaled"].append(CPU[-1])
                trips.setdefault(name, []).append(data.requests - seen)
                if i == 0:  # the first POST into a collection lists it (it may be small)
                    first[name] = took
                    continue
                row["journaled"].append(took)
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
    get_cpu = median(cpu["GET item"]["plain"])
    for name, row in samples.items():
        if name == "durable commit":
            continue
        p, j = median(row["plain"]), median(row["journaled"])
        rows[name] = {"plain_ms": p, "revex_ms": j, "overhead_ms": j - p,
                      "first_revex_ms": first[name],
                      "requests": median([float(t) for t in trips[name][1:]]),
                      "first_requests": trips[name][0],
                      "plain_cpu_ms": median(cpu[name]["plain"]),
                      "revex_cpu_ms": median(cpu[name]["journaled"][1:])}
        rows[name]["cpu_over_plain_get_ms"] = rows[name]["revex_cpu_ms"] - (
            rows[name]["plain_cpu_ms"] + (get_cpu if name != "GET item" else 0.0))
        if name in MUTATIONS or name.endswith("posts_create"):
            rows[name]["ratio"] = j / (p + get_ms + commit_ms)
            # the same ratio per iteration (its references measured within milliseconds of
            # it), then the median: a load that changes during the run cancels out more
            rows[name]["paired_ratio"] = median([
                j_i / (p_i + g_i + c_i) for j_i, p_i, g_i, c_i in zip(
                    row["journaled"], row["plain"][1:], samples["GET item"]["plain"][1:],
                    samples["durable commit"]["ref"][1:], strict=True)])
    for big, small in ((f"POST into {BIG:,} items, posts_create", "POST item, posts_create"),
                       (f"POST into {BIG:,} items", "POST item")):
        rows[big]["size_ratio"] = rows[big]["revex_ms"] / rows[small]["revex_ms"]
    return {"rows": rows, "get_ms": get_ms, "commit_ms": commit_ms, "get_cpu_ms": get_cpu,
            "rollback_per_action_ms": rollback_ms / actions, "undone": undone,
            "rollback_exact": exact}


def verdict(value: float, target: float) -> str:
    return f"{value:.2f}x (target <= {target:.2f}x) {'MET' if value <= target else 'MISSED'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="requests per operation")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args()
    out = run(args.n)
    load = os.getloadavg()
    print(f"n={args.n}, medians; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"references: plain GET (one round trip) {out['get_ms']:.2f} ms, "
          f"durable SQLite commit {out['commit_ms']:.2f} ms")
    print(f"CPU of the calling thread: plain GET {out['get_cpu_ms']:.3f} ms; 'cpu+' is revex's "
          "CPU over the plain request's and a plain GET's")
    print(f"{'operation':<38}{'plain ms':>9}{'revex ms':>9}{'overhead':>9}{'reqs':>5}"
          f"{'cpu+ ms':>8}  revex / (plain + GET + commit), of medians (per iteration)")
    for name, row in out["rows"].items():
        ratio = f"  {verdict(row['ratio'], 1.0)} ({row['paired_ratio']:.2f}x)" \
            if "ratio" in row else ""
        flag = "" if row["requests"] <= 2 or name == "GET item" else " (>2 reqs)"
        print(f"{name:<38}{row['plain_ms']:>9.2f}{row['revex_ms']:>9.2f}"
              f"{row['overhead_ms']:>9.2f}{row['requests']:>5.0f}"
              f"{row['cpu_over_plain_get_ms']:>8.3f}{ratio}{flag}")
    big = out["rows"][f"POST into {BIG:,} items"]
    print(f"first POST into {BIG:,} items (lists them): {big['first_revex_ms']:.2f} ms, "
          f"{big['first_requests']} requests (not in the medians above)")
    for label in (f"POST into {BIG:,} items, posts_create", f"POST into {BIG:,} items"):
        print(f"{label} / into a small collection: "
              f"{verdict(out['rows'][label]['size_ratio'], 1.2)}")
    print(f"rollback: {out['undone']} actions, {out['rollback_per_action_ms']:.2f} ms per "
          f"action, exact: {out['rollback_exact']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"n": args.n, "python": platform.python_version(),
                                   "machine": platform.machine(), "loadavg": load,
                                   "median_of": "n requests, interleaved", **out},
                                  indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
