"""The nsjail backend, cold and warm: every status and limit, network, filesystem and secret
isolation. Each test runs against both (the ``nsjail`` fixture is parametrized here); specs the
warm path cannot take (workspaces, input files) run cold on it by design."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from revex.runtime.sandbox.base import ExecSpec, ExecStatus, Limits, SandboxBackend
from revex.runtime.sandbox.nsjail import NsjailBackend
from revex.runtime.sandbox.warm import WarmPythonBackend


@pytest.fixture(params=["cold", "warm"])
def nsjail(request: pytest.FixtureRequest, nsjail: NsjailBackend,
           warm: WarmPythonBackend) -> SandboxBackend:
    return nsjail if request.param == "cold" else warm


def run(be: SandboxBackend, code: str, **limits: float) -> object:
    return be.run(ExecSpec(code=code, limits=Limits(**limits)))  # type: ignore[arg-type]


def test_ok_run_reports_output_cpu_and_memory(nsjail: SandboxBackend) -> None:
    r = nsjail.run(ExecSpec(code="import sys; print(sys.stdin.read().upper())", stdin=b"hi"))
    assert r.status is ExecStatus.OK and r.stdout == "HI\n"
    assert r.backend.startswith("nsjail") and not r.weak_isolation
    assert r.peak_memory_mb > 0 and r.cpu_s >= 0 and r.wall_s > 0


def test_nonzero_exit_is_failed(nsjail: SandboxBackend) -> None:
    r = nsjail.run(ExecSpec(code="raise SystemExit(3)"))
    assert r.status is ExecStatus.FAILED and r.exit_code == 3


def test_runs_as_unprivileged_user_with_scratch_env(nsjail: SandboxBackend) -> None:
    os.environ["REVEX_TEST_SECRET"] = "s3cret"
    try:
        r = nsjail.run(ExecSpec(code="import os; print(os.getuid(), os.getgid(), dict(os.environ))",
                                env={"MINE": "1"}))
    finally:
        del os.environ["REVEX_TEST_SECRET"]
    assert r.stdout.startswith("65534 65534 ")
    assert "s3cret" not in r.stdout and "'MINE': '1'" in r.stdout


def test_host_secret_file_is_unreadable(nsjail: SandboxBackend, open_dir: str) -> None:
    secret = os.path.join(open_dir, "secret")
    with open(secret, "w") as f:
        f.write("top secret")
    os.chmod(secret, 0o600)
    r = nsjail.run(ExecSpec(code=f"print(open({secret!r}).read())"))
    assert r.status is ExecStatus.FAILED and "top secret" not in r.stdout
    r = nsjail.run(ExecSpec(code="print(open('/etc/shadow').read())"))
    assert r.status is ExecStatus.FAILED


def test_writes_outside_workspace_and_tmp_fail(nsjail: SandboxBackend) -> None:
    code = """
import os
for p in ('/usr/x', '/etc/x', '/x', '/proc/x', '/bin/x'):
    try:
        open(p, 'w')
        print('WROTE', p)
    except OSError:
        pass
open('/tmp/ok', 'w').write('fine')
"""
    r = nsjail.run(ExecSpec(code=code))
    assert r.status is ExecStatus.OK and "WROTE" not in r.stdout


def test_host_loopback_is_unreachable(nsjail: SandboxBackend) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    accepted: list[object] = []
    srv.settimeout(3)
    t = threading.Thread(target=lambda: accepted.append(_accept(srv)), daemon=True)
    t.start()
    code = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)"
    r = nsjail.run(ExecSpec(code=code))
    t.join()
    srv.close()
    assert r.status is ExecStatus.FAILED and "Error" in r.stderr
    assert accepted == [None]


def _accept(srv: socket.socket) -> object:
    try:
        conn, _ = srv.accept()
    except TimeoutError:
        return None
    conn.close()
    return "connected"


def test_busy_loop_and_sleep_time_out_promptly(nsjail: SandboxBackend) -> None:
    for code in ("while True: pass", "import time; time.sleep(60)"):
        t0 = time.monotonic()
        r = run(nsjail, code, wall_s=1.0)
        assert r.status is ExecStatus.TIMEOUT  # type: ignore[attr-defined]
        assert time.monotonic() - t0 < 1.6


def test_cpu_limit_gives_timeout(nsjail: SandboxBackend) -> None:
    r = run(nsjail, "while True: pass", cpu_s=1, wall_s=10)
    assert r.status is ExecStatus.TIMEOUT  # type: ignore[attr-defined]


@pytest.mark.parametrize("code", ["b = bytearray(2 << 30)",
                                  "x = [bytearray(50 << 20) for _ in range(40)]"])
def test_memory_limit(nsjail: SandboxBackend, code: str) -> None:
    r = run(nsjail, code, memory_mb=256)
    assert r.status is ExecStatus.MEMORY  # type: ignore[attr-defined]


def test_fork_bomb_is_contained(nsjail: SandboxBackend) -> None:
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    r = run(nsjail, code, pids=16, wall_s=2)
    assert r.status in (ExecStatus.TIMEOUT, ExecStatus.FAILED)  # type: ignore[attr-defined]
    assert nsjail.run(ExecSpec(code="print(1)")).ok


def test_file_size_limit(nsjail: SandboxBackend) -> None:
    r = run(nsjail, "open('/tmp/f', 'wb').write(b'x' * (3 << 20))", fsize_mb=1)
    assert r.status is ExecStatus.FAILED and "File too large" in r.stderr  # type: ignore


def test_output_limit_truncates(nsjail: SandboxBackend) -> None:
    r = run(nsjail, "while True: print('x' * 1000)", output_bytes=10_000)
    assert r.status is ExecStatus.OUTPUT_LIMIT  # type: ignore[attr-defined]
    assert r.stdout_truncated and len(r.stdout) == 10_000  # type: ignore[attr-defined]


def test_daemon_does_not_outlive_the_run(nsjail: SandboxBackend, open_dir: str) -> None:
    if isinstance(nsjail, WarmPythonBackend):
        pytest.skip("workspace runs are cold on the warm backend; warm daemons: test_sandbox_warm")
    code = """
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(3)
        open('/workspace/daemon-was-here', 'w').write('x')
    os._exit(0)
print('parent done')
"""
    r = nsjail.run(ExecSpec(code=code, workspace=open_dir))
    upper = r.upper_dir
    assert r.ok and upper is not None
    time.sleep(3.5)
    assert not os.path.exists(os.path.join(upper, "daemon-was-here"))
    assert r.changes == []
    r.discard()


@pytest.mark.parametrize("call", [
    "libc.ptrace(0, 0, 0, 0)",
    "libc.unshare(0x10000000)",
    "libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)",
    "libc.syscall(425, 1, 0)",  # io_uring_setup
    "libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)",  # clone(CLONE_NEWUSER|SIGCHLD)
    "libc.syscall(323, 0)",  # userfaultfd
    "libc.syscall(321, 0, 0, 0)",  # bpf
])
def test_seccomp_denies_dangerous_syscalls(nsjail: SandboxBackend, call: str) -> None:
    code = ("import ctypes, sys\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            f"rc = {call}\nprint(rc, ctypes.get_errno())")
    r = nsjail.run(ExecSpec(code=code))
    assert r.ok, r.stderr
    rc, errno_ = r.stdout.split()
    assert int(rc) == -1 and int(errno_) == 1


def test_clone3_is_enosys_and_threads_still_work(nsjail: SandboxBackend) -> None:
    code = ("import ctypes, threading, subprocess\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "print(libc.syscall(435, 0, 0), ctypes.get_errno())\n"
            "t = threading.Thread(target=print, args=('thread',)); t.start(); t.join()\n"
            "print(subprocess.run(['true']).returncode)")
    r = nsjail.run(ExecSpec(code=code))
    assert r.ok and r.stdout.split() == ["-1", "38", "thread", "0"]


def test_files_are_readable_under_input(nsjail: SandboxBackend) -> None:
    r = nsjail.run(ExecSpec(code="import helper; print(helper.X, open('/input/d/a.txt').read())",
                            files={"helper.py": b"X = 41", "d/a.txt": b"hello"}))
    assert r.ok and r.stdout.strip() == "41 hello"


def test_long_code_is_run_from_a_file(nsjail: SandboxBackend) -> None:
    code = "x = 1\n" * 30_000 + "print(x)"
    r = nsjail.run(ExecSpec(code=code))
    assert r.ok and r.stdout == "1\n"
