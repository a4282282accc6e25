"""The docker backend: each run in a fresh container, driven by the ``docker`` SDK only (no
``docker`` binary), against Docker or Podman's Docker-compatible API.

Isolation per run: read-only root filesystem, user 65534, every capability dropped,
``no-new-privileges``, no network unless the spec asks for it, memory (swap included), pids,
CPU and open-file limits, a size-capped private /tmp. The code, stdin and ``spec.files`` come in
read-only bind mounts; stdout and stderr go to files the host created and reads back up to the
limit (never through the engine's log API, which would hold all of it); a workspace is a copy
(owned by 65534) bound at /workspace and diffed afterwards, so its change set is applied by the
runtime as journaled file actions like nsjail's.

Statuses come from facts the code cannot write: the engine's exit code and ``OOMKilled`` flag
(``inspect``) and the host's own clock, never from the output. The wall limit is enforced twice:
``timeout -s KILL`` inside the container and a host-side wait that kills the container. Every
container carries the label ``revex.owner=<pid>`` and is removed in a ``finally``;
:func:`remove_leftovers` removes those whose owner process died.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import stat
import time
from typing import Any

from revex.errors import ConfigError, SandboxError
from revex.runtime.sandbox import _cgroup, _common, overlay
from revex.runtime.sandbox._lifetime import pid_alive
from revex.runtime.sandbox.base import ExecResult, ExecSpec, ExecStatus, Limits

DEFAULT_IMAGE = "localhost/revex-py:1"
DEFAULT_URL = "unix:///run/revex-podman.sock"
LABEL = "revex.owner"
_SIGKILL, _SIGXCPU = 9, 24
_IO = "/revex-io"  # stdin file, read-only
#: stdout/stderr files: created by the host (root, 0666) in a root-owned 0755 folder, so the
#: code can write them (up to RLIMIT_FSIZE) but not replace them with links or new files.
_OUT = "/revex-out"


def engine_url() -> str:
    """``$REVEX_DOCKER_HOST``, else ``$DOCKER_HOST``, else the socket of revex-podman.sh."""
    return os.environ.get("REVEX_DOCKER_HOST") or os.environ.get("DOCKER_HOST") or DEFAULT_URL


def connect(base_url: str | None = None) -> Any:
    """A ``docker.DockerClient`` that answered a ping. Raises ``SandboxError`` saying why not."""
    try:
        import docker
    except ImportError as exc:
        raise SandboxError("the docker backend needs the docker SDK: pip install "
                           "'revex[docker]'") from exc
    url = base_url or engine_url()
    if url.startswith("unix://") and not os.path.exists(url[len("unix://"):]):
        # Checked first: the SDK leaks its socket when the version probe cannot connect.
        raise SandboxError(f"no Docker-API engine at {url}: the socket does not exist; start "
                           "one (see scripts/revex-podman.sh) or set REVEX_DOCKER_HOST")
    client = None
    try:
        client = docker.DockerClient(base_url=url, timeout=60)
        client.ping()
    except Exception as exc:  # the SDK raises requests/urllib3/docker errors alike here
        if client is not None:
            client.close()
        raise SandboxError(f"no Docker-API engine answers at {url}: {exc}; start one (see "
                           "scripts/revex-podman.sh) or set REVEX_DOCKER_HOST") from exc
    return client


class DockerBackend:
    """Runs each :class:`ExecSpec` in a fresh container of ``image`` (default:
    ``$REVEX_DOCKER_IMAGE``, else ``localhost/revex-py:1``). Thread-safe.

    Raises ``SandboxError`` when no engine answers or the image is missing.
    """

    name = "docker"

    def __init__(self, image: str | None = None, *, base_url: str | None = None,
                 python: str = "/usr/bin/python3") -> None:
        image = image or os.environ.get("REVEX_DOCKER_IMAGE") or DEFAULT_IMAGE
        _check_image_name(image)
        self.client = connect(base_url)  # first: it turns a missing SDK into a SandboxError
        import docker.errors

        self._errors = docker.errors
        self.image = image
        self.python = python
        # With a local engine on cgroup v1 each container goes under a per-run memory cgroup
        # of ours that holds the limit: its OOM counter is a fact the code cannot write (Podman
        # on cgroup v1 leaves State.OOMKilled false when the kernel killed a process).
        url = base_url or engine_url()
        self.local_cgroups = (url.startswith("unix://") and os.geteuid() == 0
                              and _cgroup.v1_usable()[0])
        try:
            self.client.images.get(image)
        except docker.errors.ImageNotFound as exc:
            self.client.close()
            raise SandboxError(f"image {image!r} is not in the engine; build it with "
                               "scripts/revex-podman.sh or pass image=...") from exc

    def check(self) -> None:
        """Run a probe container and check what the engine may silently skip: the user, a
        writable private /tmp (Podman ignores ``mode=`` on tmpfs and copies the image's /tmp
        mode), and a memory limit the container can see. Raises ``SandboxError`` naming the
        first that fails."""
        probe = ("import os\n"
                 "assert os.getuid() == 65534, 'runs as uid %d' % os.getuid()\n"
                 "open('/tmp/probe', 'w').write('x')\n")
        result = self.run(ExecSpec(code=probe, limits=Limits(wall_s=30, memory_mb=256)))
        if not result.ok:
            raise SandboxError(f"the docker backend's probe run failed ({result.status}): "
                               f"{result.stderr[-300:]}; rebuild the image with "
                               "scripts/revex-podman.sh (its /tmp must be mode 1777)")

    def close(self) -> None:
        """Close the connection to the engine. Idempotent."""
        self.client.close()

    def run(self, spec: ExecSpec) -> ExecResult:
        """Run ``spec`` in a new container and remove it. Raises ``ConfigError`` for a
        malformed spec, ``SandboxError`` when the engine cannot create or start it."""
        env = _common.build_env(spec)
        cmd = _common.command(spec, self.python, "/input")
        run_dir = _common.make_run_dir()
        keep = False
        try:
            input_dir = _common.write_inputs(run_dir, spec)
            io_dir = os.path.join(run_dir, "io")
            os.mkdir(io_dir, 0o755)
            with open(os.path.join(io_dir, "stdin"), "wb") as f:
                f.write(spec.stdin)
            os.chmod(os.path.join(io_dir, "stdin"), 0o644)
            out_dir = os.path.join(run_dir, "out")
            os.mkdir(out_dir, 0o755)
            for name in ("stdout", "stderr"):
                fd = os.open(os.path.join(out_dir, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                             0o666)
                os.fchmod(fd, 0o666)
                os.close(fd)
            volumes = {io_dir: {"bind": _IO, "mode": "ro"},
                       out_dir: {"bind": _OUT, "mode": "rw"}}
            if input_dir:
                volumes[input_dir] = {"bind": "/input", "mode": "ro"}
            copy = lower = None
            if spec.workspace is not None:
                lower = os.path.realpath(spec.workspace)
                if not os.path.isdir(lower):
                    raise SandboxError(f"workspace {spec.workspace!r} is not a directory")
                copy = os.path.join(run_dir, "copy")
                owner = (_common.SANDBOX_UID, _common.SANDBOX_GID) if os.geteuid() == 0 else None
                overlay.copy_workspace(lower, copy, owner)
                volumes[copy] = {"bind": "/workspace", "mode": "rw"}
            result = self._contain(spec, cmd, env, volumes, "/workspace" if copy else "/tmp",
                                   out_dir)
            if copy is not None and lower is not None:
                try:
                    result.changes = overlay.diff_trees(lower, copy)
                except OSError as exc:
                    raise SandboxError(f"cannot read the run's changes: {exc}") from exc
                result.upper_dir, result._run_dir, keep = copy, run_dir, True
            return result
        finally:
            if not keep:
                shutil.rmtree(run_dir, ignore_errors=True)

    def _contain(self, spec: ExecSpec, cmd: list[str], env: dict[str, str],
                 volumes: dict[str, dict[str, str]], cwd: str, out_dir: str) -> ExecResult:
        import docker.types

        lim = spec.limits
        wrapped = ["timeout", "-s", "KILL", f"{lim.wall_s:g}", "/bin/sh", "-c",
                   f'exec "$@" < {_IO}/stdin > {_OUT}/stdout 2> {_OUT}/stderr', "sh", *cmd]
        # RLIMIT_CPU soft < hard: the kernel sends SIGXCPU at the soft limit (a fact the
        # status can use), SIGKILL a second later if the code ignores it.
        cpu = max(1, math.ceil(lim.cpu_s))
        ulimits = [docker.types.Ulimit(name=n, soft=v, hard=h) for n, v, h in (
            ("nofile", lim.nofile, lim.nofile), ("nproc", 1024, 1024), ("cpu", cpu, cpu + 1),
            ("fsize", lim.fsize_mb << 20, lim.fsize_mb << 20), ("core", 0, 0))]
        limit = lim.memory_mb << 20
        mem = None
        if self.local_cgroups:
            try:
                mem = _cgroup.MemoryCgroup.create(limit)
            except OSError as exc:
                raise SandboxError(f"cannot create the run's memory cgroup: {exc}") from exc
            limit += 64 << 20  # the container's own limit is a backstop; ours binds first
        try:
            return self._create_and_run(spec, wrapped, env, volumes, cwd, ulimits, limit, mem,
                                        out_dir)
        finally:
            if mem is not None:
                _remove_cgroup_everywhere(mem)

    def _create_and_run(self, spec: ExecSpec, wrapped: list[str], env: dict[str, str],
                        volumes: dict[str, dict[str, str]], cwd: str, ulimits: list[Any],
                        limit: int, mem: _cgroup.MemoryCgroup | None,
                        out_dir: str) -> ExecResult:
        extra = {"cgroup_parent": f"/{mem.name}"} if mem is not None else {}
        try:
            ctr = self.client.containers.create(
                self.image, wrapped, detach=True, environment=env, working_dir=cwd,
                network_mode="bridge" if spec.network else "none", read_only=True,
                user=f"{_common.SANDBOX_UID}:{_common.SANDBOX_GID}", cap_drop=["ALL"],
                security_opt=["no-new-privileges"], mem_limit=limit,
                memswap_limit=limit, pids_limit=spec.limits.pids,
                nano_cpus=1_000_000_000, ulimits=ulimits, volumes=volumes,
                tmpfs={"/tmp": f"rw,size={spec.limits.tmpfs_mb}m,mode=1777"},
                labels={LABEL: str(os.getpid())}, hostname="revex", **extra)
        except self._errors.DockerException as exc:
            raise SandboxError(f"the engine cannot create the container: {exc}") from exc
        try:
            return self._supervise(ctr, spec, mem, out_dir)
        finally:
            with contextlib.suppress(self._errors.NotFound):
                ctr.remove(force=True)

    def _supervise(self, ctr: Any, spec: ExecSpec,
                   mem: _cgroup.MemoryCgroup | None, out_dir: str) -> ExecResult:
        lim = spec.limits
        start = time.monotonic()
        try:
            ctr.start()
        except self._errors.DockerException as exc:
            raise SandboxError(f"the engine cannot start the container: {exc}") from exc
        host_timeout = False
        try:
            code = int(ctr.wait(timeout=lim.wall_s + 10)["StatusCode"])
        except Exception:  # requests' ReadTimeout: the in-container timeout did not end it
            host_timeout, code = True, 128 + _SIGKILL
            try:
                ctr.kill()
                ctr.wait(timeout=30)
            except self._errors.DockerException:
                pass  # it ended between the timeout and the kill; the remove() follows
        wall = time.monotonic() - start
        ctr.reload()
        state = ctr.attrs.get("State", {})
        peak, oom_kills = mem.read() if mem is not None else (0, 0)
        # Facts from the kernel: the engine's flag, our cgroup's counters, or a kill after the
        # peak reached the limit (with memsw limited, v1 leaves both failcnts at 0 here).
        oom = (bool(state.get("OOMKilled")) or oom_kills > 0
               or (code == 128 + _SIGKILL and peak >= lim.memory_mb << 20))
        cap = lim.output_bytes
        out = _read_output(os.path.join(out_dir, "stdout"), cap + 1)
        err = _read_output(os.path.join(out_dir, "stderr"), cap + 1)
        sig = code - 128 if code > 128 else None
        if host_timeout or (sig == _SIGKILL and wall >= lim.wall_s and not oom):
            status = ExecStatus.TIMEOUT
        elif len(out) > cap or len(err) > cap:
            status = ExecStatus.OUTPUT_LIMIT
        elif oom and code != 0:
            status = ExecStatus.MEMORY
        elif sig == _SIGXCPU:
            status = ExecStatus.TIMEOUT
        elif code == 0:
            status = ExecStatus.OK
        elif sig is not None:
            status = ExecStatus.KILLED
        else:
            status = ExecStatus.FAILED
        return ExecResult(
            status=status, exit_code=code if sig is None else None, signal=sig,
            stdout=out[:cap].decode("utf-8", "replace"),
            stderr=err[:cap].decode("utf-8", "replace"),
            stdout_truncated=len(out) > cap, stderr_truncated=len(err) > cap, wall_s=wall,
            peak_memory_mb=peak / (1 << 20), backend=self.name)


def _read_output(path: str, limit: int) -> bytes:
    """At most ``limit`` bytes of an output file the code wrote (it may hold up to
    RLIMIT_FSIZE); never follows a link, reads only a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise SandboxError(f"cannot read the run's output {path}: {exc}") from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SandboxError(f"the run's output {path} is not a regular file")
        buf = bytearray()
        while len(buf) < limit:
            chunk = os.read(fd, min(1 << 20, limit - len(buf)))
            if not chunk:
                break
            buf += chunk
        return bytes(buf)
    finally:
        os.close(fd)


def _remove_cgroup_everywhere(mem: _cgroup.MemoryCgroup) -> None:
    """Remove the run's cgroup in every v1 hierarchy: the engine creates the parent it was
    given in each controller it uses, and leaves it there."""
    for ctl in sorted(os.listdir(_cgroup.CGROUP_ROOT)):
        path = os.path.join(_cgroup.CGROUP_ROOT, ctl)
        if not os.path.islink(path):
            _cgroup.remove_tree(os.path.join(path, mem.name))


def remove_leftovers(base_url: str | None = None) -> int:
    """Remove containers labelled ``revex.owner=<pid>`` whose owner process is gone (a client
    that crashed mid-run). Returns how many were removed. Raises ``SandboxError`` when no engine
    answers."""
    client = connect(base_url)
    removed = 0
    try:
        for ctr in client.containers.list(all=True, filters={"label": LABEL}):
            owner = str(ctr.labels.get(LABEL, ""))
            if owner.isdigit() and pid_alive(int(owner)):
                continue
            ctr.remove(force=True)
            removed += 1
    finally:
        client.close()
    return removed


def _check_image_name(image: str) -> None:
    if not image or "/" not in image:
        raise ConfigError(f"image {image!r} must be fully qualified, e.g. {DEFAULT_IMAGE}")
