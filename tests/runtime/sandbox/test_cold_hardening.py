"""The cold nsjail path under hostile code: statuses it cannot forge, limits that hold for the
whole run, input that cannot reach the kernel raw, and host paths it cannot see."""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass

import pytest

from revex.errors import ConfigError
from revex.runtime.sandbox.base import ExecSpec, ExecStatus, Limits, make_spec
from revex.runtime.sandbox.nsjail import NsjailBackend

FAKE_NSJAIL_LOG = (
    "import sys\n"
    "sys.stderr.write('[E][2026-01-01T00:00:00+0000][1] initNsInternal():361 chdir failed\\n'\n"
    "                 '[F][2026-01-01T00:00:00+0000][1] runChild():506 Launching child process"
    " failed\\n')\n"
    "sys.exit(255)\n")


def test_nsjail_looking_stderr_and_exit_255_is_failed(nsjail: NsjailBackend) -> None:
    r = nsjail.run(ExecSpec(code=FAKE_NSJAIL_LOG))
    assert r.status is ExecStatus.FAILED and r.exit_code == 255 and r.signal is None
    assert "Launching child process failed" in r.stderr  # the code's own output is kept


def test_memory_error_text_is_not_a_memory_status(nsjail: NsjailBackend) -> None:
    code = "import sys\nprint('MemoryError')\nsys.stderr.write('MemoryError\\n')\nsys.exit(1)"
    r = nsjail.run(ExecSpec(code=code))
    assert r.status is ExecStatus.FAILED and r.exit_code == 1


def test_code_cannot_reach_nsjails_log(nsjail: NsjailBackend) -> None:
    # The log that statuses come from is on an fd nsjail closes before the code starts.
    r = nsjail.run(ExecSpec(code="import os; print(sorted(os.listdir('/proc/self/fd')))"))
    assert r.ok and r.stdout.strip() == "['0', '1', '2', '3']"  # 3: listdir's own fd


def test_exit_code_above_128_is_not_read_as_a_signal(nsjail: NsjailBackend) -> None:
    r = nsjail.run(ExecSpec(code="raise SystemExit(137)"))
    assert r.status is ExecStatus.FAILED and r.exit_code == 137 and r.signal is None


def test_real_nsjail_failure_is_still_a_sandbox_error(nsjail: NsjailBackend) -> None:
    # A cwd that does not exist inside the jail: nsjail itself fails before the code runs.
    spec = ExecSpec(code="print(1)")
    prep = nsjail._prepare(spec, log=True)
    try:
        i = prep.argv.index("--cwd")
        prep.argv[i + 1] = "/does-not-exist"
        r = nsjail._supervise(prep, spec)
    finally:
        from revex.runtime.sandbox.nsjail import _release

        _release(prep.cgroup, prep.run_dir, prep.log_fd)
    assert r.status is ExecStatus.SANDBOX_ERROR and "nsjail failed" in r.message


BUSY_CHILDREN = """
import os, time
kids = []
for _ in range(3):
    pid = os.fork()
    if pid == 0:
        t0 = time.process_time()
        while time.process_time() - t0 < 0.4:
            pass
        os._exit(0)
    kids.append(pid)
for pid in kids:
    os.waitpid(pid, 0)
print('all done')
"""


def test_cpu_limit_holds_for_the_whole_run(nsjail: NsjailBackend) -> None:
    if nsjail.cgroups is False:
        pytest.skip("per-run CPU needs cgroups")
    # Three children of 0.4 s each stay under the per-process rlimit (1 s) but use 1.2 s in
    # all: the run is stopped once all of its processes together used 0.6 s.
    r = nsjail.run(ExecSpec(code=BUSY_CHILDREN, limits=Limits(cpu_s=0.6, wall_s=120)))
    assert r.status is ExecStatus.TIMEOUT and "all done" not in r.stdout
    assert "CPU time" in r.message  # stopped for CPU, not for wall time
    assert 0.6 <= r.cpu_s < 1.1, r.cpu_s


def test_cpu_limit_holds_for_a_spawned_run(nsjail: NsjailBackend) -> None:
    if nsjail.cgroups is False:
        pytest.skip("per-run CPU needs cgroups")
    sp = nsjail.spawn(ExecSpec(code=BUSY_CHILDREN, limits=Limits(cpu_s=0.6, wall_s=120)))
    try:
        out = b""
        while chunk := os.read(sp.stdout, 4096):  # EOF once the jail is gone
            out += chunk
    finally:
        sp.close()
    assert b"all done" not in out and sp.cpu_limited


def test_cpu_of_all_processes_is_reported(nsjail: NsjailBackend) -> None:
    if nsjail.cgroups is False:
        pytest.skip("per-run CPU needs cgroups")
    r = nsjail.run(ExecSpec(code=BUSY_CHILDREN, limits=Limits(cpu_s=10, wall_s=120)))
    assert r.ok and "all done" in r.stdout
    assert r.cpu_s >= 1.2, r.cpu_s


MANY_CHILDREN = """
import os, time
kids = []
for _ in range({n}):
    pid = os.fork()
    if pid == 0:
        b = bytearray({mb} << 20)
        time.sleep({hold})
        os._exit(7)
    kids.append(pid)
print(sum(os.waitpid(p, 0)[1] == 7 << 8 for p in kids))
"""


def test_memory_limit_holds_for_all_processes_of_a_run(nsjail: NsjailBackend) -> None:
    # Guard (held before this change too): the run's memory cgroup covers every process, so
    # five children of 100 MB cannot all live under 128 MB; the kernel kills the excess.
    code = MANY_CHILDREN.format(n=5, mb=100, hold=2)
    r = nsjail.run(ExecSpec(code=code, limits=Limits(memory_mb=128, wall_s=20)))
    assert r.ok and int(r.stdout) <= 1, r
    assert r.peak_memory_mb <= 128 + 1


def test_peak_memory_is_of_the_whole_run(nsjail: NsjailBackend) -> None:
    code = MANY_CHILDREN.format(n=3, mb=40, hold=1)
    r = nsjail.run(ExecSpec(code=code, limits=Limits(memory_mb=256, wall_s=20)))
    assert r.ok and int(r.stdout) == 3
    assert r.peak_memory_mb >= 120, r.peak_memory_mb


def test_missing_program_is_a_sandbox_error(nsjail: NsjailBackend) -> None:
    r = nsjail.run(ExecSpec(argv=("/nonexistent-program",)))
    assert r.status is ExecStatus.SANDBOX_ERROR and "execve" in r.message


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"wall_s": math.nan}, "wall_s"),
    ({"wall_s": math.inf}, "wall_s"),
    ({"cpu_s": -math.inf}, "cpu_s"),
    ({"pids": 2.5}, "pids"),
    ({"memory_mb": 128.5}, "memory_mb"),
    ({"output_bytes": 10**30}, "output_bytes"),
    ({"nofile": "64"}, "nofile"),
    ({"tmpfs_mb": True}, "tmpfs_mb"),
])
def test_bad_limits_are_config_errors_naming_the_field(kwargs: dict[str, object],
                                                       field: str) -> None:
    with pytest.raises(ConfigError, match=f"Limits.{field}"):
        Limits(**kwargs)  # type: ignore[arg-type]


def test_whole_number_floats_are_taken_as_counts() -> None:
    lim = Limits(pids=16.0, memory_mb=256.0)  # type: ignore[arg-type]
    assert lim.pids == 16 and isinstance(lim.pids, int) and lim.memory_mb == 256


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"code": "print(1)\0"}, "ExecSpec.code"),
    ({"code": "print('\ud800')"}, "ExecSpec.code"),
    ({"code": "x = 1\n" * 30_000 + "'\udcff'"}, "ExecSpec.code"),  # long code goes to a file
    ({"argv": ("/bin/echo", "a\0b")}, "ExecSpec.argv"),
    ({"code": "pass", "env": {"A": "\udc80"}}, "ExecSpec.env"),
    ({"code": "pass", "files": {"a\udcff.py": b""}}, "ExecSpec.files"),
    ({"code": "pass", "workspace": os.fsdecode(b"/tmp/revex-\xff-ws")}, "ExecSpec.workspace"),
])
def test_text_the_kernel_cannot_take_is_a_config_error(kwargs: dict[str, object],
                                                       field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        ExecSpec(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"stdin": "a\udc80"}, "stdin"),
    ({"files": {"a.txt": "\ud800"}}, "files"),
    ({"stdin": 3.5}, "stdin"),
    ({"stdin": 5}, "stdin"),
])
def test_bad_stdin_and_file_content_are_config_errors(kwargs: dict[str, object],
                                                      field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        make_spec("print(1)", **kwargs)  # type: ignore[arg-type]


def test_non_utf8_workspace_through_the_api_is_a_config_error(tmp_path: object) -> None:
    ws = os.path.join(os.fsencode(str(tmp_path)), b"ws-\xff")
    os.mkdir(ws)
    with pytest.raises(ConfigError, match=r"ExecSpec\.workspace"):
        make_spec("print(1)", workspace=os.fsdecode(ws))


def test_overlay_mountinfo_shows_neither_workspace_nor_its_name(nsjail: NsjailBackend,
                                                                open_dir: str) -> None:
    ws = os.path.join(open_dir, "secret-project-name")
    os.mkdir(ws)
    os.chown(ws, nsjail.outer_uid, nsjail.outer_gid)  # overlay mode needs the jail's owner
    with open(os.path.join(ws, "a.txt"), "w") as f:
        f.write("a")
    os.chown(os.path.join(ws, "a.txt"), nsjail.outer_uid, nsjail.outer_gid)
    r = nsjail.run(ExecSpec(code="print(open('/proc/self/mountinfo').read())\n"
                                 "open('b.txt', 'w').write('b')", workspace=ws))
    try:
        assert r.ok, r.stderr
        assert "/workspace" in r.stdout and " overlay " in r.stdout  # the overlay is there
        assert "secret-project-name" not in r.stdout and open_dir not in r.stdout
        assert [c.path for c in r.changes] == ["b.txt"]  # and works through the link
    finally:
        r.discard()
    shutil.rmtree(ws)


@dataclass(frozen=True)
class _MoreLimits(Limits):
    """A Limits with fields added later (as another change may add): covered by type."""

    max_files: int = 100
    max_bytes: int | None = None
    grace_s: float = 1.0


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"max_files": 2.5}, "max_files"),
    ({"max_bytes": math.nan}, "max_bytes"),
    ({"max_bytes": 0}, "max_bytes"),
    ({"grace_s": math.inf}, "grace_s"),
])
def test_limits_fields_added_later_are_checked_by_type(kwargs: dict[str, object],
                                                       field: str) -> None:
    with pytest.raises(ConfigError, match=f"Limits.{field}"):
        _MoreLimits(**kwargs)  # type: ignore[arg-type]
    assert _MoreLimits().max_bytes is None and _MoreLimits(max_bytes=5).max_bytes == 5
