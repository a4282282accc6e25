"""Judging stdin/stdout problems: revex ``judge_many`` versus a plain ``subprocess.run`` loop.

Both sides do the same work: P problems x C cases (each case: two integers on stdin, their sum
expected), the same host-side token comparison, the same concurrency (one worker per CPU). The
plain loop has no isolation at all: for Python it runs ``python3 -c SRC`` per case; for C++ it
compiles each solution once with g++ on the host, then runs the binary per case. revex runs
Python on the warm path (forked children of jailed zygotes) and C++ compiled once in a sandbox
(cached) then run cold in nsjail per case. Each solution is distinct (a comment with its index)
so nothing is shared between problems. Prints a table and writes
benchmarks/results/bench_judge.json.

Run: ``PYTHONPATH=. python benchmarks/bench_judge.py [--problems 200 --cases 10]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from revex.judge import Compare, TestCases, judge_many
from revex.judge.compare import output_matches
from revex.runtime.sandbox.warm import WarmPythonBackend

PY = "import sys\na, b = map(int, sys.stdin.read().split())\nprint(a + b)  # {i}\n"
CPP = ('#include <cstdio>\n// {i}\nint main(){{long long a,b;if(scanf("%lld %lld",&a,&b)!=2)'
       'return 1;printf("%lld\\n",a+b);return 0;}}\n')


def cases(n: int) -> TestCases:
    return TestCases.from_io({"inputs": [f"{k} {k * 7}\n" for k in range(n)],
                              "outputs": [f"{k * 8}\n" for k in range(n)]})


def plain(lang: str, sources: list[str], tc: TestCases, workers: int) -> tuple[float, int]:
    """The no-isolation baseline; returns (wall seconds, cases passed)."""
    tmp = tempfile.mkdtemp(prefix="bench-judge-")
    cmp = Compare()
    start = time.perf_counter()

    def build(i: int) -> list[str]:
        if lang == "python":
            return [sys.executable, "-c", sources[i]]
        src, exe = os.path.join(tmp, f"{i}.cpp"), os.path.join(tmp, f"{i}")
        Path(src).write_text(sources[i])
        subprocess.run(["g++", "-O2", "-std=gnu++17", "-pipe", "-o", exe, src], check=True)
        return [exe]

    def one(job: tuple[list[str], int]) -> bool:
        argv, j = job
        case = tc.cases[j]
        p = subprocess.run(argv, input=str(case.input).encode(), capture_output=True,
                           timeout=10)
        return p.returncode == 0 and output_matches(p.stdout.decode(), str(case.expected), cmp)

    with ThreadPoolExecutor(workers) as pool:
        argvs = list(pool.map(build, range(len(sources))))
        passed = sum(pool.map(one, [(argvs[i], j) for j in range(len(tc.cases))
                                    for i in range(len(sources))]))
    wall = time.perf_counter() - start
    shutil.rmtree(tmp, ignore_errors=True)
    return wall, passed


def revex_side(lang: str, sources: list[str], tc: TestCases, workers: int,
               be: WarmPythonBackend) -> tuple[float, int]:
    start = time.perf_counter()
    results = judge_many(sources, tc, language=lang, backend=be, concurrency=workers)
    return time.perf_counter() - start, sum(r.passed for r in results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=200)
    ap.add_argument("--cases", type=int, default=10)
    args = ap.parse_args()
    workers = os.cpu_count() or 1
    tc = cases(args.cases)
    total = args.problems * args.cases
    rows = []
    with WarmPythonBackend(size=workers) as be:
        be.prestart(workers)
        for lang, template in (("python", PY), ("cpp", CPP)):
            tag = f"{time.time_ns()}"  # fresh sources: C++ compiles are not cached from a run
            sources = [template.format(i=f"{tag}-{i}") for i in range(args.problems)]
            p_wall, p_ok = plain(lang, sources, tc, workers)
            r_wall, r_ok = revex_side(lang, sources, tc, workers, be)
            assert p_ok == r_ok == total, (lang, p_ok, r_ok, total)
            rows.append({"language": lang, "problems": args.problems, "cases": args.cases,
                         "plain_s": p_wall, "revex_s": r_wall,
                         "plain_cases_per_s": total / p_wall,
                         "revex_cases_per_s": total / r_wall, "ratio": r_wall / p_wall})
    print(f"{'language':<8} {'cases':>6} {'plain s':>8} {'plain c/s':>10} {'revex s':>8} "
          f"{'revex c/s':>10} {'revex/plain':>11}")
    for r in rows:
        print(f"{r['language']:<8} {r['problems'] * r['cases']:>6} {r['plain_s']:>8.2f} "
              f"{r['plain_cases_per_s']:>10.1f} {r['revex_s']:>8.2f} "
              f"{r['revex_cases_per_s']:>10.1f} {r['ratio']:>10.2f}x")
    out = Path(__file__).parent / "results" / "bench_judge.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"workers": workers, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
