"""The warm path: runs forked from a jailed zygote share nothing, cannot harm the zygote, and
the pool survives a zygote that dies; ineligible specs run cold."""

from __future__ import annotations

import time

from revex.runtime.sandbox import run_many, select_backend
from revex.runtime.sandbox.base import ExecSpec, ExecStatus, Limits
from revex.runtime.sandbox.harness import run_tests
from revex.runtime.sandbox.warm import WarmPythonBackend

LEAVE_STATE = """
import json, os, subprocess, sys
json.LEFT_BY_RUN_1 = True
GLOBAL_MARK = 1
sys.modules['__main__'].__dict__['x'] = 1
open('/tmp/left', 'w').write('secret of run 1')
os.makedirs('/tmp/d/e'); os.chmod('/tmp/d', 0o000)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        import time
        time.sleep(1.0)
        open('/tmp/late', 'w').write('daemon')
        time.sleep(30)
    os._exit(0)
print('done')
"""
SEE_STATE = """
import json, os, time
time.sleep(1.5)
pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
print(hasattr(json, 'LEFT_BY_RUN_1'), 'GLOBAL_MARK' in globals(), sorted(os.listdir('/tmp')),
      pids == [1, os.getpid()])
"""


def test_runs_share_no_state() -> None:
    with WarmPythonBackend(size=1) as be:  # one zygote: both runs fork from the same one
        r1 = be.run(ExecSpec(code=LEAVE_STATE))
        assert r1.ok and r1.stdout == "done\n" and r1.backend == "nsjail-warm", r1
        r2 = be.run(ExecSpec(code=SEE_STATE))
        assert r2.ok, r2.stderr
        assert r2.stdout.split() == ["False", "False", "[]", "True"]


def test_random_is_reseeded_per_run(warm: WarmPythonBackend) -> None:
    code = "import random; print(random.random())"
    outs = {warm.run(ExecSpec(code=code)).stdout for _ in range(4)}
    assert len(outs) == 4


def test_run_cannot_harm_its_zygote() -> None:
    attack = """
import os, signal
for sig in (signal.SIGKILL, signal.SIGSTOP, signal.SIGTERM, signal.SIGSEGV):
    try:
        os.kill(1, sig)
    except OSError as exc:
        print('kill', exc.errno)
try:
    open('/proc/1/mem', 'rb').read(1)
    print('READ ZYGOTE MEMORY')
except OSError as exc:
    print('mem', type(exc).__name__)
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
print('shmget', libc.shmget(0, 4096, 0o1000 | 0o600), ctypes.get_errno())
"""
    with WarmPythonBackend(size=1) as be:
        r = be.run(ExecSpec(code=attack))
        assert r.ok and "READ ZYGOTE MEMORY" not in r.stdout, r
        assert "mem PermissionError" in r.stdout and "shmget -1 1" in r.stdout
        assert be.run(ExecSpec(code="print(1)")).stdout == "1\n"


def test_a_dead_zygote_is_replaced() -> None:
    with WarmPythonBackend(size=1) as be:
        assert be.run(ExecSpec(code="pass")).ok
        (z,) = be._idle
        z.proc.kill()
        z.proc.wait()
        assert be.run(ExecSpec(code="print(2)")).stdout == "2\n"
        r = be.run(ExecSpec(code="import time; time.sleep(30)", limits=Limits(wall_s=0.5)))
        assert r.status is ExecStatus.TIMEOUT and r.wall_s < 1.5
        assert be.run(ExecSpec(code="print(3)")).stdout == "3\n"


def test_a_run_killed_before_it_read_its_code_is_a_timeout_and_keeps_its_zygote() -> None:
    """A wall limit shorter than reading the request: the zygote kills the child while the
    host still writes the code (EPIPE). That is the run's timeout, reported by the zygote, not
    a failed start (it used to raise SandboxError, a 500 in the service, and drop the zygote)."""
    big = "pass\n" + "#" * (8 << 20)  # far more than a pipe holds: the host's write blocks
    with WarmPythonBackend(size=1) as be:
        assert be.run(ExecSpec(code="pass")).ok
        (zygote,) = be._idle
        for _ in range(3):
            r = be.run(ExecSpec(code=big, limits=Limits(wall_s=0.001, cpu_s=1)))
            assert r.status is ExecStatus.TIMEOUT, r
        assert be._idle == [zygote] and zygote.alive()
        assert be.run(ExecSpec(code="print(4)")).stdout == "4\n"


def test_concurrent_runs_use_separate_zygotes(warm: WarmPythonBackend) -> None:
    code = "import os, time; open('/tmp/mine', 'w').write('{i}'); time.sleep(0.2); " \
           "print(open('/tmp/mine').read())"
    specs = [ExecSpec(code=code.replace("{i}", str(i))) for i in range(8)]
    results = run_many(specs, concurrency=4, backend=warm)
    assert [r.stdout.strip() for r in results] == [str(i) for i in range(8)]


def test_ineligible_specs_run_cold(warm: WarmPythonBackend) -> None:
    r = warm.run(ExecSpec(argv=("/bin/echo", "hi")))
    assert r.ok and r.stdout == "hi\n" and r.backend == "nsjail"
    r = warm.run(ExecSpec(code="import h; print(h.X)", files={"h.py": b"X = 5"}))
    assert r.ok and r.stdout == "5\n" and r.backend == "nsjail"
    r = warm.run(ExecSpec(code="pass", limits=Limits(memory_mb=4096)))
    assert r.ok and r.backend == "nsjail"


def test_warm_is_faster_than_cold(warm: WarmPythonBackend) -> None:
    def median(be: object) -> float:
        times = []
        for _ in range(7):
            t = time.perf_counter()
            assert be.run(ExecSpec(code="pass")).ok  # type: ignore[attr-defined]
            times.append(time.perf_counter() - t)
        return sorted(times)[3]

    assert median(warm) < median(warm.cold)


def test_select_backend_warm_and_harness_default() -> None:
    be = select_backend("warm")
    try:
        assert be.name == "nsjail-warm" and be.run(ExecSpec(code="print(7)")).stdout == "7\n"
    finally:
        be.close()  # type: ignore[attr-defined]
    report = run_tests("def f(x):\n    return x + 1", "assert f(1) == 2", "f")
    assert report.all_passed
