"""Overhead of journaled SQL against the raw statement, per database (issue 15, target 5).

For each database, interleaved in one run: a single-row UPDATE (raw DBAPI + COMMIT vs. through
a durable revex episode: capture, images, INTENT, COMMIT, DONE) next to one durable SQLite WAL
commit (the "one commit" the overhead is measured in); a 10,000-row UPDATE and a 10,000-row
DELETE both ways; and the rollback of each journaled 10,000-row change. Prints each ratio next
to its target and writes ``benchmarks/results/bench_sql.json``.

    PYTHONPATH=. python benchmarks/bench_sql.py [--dbs sqlite,postgres,mariadb] [--n 200]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from revex.runtime.runtime import Runtime

ROWS = 10_000
SERVERS = {
    "postgres": os.environ.get("REVEX_TEST_PG_URL",
                               "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
    "mariadb": os.environ.get("REVEX_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test"),
}


@contextmanager
def database(kind: str, tmp: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp / 'ws' / 'bench.db'}"
        return
    server = SERVERS[kind]
    name = f"revex_bench_{secrets.token_hex(4)}"
    quote = '"' if kind == "postgres" else "`"
    admin = create_engine(server, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {quote}{name}{quote}"))
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE {quote}{name}{quote}"
                              + (" WITH (FORCE)" if kind == "postgres" else "")))
        admin.dispose()


def fill(url: str, create: bool = False) -> None:
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as conn:
        if create:
            conn.execute(text("CREATE TABLE bench (id INT PRIMARY KEY, v INT, s VARCHAR(20))"))
        conn.execute(text("INSERT INTO bench VALUES (:i, 0, :s)"),
                     [{"i": i, "s": f"row {i}"} for i in range(ROWS)])
    engine.dispose()


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class DurableCommit:
    """One durable SQLite WAL commit (synchronous=FULL) of a 100-byte row: the unit of the
    1-row target, measured beside it."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("CREATE TABLE t (b BLOB)")

    def __call__(self) -> None:
        self.conn.execute("BEGIN")
        self.conn.execute("INSERT INTO t VALUES (?)", (os.urandom(100),))
        self.conn.execute("COMMIT")


def measure(url: str, n: int, big: int, tmp: Path) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in (
        "single_raw", "single_revex", "commit", "update_raw", "update_revex", "update_undo",
        "delete_raw", "delete_revex", "delete_undo")}
    engine = create_engine(url, poolclass=NullPool)
    raw = engine.raw_connection()
    cur = raw.cursor()
    mark = "?" if url.startswith("sqlite") else "%s"
    commit = DurableCommit(tmp / "commit.db")

    def raw_run(sql: str, *args: Any) -> Callable[[], None]:
        def run() -> None:
            cur.execute(sql, args)
            raw.commit()
        return run

    with Runtime(tmp / "state", policy="permissive", audit=None) as rt:
        with rt.episode(workspace=tmp / "ws", databases={"app": url}, on_exit="commit") as ep:
            db = ep.sql("app")
            db.execute("UPDATE bench SET v = v WHERE id = 0")  # connect + install capture
            for i in range(n):  # interleaved: raw, journaled, one durable commit
                times["single_raw"].append(timed(raw_run(
                    f"UPDATE bench SET v = v + 1 WHERE id = {mark}", i % ROWS)))
                times["single_revex"].append(timed(lambda i=i: db.execute(
                    "UPDATE bench SET v = v + 1 WHERE id = :i", {"i": (i + 1) % ROWS})))
                times["commit"].append(timed(commit))
        for _ in range(big):
            for verb, sql in (("update", "UPDATE bench SET v = v + 1"),
                              ("delete", "DELETE FROM bench")):
                times[f"{verb}_raw"].append(timed(raw_run(sql)))
                if verb == "delete":
                    raw.close()
                    fill(url)
                    raw = engine.raw_connection()
                    cur = raw.cursor()
                with rt.episode(workspace=tmp / "ws", databases={"app": url},
                                on_exit="commit") as ep:
                    db = ep.sql("app")
                    db.execute("UPDATE bench SET v = v WHERE id = 0")
                    times[f"{verb}_revex"].append(timed(lambda db=db, sql=sql: db.execute(sql)))
                    times[f"{verb}_undo"].append(timed(ep.rollback))
    raw.close()
    engine.dispose()
    commit.conn.close()
    return times


def ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 3)


def verdict(ratio: float, target: float) -> str:
    return f"{ratio:6.2f}x (target <= {target:g}x) {'MET' if ratio <= target else 'MISSED'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dbs", default="sqlite,postgres,mariadb")
    parser.add_argument("--n", type=int, default=200, help="single-row updates per side")
    parser.add_argument("--big", type=int, default=3, help="10,000-row statements per side")
    args = parser.parse_args()
    results: dict[str, Any] = {"rows": ROWS, "n": args.n, "big": args.big,
                               "load_average": os.getloadavg(),
                               "machine": platform.platform(), "python": platform.python_version(),
                               "databases": {}}
    for kind in args.dbs.split(","):
        with tempfile.TemporaryDirectory() as tmpdir:
            tmp = Path(tmpdir)
            (tmp / "ws").mkdir()
            with database(kind, tmp) as url:
                fill(url, create=True)
                times = measure(url, args.n, args.big, tmp)
        r = {f"{k}_ms": ms(v) for k, v in times.items()}
        r["ratios"] = {
            "single_overhead_in_commits": (r["single_revex_ms"] - r["single_raw_ms"])
            / r["commit_ms"],
            "update": r["update_revex_ms"] / r["update_raw_ms"],
            "delete": r["delete_revex_ms"] / r["delete_raw_ms"],
            "update_rollback": r["update_undo_ms"] / r["update_raw_ms"],
            "delete_rollback": r["delete_undo_ms"] / r["update_raw_ms"],
        }
        results["databases"][kind] = r
    results["load_average_after"] = os.getloadavg()
    print(f"load average {results['load_average'][0]:.2f} before, "
          f"{results['load_average_after'][0]:.2f} after; medians in ms, {ROWS:,} rows")
    print(f"{'database':10} {'1-row raw':>9} {'journaled':>9} {'commit':>7} "
          f"{'10k UPD raw':>11} {'journaled':>9} {'rollback':>9} "
          f"{'10k DEL raw':>11} {'journaled':>9} {'rollback':>9}")
    for kind, r in results["databases"].items():
        print(f"{kind:10} {r['single_raw_ms']:9.2f} {r['single_revex_ms']:9.2f} "
              f"{r['commit_ms']:7.2f} {r['update_raw_ms']:11.1f} {r['update_revex_ms']:9.1f} "
              f"{r['update_undo_ms']:9.1f} {r['delete_raw_ms']:11.1f} "
              f"{r['delete_revex_ms']:9.1f} {r['delete_undo_ms']:9.1f}")
    for kind, r in results["databases"].items():
        q = r["ratios"]
        print(f"{kind}:")
        single = verdict(q["single_overhead_in_commits"], 1)
        print(f"  1-row overhead / one durable commit  {single}")
        print(f"  10k UPDATE journaled / raw           {verdict(q['update'], 2)}")
        print(f"  10k DELETE journaled / raw           {verdict(q['delete'], 2)}")
        print(f"  rollback of 10k UPDATE / raw UPDATE  {verdict(q['update_rollback'], 2)}")
        print(f"  rollback of 10k DELETE / raw UPDATE  {verdict(q['delete_rollback'], 2)}")
    out = Path(__file__).parent / "results" / "bench_sql.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
