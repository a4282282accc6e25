"""The docker backend on a real engine (Podman's Docker API here), held to nsjail's rules: the
same limit and escape cases run on both backends, statuses come from facts, a workspace's
change set is journaled and rolled back exactly, and no container outlives its run.

Skips with the reason when no engine answers; ``REVEX_REQUIRE_DOCKER=1`` makes that a failure.
Start one with ``scripts/revex-podman.sh``.
"""

from __future__ import annotations

import os
import resource
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from revex import Limits, Runtime
from revex.demo import tree_digest
from revex.errors import SandboxError
from revex.runtime.sandbox import select_backend
from revex.runtime.sandbox.base import ExecStatus, SandboxBackend, make_spec
from revex.runtime.sandbox.nsjail import NsjailBackend

docker_sdk = pytest.importorskip("docker", reason="the docker SDK is not installed: "
                                 "pip install 'revex[docker]'")
from revex.runtime.sandbox.docker import LABEL, DockerBackend, remove_leftovers  # noqa: E402


@pytest.fixture(scope="module")
def docker_backend() -> Iterator[DockerBackend]:
    try:
        be = select_backend("docker")
        assert isinstance(be, DockerBackend)
    except SandboxError as exc:
        if os.environ.get("REVEX_REQUIRE_DOCKER") == "1":
            pytest.fail(f"REVEX_REQUIRE_DOCKER=1 but the docker backend cannot run: {exc}")
        pytest.skip(f"no Docker-API engine: {exc}")
    yield be
    be.close()


@pytest.fixture(params=["nsjail", "docker"])
def backend(request: pytest.FixtureRequest) -> SandboxBackend:
    if request.param == "docker":
        return request.getfixturevalue("docker_backend")
    return NsjailBackend()


def _ours(be: DockerBackend) -> list[object]:
    return be.client.containers.list(all=True, filters={"label": f"{LABEL}={os.getpid()}"})


LIMIT_CASES = [
    ("print(6 * 7)", Limits(), ExecStatus.OK),
    ("import sys; sys.exit(3)", Limits(), ExecStatus.FAILED),
    ("import time; time.sleep(30)", Limits(wall_s=1), ExecStatus.TIMEOUT),
    ("x = bytearray(400 << 20); print(len(x))", Limits(memory_mb=96), ExecStatus.MEMORY),
    ("print('x' * 50_000)", Limits(output_bytes=1000), ExecStatus.OUTPUT_LIMIT),
    ("import subprocess, sys; subprocess.run([sys.executable, '-c', "
     "'import os, signal; os.kill(os.getpid(), signal.SIGKILL)'], check=True)",
     Limits(), ExecStatus.FAILED),
]


@pytest.mark.parametrize("code, limits, status", LIMIT_CASES)
def test_limits_map_to_the_same_statuses(backend: SandboxBackend, code: str, limits: Limits,
                                         status: ExecStatus) -> None:
    result = backend.run(make_spec(code, limits=limits))
    assert result.status is status, (result.status, result.stderr[-300:])
    if status is ExecStatus.OUTPUT_LIMIT:
        assert result.stdout_truncated and len(result.stdout) <= 1000


def test_forged_output_does_not_choose_the_status(docker_backend: DockerBackend) -> None:
    # The code prints what a memory kill or a timeout would print and exits 137 early: the
    # status comes from the engine's and the kernel's facts (no OOM, wall not reached).
    result = docker_backend.run(make_spec(
        "print('Killed'); import sys; sys.stderr.write('MemoryError timeout'); sys.exit(137)"))
    assert result.status is ExecStatus.KILLED and result.signal == 9


ESCAPES = {
    "root filesystem is read-only": "open('/usr/evil', 'w')",
    "no network": "import socket; socket.create_connection(('1.1.1.1', 53), timeout=3)",
    "not root": "import os, sys; sys.exit(os.getuid() == 0 or os.getgid() == 0)",
    "no capabilities": "import sys; l = [x for x in open('/proc/self/status') "
                       "if x.startswith('CapEff')][0]; sys.exit(int(l.split()[1], 16) != 0)",
    "no new privileges": "import sys; l = [x for x in open('/proc/self/status') "
                         "if x.startswith('NoNewPrivs')][0]; sys.exit(l.split()[1] != '1')",
    "pids limit": "import os, time\nfor _ in range(200):\n    if os.fork() == 0:\n"
                  "        time.sleep(5)\n        os._exit(0)\n",
}
# What each attempt must end as: refused (FAILED) or, for the checks that exit 0 when the
# isolation holds, OK.
ESCAPE_OK = {"not root", "no capabilities", "no new privileges"}


@pytest.mark.parametrize("name", sorted(ESCAPES))
def test_escape_attempts_fail_the_same_way(backend: SandboxBackend, name: str) -> None:
    result = backend.run(make_spec(ESCAPES[name], limits=Limits(wall_s=15, pids=32)))
    if name in ESCAPE_OK:
        assert result.status is ExecStatus.OK, result.stderr[-300:]
    else:
        assert result.status is not ExecStatus.OK, (name, result.stdout[-200:])


def test_workspace_changes_are_journaled_and_rolled_back(
        docker_backend: DockerBackend, tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "keep.txt").write_text("keep")
    (ws / "gone.txt").write_text("bye")
    before = tree_digest(ws)
    with Runtime(state_dir=tmp_path / "state", sandbox=docker_backend, audit=None) as rt, \
            rt.episode(workspace=ws) as ep:
        result = ep.run(code="import os\nopen('keep.txt', 'a').write(' more')\n"
                             "os.remove('gone.txt')\nos.makedirs('new')\n"
                             "open('new/f.bin', 'wb').write(bytes(range(256)))\n")
        assert result.status == "ok", result.stderr
        assert result.changes_applied is True
        assert (ws / "keep.txt").read_text() == "keep more"
        assert not (ws / "gone.txt").exists()
        assert (ws / "new/f.bin").read_bytes() == bytes(range(256))
    assert tree_digest(ws) == before


def test_no_container_outlives_its_run(docker_backend: DockerBackend) -> None:
    docker_backend.run(make_spec("print(1)"))
    docker_backend.run(make_spec("import time; time.sleep(30)", limits=Limits(wall_s=1)))
    assert _ours(docker_backend) == []


def test_leftovers_of_a_dead_client_are_removed(docker_backend: DockerBackend) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid is now free: a client that crashed
    ctr = docker_backend.client.containers.create(
        docker_backend.image, ["sleep", "1"], labels={LABEL: str(dead.pid)})
    assert remove_leftovers() >= 1
    with pytest.raises(docker_sdk.errors.NotFound):
        ctr.reload()


def test_flooded_output_is_read_only_up_to_the_limit(docker_backend: DockerBackend) -> None:
    # ~300 MB of output: the host keeps 1000 bytes and never holds the rest in memory.
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = docker_backend.run(make_spec(
        "import sys\nfor _ in range(300):\n    sys.stdout.write('x' * (1 << 20))\n",
        limits=Limits(output_bytes=1000, wall_s=60, cpu_s=60)))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert result.status is ExecStatus.OUTPUT_LIMIT and result.stdout == "x" * 1000
    assert grown_mb < 100, grown_mb


def test_nothing_carries_over_to_the_next_run(docker_backend: DockerBackend) -> None:
    # Podman keeps /dev/shm, /run and /var/tmp writable even with a read-only root: a run
    # leaves a file in each writable place; the next run, in a fresh container, finds none.
    places = ["/tmp", "/dev/shm", "/run", "/var/tmp"]
    leave = docker_backend.run(make_spec(
        "import os\n"
        f"for d in {places!r}:\n"
        "    try:\n        open(os.path.join(d, 'left'), 'w').write('x')\n"
        "        print(d)\n"
        "    except OSError:\n        pass\n"))
    assert leave.ok and "/tmp" in leave.stdout.split(), (leave.stdout, leave.stderr)
    look = docker_backend.run(make_spec(
        f"import os; print([d for d in {places!r} if os.path.exists(os.path.join(d, 'left'))])"))
    assert look.ok and look.stdout == "[]\n", (look.stdout, look.stderr)
