"""Benchmark the peak memory (RSS) of the revex process on big episodes and big files.

Each case runs in a fresh Python subprocess, which reports its resident set size after imports
and setup (the baseline), then the peak (``VmHWM`` from /proc/self/status, reset after the
baseline where the kernel allows it) while the case ran:

(a) a 10,000-action file episode: writes of small files, then a rollback of all of them;
(b) writing a 1 GiB file into the workspace through ``ep.fs.write_from``, then rolling it back;
(c) overwriting an existing 1 GiB file (its pre-image streamed into the content store), then
    rolling back (checked byte-exact by hash);
(d) a sandbox run that creates a 1 GiB file in the workspace (the change set applied to the
    host as a journaled file action), then rolling it back;
(e) the same with a sparse 1 GiB file (16 MiB of data, the rest a hole): it must stay sparse.

Target: each case's peak RSS under 200 MB. Prints a table and writes
``benchmarks/results/bench_memory.json``. Usage:
``python benchmarks/bench_memory.py [--size-mb 1024] [--actions 10000] [--cases abcde]
[--dir DIR]`` (``DIR`` must be on a real disk with room for about 4 times the size).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from revex.runtime.store import sha256_file

RESULTS = Path(__file__).parent / "results" / "bench_memory.json"
TARGET_MB = 200.0
CHUNK = 1 << 20
CASES = {
    "a": "10,000-action episode + rollback",
    "b": "1 GiB new file + rollback",
    "c": "1 GiB overwrite + rollback",
    "d": "sandbox creates 1 GiB file + rollback",
    "e": "sandbox creates sparse 1 GiB file + rollback",
}


# ---- measuring (in the child) ----------------------------------------------------------------

def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def make_dense(path: Path, size: int, seed: int) -> None:
    """A file of ``size`` bytes whose 1 MiB chunks all differ (written in chunks)."""
    block = bytearray(hashlib.sha256(str(seed).encode()).digest() * (CHUNK // 32))
    with open(path, "wb", buffering=0) as f:
        written = 0
        i = 0
        while written < size:
            block[:8] = i.to_bytes(8, "little")
            n = min(CHUNK, size - written)
            f.write(memoryview(block)[:n])
            written += n
            i += 1


def _write_big(ep: Any, rel: str, src: Path) -> None:
    write_from = getattr(ep.fs, "write_from", None)
    if write_from is not None:
        write_from(rel, src)
    else:  # the API before streaming existed: the whole bytes object
        ep.fs.write_bytes(rel, src.read_bytes())


def run_case(case: str, base: Path, size: int, actions: int) -> dict[str, Any]:
    from revex import Limits, Runtime

    rt = Runtime(base / "state", audit=None)
    ws = base / "ws"
    ws.mkdir(exist_ok=True)
    extra: dict[str, Any] = {}
    if case == "c":
        make_dense(ws / "big.bin", size, seed=1)
        extra["before_sha"] = sha256_file(ws / "big.bin")
    src = base / "src.bin"
    if case in ("b", "c"):
        make_dense(src, size, seed=2)
    baseline_kb = _status_kb("VmRSS")
    reset = _reset_peak()
    t0 = time.perf_counter()
    phases: dict[str, float] = {}
    with rt.episode(ws) as ep:
        if case == "a":
            for i in range(actions):
                ep.fs.write_bytes(f"f{i % 1000}", b"x" * 100 + str(i).encode())
        elif case in ("b", "c"):
            _write_big(ep, "big.bin", src)
        else:
            mib = size >> 20
            if case == "d":
                code = ("b = bytes(range(256)) * 4096\n"
                        "with open('/workspace/big.bin', 'wb') as f:\n"
                        f"    for _ in range({mib}):\n"
                        "        f.write(b)\n")
            else:
                code = ("with open('/workspace/big.bin', 'wb') as f:\n"
                        "    f.write(bytes(range(256)) * 65536)\n"
                        f"    f.truncate({size})\n")
            limits = Limits(wall_s=300, cpu_s=300, fsize_mb=mib + 64,
                            changed_mb=mib + 64, tmpfs_mb=64)
            res = ep.run(code=code, limits=limits)
            if res.status != "ok" or not res.changes_applied:
                raise RuntimeError(f"the run did not apply its change: {res.status} "
                                   f"{res.stderr[-500:]!r} applied={res.changes_applied}")
            st = os.lstat(ws / "big.bin")
            if st.st_size != size:
                raise RuntimeError(f"big.bin has {st.st_size} bytes, expected {size}")
            extra["applied_blocks_mb"] = st.st_blocks * 512 / 2**20
        phases["act_s"] = time.perf_counter() - t0
        phases["peak_after_act_mb"] = _status_kb("VmHWM") / 1024
        t1 = time.perf_counter()
        undone = ep.rollback()
        phases["rollback_s"] = time.perf_counter() - t1
    if case == "c":
        ok = sha256_file(ws / "big.bin") == extra["before_sha"]
        del extra["before_sha"]
    else:
        ok = not os.listdir(ws)
    peak_kb = _status_kb("VmHWM")
    rt.close()
    return {"baseline_mb": baseline_kb / 1024, "peak_mb": peak_kb / 1024,
            "delta_mb": (peak_kb - baseline_kb) / 1024, "peak_reset": reset,
            "undone": undone, "exact": ok, **phases, **extra}


# ---- driving (in the parent) -----------------------------------------------------------------

def _child(case: str, base: Path, size: int, actions: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"case-{case}-", dir=base))
    try:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", case, "--dir", str(workdir),
             "--size-mb", str(size >> 20), "--actions", str(actions)],
            capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            return {"error": (proc.stderr or proc.stdout)[-2000:]}
        out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        return out
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--actions", type=int, default=10_000)
    parser.add_argument("--cases", default="".join(CASES))
    parser.add_argument("--dir", default=None,
                        help="where the files go (a real disk, not tmpfs); default: a temp dir")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = args.size_mb << 20
    if args.child:
        print(json.dumps(run_case(args.child, Path(args.dir), size, args.actions)))
        return
    base = Path(tempfile.mkdtemp(prefix="revex-bench-mem-", dir=args.dir))
    rows: dict[str, Any] = {}
    try:
        for case in args.cases:
            rows[case] = _child(case, base, size, args.actions)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    result: dict[str, Any] = {
        "size_mb": args.size_mb, "actions": args.actions, "target_mb": TARGET_MB,
        "cases": {c: {"name": CASES[c], **r} for c, r in rows.items()},
        "loadavg": os.getloadavg(), "machine": platform.platform(), "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"peak RSS of the revex process, one fresh process per case "
          f"(size {args.size_mb} MiB, {args.actions} actions; load {os.getloadavg()[0]:.2f})")
    print(f"  {'case':46} {'baseline':>9} {'peak':>9} {'delta':>9} {'act':>7} {'rollback':>9}"
          f"  target")
    for c, r in rows.items():
        name = f"({c}) {CASES[c]}"
        if "error" in r:
            print(f"  {name:46} ERROR: {r['error'].strip().splitlines()[-1]}")
            continue
        verdict = "MET" if r["peak_mb"] < TARGET_MB and r["exact"] else "MISSED"
        note = "" if r["exact"] else " (rollback NOT exact)"
        print(f"  {name:46} {r['baseline_mb']:>7.1f}MB {r['peak_mb']:>7.1f}MB "
              f"{r['delta_mb']:>7.1f}MB {r['act_s']:>6.1f}s {r['rollback_s']:>8.2f}s  "
              f"{r['peak_mb']:.0f} MB (target < {TARGET_MB:.0f} MB) {verdict}{note}")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
