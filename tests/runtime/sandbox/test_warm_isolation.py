"""Warm runs are isolated from each other: a run that tries every way to leave something for
the next (files, deep trees, long paths, /tmp's mode, planted modules, the zygote's scheduling
and rlimits, environment, stdin, memory) changes nothing a later run can observe, including a
test verdict. All through the public API with the default (warm) backend of a Runtime."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from revex import Runtime
from revex.runtime.sandbox.base import ExecSpec, Limits
from revex.runtime.sandbox.harness import run_tests
from revex.runtime.sandbox.warm import WarmPythonBackend

#: What a run observes about its starting state (everything but its own pid). The memory scan
#: looks for any ``LEAK`` + ``MARK`` + 16 hex digits in the writable memory the child inherited
#: from its zygote (the pattern is split so this source itself never matches).
OBSERVE = r"""
import ctypes, json, os, re, resource, sys
st = os.stat('/tmp')
vfs = os.statvfs('/tmp')
libc = ctypes.CDLL(None, use_errno=True)
found = set()
pat = re.compile(b'LEAK' + b'MARK([0-9a-f]{16})')
with open('/proc/self/maps') as maps, open('/proc/self/mem', 'rb', 0) as mem:
    for line in maps:
        parts = line.split()
        if not parts[1].startswith('rw'):
            continue
        lo, hi = (int(x, 16) for x in parts[0].split('-'))
        try:
            mem.seek(lo)
            found.update(m.decode() for m in pat.findall(mem.read(hi - lo)))
        except (OSError, ValueError, OverflowError):
            pass
try:
    with open('/proc/1/mem', 'rb') as z:
        zygote_mem = 'readable'
except OSError as exc:
    zygote_mem = type(exc).__name__
import heapq
print(json.dumps({
    'tmp': sorted(os.listdir('/tmp')), 'mode': oct(st.st_mode), 'owner': [st.st_uid, st.st_gid],
    'inodes_used': vfs.f_files - vfs.f_ffree, 'blocks_used': vfs.f_blocks - vfs.f_bfree,
    'times': [st.st_atime_ns, st.st_mtime_ns],
    'root': sorted(os.listdir('/')), 'cwd': os.getcwd(), 'path0': sys.path[0],
    'heapq': heapq.__file__, 'env': dict(os.environ), 'zygote_mem': zygote_mem,
    'nice': os.getpriority(os.PRIO_PROCESS, 0), 'affinity': sorted(os.sched_getaffinity(0)),
    'sched': os.sched_getscheduler(0), 'ioprio': libc.syscall(252, 1, 0),
    'rlimits': [resource.getrlimit(r) for r in (resource.RLIMIT_NOFILE, resource.RLIMIT_FSIZE,
                                                 resource.RLIMIT_NPROC, resource.RLIMIT_CPU)],
    'procs': sorted(int(p) for p in os.listdir('/proc') if p.isdigit()) == [1, os.getpid()],
    'leaked': sorted(found), 'modules': sorted(sys.modules),
}))
"""

#: Everything a hostile run can try to leave behind. ``MARK`` is replaced per test.
LEAVE = r"""
import ctypes, heapq, json, os, resource, signal, sys
secret_in_code = 'LEAK' 'MARK' + 'CODE'
data = sys.stdin.read()
junk = [('LEAK' 'MARK' + 'HEAP') * 1000 for _ in range(100)]
# planted modules: heapq shadows the stdlib one; sitecustomize and a .pth try start-up hooks
for name in ('heapq.py', 'sitecustomize.py', 'plant_mod.py', 'usercustomize.py'):
    with open('/tmp/' + name, 'w') as f:
        f.write('import builtins\nbuiltins.sorted = lambda *a, **k: []\n'
                'builtins.abs = lambda x: -1\n')
open('/tmp/x.pth', 'w').write('import plant_mod\n')
open('/tmp/' + 'LEAK' 'MARK' + 'NAME', 'w').write(data)
# a 1,500-deep tree and a path far longer than PATH_MAX, built fd-relative
fd = os.open('/tmp', os.O_RDONLY)
for i in range(1500):
    os.mkdir('d', dir_fd=fd)
    nfd = os.open('d', os.O_RDONLY, dir_fd=fd)
    os.close(fd)
    fd = nfd
os.close(fd)
fd = os.open('/tmp', os.O_RDONLY)
for i in range(40):
    name = 'L' * 250
    os.mkdir(name, dir_fd=fd)
    nfd = os.open(name, os.O_RDONLY, dir_fd=fd)
    os.close(fd)
    fd = nfd
os.open('f', os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd)
os.fchmod(fd, 0o000)
os.mkfifo('/tmp/fifo')
os.symlink('/tmp/heapq.py', '/tmp/link')
os.mkdir('/tmp/locked'); open('/tmp/locked/f', 'w').close(); os.chmod('/tmp/locked', 0)
# the zygote's inheritable state: scheduling, affinity, io priority, rlimits
for attempt in (
    lambda: os.setpriority(os.PRIO_PROCESS, 1, 19),
    lambda: os.sched_setaffinity(1, {min(os.sched_getaffinity(0))}),
    lambda: os.sched_setscheduler(1, os.SCHED_IDLE, os.sched_param(0)),
    lambda: ctypes.CDLL(None).syscall(251, 1, 1, (3 << 13)),
    lambda: resource.prlimit(1, resource.RLIMIT_NOFILE, (32, 32)),
    lambda: resource.prlimit(1, resource.RLIMIT_FSIZE, (1 << 20, 1 << 20)),
    lambda: resource.prlimit(1, resource.RLIMIT_NPROC, (4, 4)),
):
    try:
        attempt()
    except OSError:
        pass
os.environ['PLANTED'] = '1'
sys.modules['plant_mod'] = json
os.utime('/tmp', (12345, 67890))
os.chmod('/tmp', 0o555)
print('left', len(junk))
"""

CORRECT = "def top(xs, k):\n    import heapq\n    return sorted(heapq.nlargest(k, xs))\n"
TESTS = "assert top([3, 1, 2], 2) == [2, 3]\nassert abs(top([5], 1)[0]) == 5\n"


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[Runtime]:
    runtime = Runtime(tmp_path / "state", audit=None)
    try:
        yield runtime
    finally:
        runtime.close()


def _observe(rt: Runtime) -> dict[str, object]:
    """What a run sees; /tmp's times only as whether they are the ones a run planted (a
    replaced zygote has a /tmp of its own, with other times)."""
    r = rt.run(OBSERVE, limits=Limits(wall_s=30, cpu_s=20))
    assert r.ok and r.backend == "nsjail-warm", r
    seen = json.loads(r.stdout)
    seen["times"] = seen["times"] == [12345 * 10**9, 67890 * 10**9]
    return seen  # type: ignore[no-any-return]


def test_a_hostile_run_leaves_nothing_for_the_next(rt: Runtime) -> None:
    fresh = _observe(rt)
    assert fresh["tmp"] == [] and fresh["leaked"] == [] and fresh["procs"] is True
    assert fresh["inodes_used"] == 1 and fresh["mode"] == "0o41777"
    token = secrets.token_hex(8)
    leave = LEAVE.replace("'CODE'", repr(token)).replace("'HEAP'", repr(token)).replace(
        "'NAME'", repr(token))
    env_secret = "LEAK" + "MARK" + token[::-1]
    r = rt.run(leave, env={"SECRET": env_secret}, stdin=("LEAK" + "MARK" + token[:8] * 2) * 10,
               limits=Limits(wall_s=30, cpu_s=20))
    assert r.ok and r.stdout == "left 100\n", r
    after = _observe(rt)
    assert after["leaked"] == [], "an earlier run's data is in the next run's memory"
    assert after == fresh
    report = rt.run_tests(CORRECT, TESTS, "top")
    assert (report.passed, report.total) == (2, 2), report
    assert _observe(rt) == fresh


def test_every_later_run_is_clean_after_repeated_attacks(rt: Runtime) -> None:
    fresh = _observe(rt)
    simple = ("import os\nopen('/tmp/heapq.py', 'w').write('X = 1')\n"
              "os.makedirs('/tmp/a/b/c')\nos.chmod('/tmp/a', 0)\nos.chmod('/tmp', 0o500)\n")
    for _ in range(3):
        assert rt.run(simple).ok
        assert _observe(rt) == fresh


def test_a_wiped_zygote_is_kept_and_gives_a_correct_verdict() -> None:
    # Files, trees and modes only (nothing about the zygote itself): the wipe must prove /tmp
    # clean, so the same zygote serves the next runs, and a planted heapq changes no verdict.
    files_only = LEAVE.split("# the zygote's inheritable state")[0] + (
        "os.utime('/tmp', (12345, 67890))\nos.chmod('/tmp', 0o555)\nprint('left', len(junk))\n")
    with WarmPythonBackend(size=1) as be:
        fresh = be.run(ExecSpec(code=OBSERVE, limits=Limits(wall_s=30, cpu_s=20)))
        (zygote,) = be._idle
        r = be.run(ExecSpec(code=files_only, limits=Limits(wall_s=30, cpu_s=20)))
        assert r.ok and r.stdout == "left 100\n", r
        be.settle()
        assert be._idle == [zygote]
        after = be.run(ExecSpec(code=OBSERVE, limits=Limits(wall_s=30, cpu_s=20)))
        assert json.loads(after.stdout) == json.loads(fresh.stdout)
        report = run_tests(CORRECT, TESTS, "top", backend=be)
        assert (report.passed, report.total) == (2, 2), report
        be.settle()
        assert be._idle == [zygote]


def test_the_next_run_never_gets_a_zygote_before_its_cleanup_is_proven() -> None:
    # run() returns before the zygote's cleanup report is read; the next run must still wait
    # for that report (and get a fresh zygote when it says the jail is not clean), with no
    # settle() in between.
    attack = ("import resource\nresource.prlimit(1, resource.RLIMIT_NOFILE, (32, 32))\n"
              "print('done')\n")
    check = "import resource\nprint(resource.getrlimit(resource.RLIMIT_NOFILE))"
    with WarmPythonBackend(size=1) as be:
        assert be.run(ExecSpec(code="pass")).ok
        (zygote,) = be._idle
        for _ in range(3):
            r = be.run(ExecSpec(code=attack))
            assert r.ok and r.stdout == "done\n", r
            assert be.run(ExecSpec(code=check)).stdout == "(256, 256)\n"
        assert not zygote.alive()


def test_a_zygote_that_cannot_be_proven_clean_is_replaced() -> None:
    # A same-uid process can lower the zygote's rlimits (inherited by every later child); the
    # zygote cannot undo that, so it must notice and be replaced, and the run still stands.
    attack = ("import resource\nresource.prlimit(1, resource.RLIMIT_NOFILE, (32, 32))\n"
              "print('done')\n")
    with WarmPythonBackend(size=1) as be:
        assert be.run(ExecSpec(code="pass")).ok
        (zygote,) = be._idle
        r = be.run(ExecSpec(code=attack))
        assert r.ok and r.stdout == "done\n", r
        be.settle()
        assert zygote not in be._idle and not zygote.alive()
        nofile = be.run(ExecSpec(code="import resource\n"
                                 "print(resource.getrlimit(resource.RLIMIT_NOFILE))"))
        assert nofile.stdout == "(256, 256)\n", nofile
