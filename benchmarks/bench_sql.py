"""Overhead of journaled SQL against the raw statement, per database.

For each database: the median time of a single-row UPDATE (raw DBAPI + COMMIT vs. through a
durable revex episode: capture triggers, images, INTENT fsync, COMMIT, DONE), the median of a
10,000-row UPDATE both ways, and the time to roll that 10,000-row change back. Prints a table
and writes ``benchmarks/results/bench_sql.json``.

    PYTHONPATH=. python benchmarks/bench_sql.py [--dbs sqlite,postgres,mariadb] [--n 200]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
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


def setup(url: str) -> None:
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE bench (id INT PRIMARY KEY, v INT, s VARCHAR(20))"))
        conn.execute(text("INSERT INTO bench VALUES (:i, 0, :s)"),
                     [{"i": i, "s": f"row {i}"} for i in range(ROWS)])
    engine.dispose()


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def raw_times(url: str, n: int, big: int) -> tuple[list[float], list[float]]:
    engine = create_engine(url, poolclass=NullPool)
    raw = engine.raw_connection()
    cur = raw.cursor()
    mark = "?" if url.startswith("sqlite") else "%s"

    def one(i: int) -> None:
        cur.execute(f"UPDATE bench SET v = v + 1 WHERE id = {mark}", (i % ROWS,))
        raw.commit()

    def many() -> None:
        cur.execute("UPDATE bench SET v = v + 1")
        raw.commit()

    single = [timed(lambda i=i: one(i)) for i in range(n)]
    bulk = [timed(many) for _ in range(big)]
    raw.close()
    engine.dispose()
    return single, bulk


def revex_times(url: str, n: int, big: int, tmp: Path) -> tuple[list[float], list[float],
                                                                 list[float]]:
    single, bulk, undo = [], [], []
    with Runtime(tmp / "state", policy="permissive", audit=None) as rt:
        with rt.episode(workspace=tmp / "ws", databases={"app": url}, on_exit="commit") as ep:
            db = ep.sql("app")
            db.execute("UPDATE bench SET v = v WHERE id = 0")  # connect + install capture
            for i in range(n):
                single.append(timed(lambda i=i: db.execute(
                    "UPDATE bench SET v = v + 1 WHERE id = :i", {"i": i % ROWS})))
        for _ in range(big):
            with rt.episode(workspace=tmp / "ws", databases={"app": url},
                            on_exit="commit") as ep:
                db = ep.sql("app")
                db.execute("UPDATE bench SET v = v WHERE id = 0")
                bulk.append(timed(lambda db=db: db.execute("UPDATE bench SET v = v + 1")))
                undo.append(timed(ep.rollback))
    return single, bulk, undo


def ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dbs", default="sqlite,postgres,mariadb")
    parser.add_argument("--n", type=int, default=200, help="single-row updates per side")
    parser.add_argument("--big", type=int, default=3, help="10,000-row updates per side")
    args = parser.parse_args()
    results: dict[str, Any] = {"rows": ROWS, "n": args.n, "big": args.big,
                               "machine": platform.platform(), "python": platform.python_version(),
                               "databases": {}}
    for kind in args.dbs.split(","):
        with tempfile.TemporaryDirectory() as tmpdir:
            tmp = Path(tmpdir)
            (tmp / "ws").mkdir()
            with database(kind, tmp) as url:
                setup(url)
                raw_single, raw_bulk = raw_times(url, args.n, args.big)
                rv_single, rv_bulk, rv_undo = revex_times(url, args.n, args.big, tmp)
        results["databases"][kind] = {
            "single_raw_ms": ms(raw_single), "single_revex_ms": ms(rv_single),
            "bulk_raw_ms": ms(raw_bulk), "bulk_revex_ms": ms(rv_bulk),
            "bulk_rollback_ms": ms(rv_undo),
        }
    header = (f"{'database':10} {'1-row raw':>10} {'1-row revex':>12} {'10k raw':>10} "
              f"{'10k revex':>10} {'10k rollback':>13}   (median ms)")
    print(header)
    for kind, r in results["databases"].items():
        print(f"{kind:10} {r['single_raw_ms']:10.2f} {r['single_revex_ms']:12.2f} "
              f"{r['bulk_raw_ms']:10.1f} {r['bulk_revex_ms']:10.1f} {r['bulk_rollback_ms']:13.1f}")
    out = Path(__file__).parent / "results" / "bench_sql.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
