"""Where a cold nsjail run's time goes: trivial Python through revex against its parts.

Cases, interleaved round by round (each round runs every case once, in a rotating order, so
load drifts hit every case alike), ``--n`` rounds:

* ``subprocess.run([python, "-c", "pass"])``: the reference of the target;
* ``/bin/true``: the cost of a fork and exec;
* nsjail alone: no namespaces, ``--chroot /``, ``/bin/true`` (the binary's own start-up);
* nsjail as revex runs it (namespaces, mounts, seccomp, rlimits; no cgroups), ``/bin/true``
  and then ``python -c pass``;
* revex's cold run of ``pass``, without cgroups (``use_cgroups=False``) and as shipped;
* with ``--before DIR``: the cold run of ``pass`` by the revex checkout in DIR (e.g. main), in a
  worker process fed round by round, so before and after are measured in the same run.

Prints a table with each median and its ratio to the reference, the target line for the cold
run (at most 1.5x), and the load average; writes ``benchmarks/results/bench_cold.json``.
Run: ``PYTHONPATH=. python benchmarks/bench_cold.py [--n 60] [--before ../main]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from revex.runtime.sandbox import _common
from revex.runtime.sandbox.base import ExecSpec
from revex.runtime.sandbox.nsjail import NsjailBackend

RESULTS = Path(__file__).parent / "results" / "bench_cold.json"
TARGET = 1.5
_NO_NAMESPACES = ["--chroot", "/", "--disable_proc", "--disable_clone_newuser",
                  "--disable_clone_newns", "--disable_clone_newpid", "--disable_clone_newipc",
                  "--disable_clone_newuts", "--disable_clone_newcgroup",
                  "--disable_clone_newnet"]


def _ok(run: Callable[[ExecSpec], object], spec: ExecSpec) -> Callable[[], None]:
    def go() -> None:
        r = run(spec)
        if not getattr(r, "ok", False):
            raise RuntimeError(f"benchmark run failed: {r}")

    return go


_WORKER = """
import sys, time
from revex.runtime.sandbox.base import ExecSpec
from revex.runtime.sandbox.nsjail import NsjailBackend
be, spec = NsjailBackend(), ExecSpec(code="pass")
for _ in sys.stdin:
    t = time.perf_counter()
    ok = be.run(spec).ok
    print(time.perf_counter() - t if ok else -1.0, flush=True)
"""


def _worker(tree: str) -> Callable[[], float]:
    """A cold run of ``pass`` by the revex in ``tree``, timed inside that worker process."""
    proc = subprocess.Popen([sys.executable, "-c", _WORKER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.path.abspath(tree)})
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout

    def one() -> float:
        stdin.write("\n")
        stdin.flush()
        took = float(stdout.readline())
        if took < 0:
            raise RuntimeError(f"the cold run of {tree} failed")
        return took

    return one


def _cases() -> dict[str, Callable[[], None]]:
    cold, bare = NsjailBackend(), NsjailBackend(use_cgroups=False)
    spec = ExecSpec(code="pass")
    env = _common.build_env(spec)

    def jail(cmd: list[str]) -> list[str]:
        return bare._argv(spec, cmd, env, "/tmp", [], None)

    def call(argv: list[str]) -> Callable[[], None]:
        return lambda: subprocess.run(argv, check=True)

    py = [cold.python, "-B", "-c", "pass"]
    return {
        "subprocess.run python -c pass": call([cold.python, "-c", "pass"]),
        "/bin/true": call(["/bin/true"]),
        "nsjail alone, /bin/true": call([cold.binary, "-Mo", "--quiet", *_NO_NAMESPACES,
                                         "--", "/bin/true"]),
        "nsjail as revex runs it, /bin/true": call(jail(["/bin/true"])),
        "nsjail as revex runs it, python": call(jail(py)),
        "revex cold pass, no cgroups": _ok(bare.run, spec),
        "revex cold pass": _ok(cold.run, spec),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60, help="rounds (one run of each case)")
    parser.add_argument("--before", metavar="DIR",
                        help="also time the cold run of the revex checkout in DIR")
    args = parser.parse_args()
    cases = _cases()
    timed: dict[str, Callable[[], float]] = {}
    if args.before:
        timed[f"before: revex cold pass ({args.before})"] = _worker(args.before)
    names = [*cases, *timed]
    for name in cases:  # warm up: page cache, the launcher thread, idle cgroups
        cases[name]()
    for name in timed:
        timed[name]()
    lat: dict[str, list[float]] = {name: [] for name in names}
    for i in range(args.n):
        for name in names[i % len(names):] + names[:i % len(names)]:
            if name in timed:
                lat[name].append(timed[name]())
                continue
            t = time.perf_counter()
            cases[name]()
            lat[name].append(time.perf_counter() - t)
    load = os.getloadavg()
    med = {name: statistics.median(v) * 1000 for name, v in lat.items()}
    ref = med[names[0]]
    width = max(map(len, names)) + 2
    print(f"{'case':<{width}}{'median ms':>10}{'ratio':>8}")
    for name in names:
        print(f"{name:<{width}}{med[name]:>10.2f}{med[name] / ref:>7.2f}x")
    ratio = med["revex cold pass"] / ref
    verdict = "MET" if ratio <= TARGET else "MISSED"
    print(f"nsjail cold / subprocess median: {ratio:.2f}x (target <= {TARGET}x) {verdict}")
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {args.n} rounds, "
          f"{os.cpu_count()} CPUs")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"median_ms": med, "cold_ratio": ratio, "target": TARGET,
                                   "met": ratio <= TARGET, "loadavg": load, "rounds": args.n,
                                   "cpus": os.cpu_count()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
