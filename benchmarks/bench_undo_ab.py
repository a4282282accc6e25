"""bench_undo's hot paths, this checkout against another one (``--before DIR``), alternated.

On a shared disk the fsync of a durable commit moves several times between runs a minute
apart, which swamps a change of 100 us in one bench_undo run against another. This script runs
short child processes, one per checkout, in alternating order (before, after, after, before,
...), each timing the same three things as bench_undo (a journaled 100-byte new file and
overwrite with a durable SQLite commit timed beside each, and the rollback of fresh 10-action
episodes), wall time and CPU time (``time.process_time``, which includes the kernel's). It
prints the median over the rounds of each child's medians, and of its ratios to the commit.

``--tmpfs`` puts the temp dirs on /dev/shm: no disk, so an fsync costs nothing and what is left
is revex's own work (Python, SQLite, system calls): the part a change to revex can move.

Usage: ``PYTHONPATH=. python benchmarks/bench_undo_ab.py --before DIR [--rounds 8] [--tmpfs]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, shutil, sqlite3, statistics, sys, tempfile, time
from pathlib import Path
from revex import Runtime
writes, episodes = int(sys.argv[1]), int(sys.argv[2])
P = b"x" * 100
base = Path(tempfile.mkdtemp(prefix="revex-ab-"))
rt = Runtime(base / "state", audit=None)
db = sqlite3.connect(base / "reference.db", isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=FULL")
db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)")
S = {k: [] for k in ("commit", "new", "overwrite", "new_cpu", "overwrite_cpu", "rollback10",
                     "rollback10_cpu")}
def timed(name, fn):
    t, c = time.perf_counter(), time.process_time()
    fn()
    S[name].append(time.perf_counter() - t)
    if name + "_cpu" in S:
        S[name + "_cpu"].append(time.process_time() - c)
def commit():
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO t (v) VALUES (?)", ("x" * 200,))
    db.execute("COMMIT")
with rt.episode(base / "ws") as ep:
    ep.fs.write_bytes("same", P)
    for i in range(writes):
        timed("commit", commit)
        timed("new", lambda: ep.fs.write_bytes(f"f{i}", P))
        timed("overwrite", lambda: ep.fs.write_bytes("same", P))
for e in range(episodes):
    with rt.episode(base / "rb" / str(e)) as ep:
        for i in range(10):
            ep.fs.write_bytes(f"f{i}", P)
        timed("rollback10", ep.rollback)
rt.close()
shutil.rmtree(base)
print(json.dumps({k: statistics.median(v) * 1e6 for k, v in S.items()}))
"""


def run_child(checkout: Path, writes: int, episodes: int, tmpfs: bool) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    if tmpfs:
        env["TMPDIR"] = "/dev/shm"
    out = subprocess.run([sys.executable, "-c", CHILD, str(writes), str(episodes)], env=env,
                         capture_output=True, text=True, check=True, cwd="/").stdout
    result: dict[str, float] = json.loads(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", metavar="DIR", required=True,
                        help="the other revex checkout (e.g. an archive of main)")
    parser.add_argument("--rounds", type=int, default=8, help="children per checkout")
    parser.add_argument("--writes", type=int, default=60, help="writes of each kind per child")
    parser.add_argument("--episodes", type=int, default=20, help="rollbacks per child")
    parser.add_argument("--tmpfs", action="store_true", help="temp dirs on /dev/shm")
    args = parser.parse_args()
    checkouts = {"before": Path(args.before).resolve(),
                 "after": Path(__file__).resolve().parents[1]}
    runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
    load = os.getloadavg()
    for r in range(args.rounds):
        for name in ("before", "after") if r % 2 == 0 else ("after", "before"):
            runs[name].append(run_child(checkouts[name], args.writes, args.episodes,
                                        args.tmpfs))
    print(f"load average before {load[0]:.2f}, after {os.getloadavg()[0]:.2f}; "
          f"{args.rounds} rounds{', on /dev/shm' if args.tmpfs else ''}; "
          "median over rounds of each child's median, us")
    keys = list(runs["before"][0])
    print(f"  {'':8}" + "".join(f"{k:>15}" for k in keys))
    for name, rows in runs.items():
        print(f"  {name:8}" + "".join(f"{statistics.median(r[k] for r in rows):>15.1f}"
                                      for k in keys))
    for name, rows in runs.items():
        ratios = "  ".join(
            f"{k}/commit {statistics.median(r[k] / r['commit'] for r in rows):.2f}x"
            for k in ("new", "overwrite"))
        print(f"  {name:8}{ratios}")


if __name__ == "__main__":
    main()
