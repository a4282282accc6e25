"""The process backend: a plain subprocess under rlimits, in its own session and process group.

For machines without user namespaces. It is NOT an isolation boundary: the code runs as the
calling user, sees the host filesystem and network, and a daemon that calls ``setsid`` escapes
the process-group kill. Every result says so (``weak_isolation=True`` and a warning message).
What it does give: an environment built from scratch, rlimits (address space, CPU, file size,
open files, processes), a wall-time kill of the whole process group, bounded output, the
workspace as a copy (cwd) diffed afterwards, and every child reaped.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import signal
import subprocess
from collections.abc import Callable

from revex.errors import SandboxError
from revex.runtime.sandbox import _common, overlay
from revex.runtime.sandbox._lifetime import popen_tied
from revex.runtime.sandbox._supervise import supervise
from revex.runtime.sandbox._tree import remove_tree
from revex.runtime.sandbox.base import ExecResult, ExecSpec

WARNING = ("weak isolation: process backend (rlimits and a process group only; no namespaces, "
           "host filesystem and network visible)")


def _limit_setter(spec: ExecSpec, nproc: bool) -> tuple[tuple[int, int], ...]:
    lim = spec.limits
    mb = 1 << 20
    pairs = [
        (resource.RLIMIT_AS, lim.memory_mb * mb),
        (resource.RLIMIT_CPU, max(1, math.ceil(lim.cpu_s))),
        (resource.RLIMIT_FSIZE, lim.fsize_mb * mb),
        (resource.RLIMIT_NOFILE, lim.nofile),
        (resource.RLIMIT_CORE, 0),
    ]
    if nproc:
        pairs.append((resource.RLIMIT_NPROC, lim.pids))
    return tuple(pairs)


def _group_killer(pgid: int) -> Callable[[], None]:
    def kill_group() -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):  # group already empty
            os.killpg(pgid, signal.SIGKILL)

    return kill_group


class ProcessBackend:
    """Runs each spec as a local subprocess with rlimits. Weak isolation; see the module doc.

    RLIMIT_NPROC counts every process of the calling user, so it is applied only when not
    running as root (root ignores it anyway) and the limit is per user, not per run.
    """

    name = "process"

    def __init__(self) -> None:
        self.python, _ = _common.sandbox_python()

    def spawn(self, spec: ExecSpec) -> _common.SpawnedProcess:
        """Start ``spec`` and hand over its pipes (no workspace copy). Close it to end it.

        Raises ``ConfigError``/``SandboxError`` like :meth:`run`.
        """
        env = _common.build_env(spec)
        run_dir = _common.make_run_dir()
        try:
            tmp = os.path.join(run_dir, "tmp")
            os.mkdir(tmp, 0o700)
            env["HOME"] = env["TMPDIR"] = tmp
            input_dir = _common.write_inputs(run_dir, spec)
            if input_dir and env.get("PYTHONPATH") == "/input":
                env["PYTHONPATH"] = input_dir
            cmd = _common.command(spec, self.python, input_dir)
            proc = self._popen(cmd, spec, env, tmp)
        except BaseException:
            _remove(run_dir)
            raise
        kill = _group_killer(proc.pid)
        return _common.SpawnedProcess(
            proc, stop=kill, cleanup=lambda: _remove(run_dir),
            wall_s=spec.limits.wall_s)

    @staticmethod
    def _popen(cmd: list[str], spec: ExecSpec, env: dict[str, str],
               cwd: str) -> subprocess.Popen[bytes]:
        limits = _limit_setter(spec, nproc=os.geteuid() != 0)

        def preexec() -> None:
            for which, value in limits:
                resource.setrlimit(which, (value, value))

        try:
            # Tied to this process: the code gets SIGKILL when its owner dies.
            return popen_tied(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd=cwd, env=env, close_fds=True, start_new_session=True, then=preexec)
        except (OSError, subprocess.SubprocessError) as exc:
            raise SandboxError(f"cannot start {cmd[0]}: {exc}") from exc

    def run(self, spec: ExecSpec) -> ExecResult:
        """Run ``spec``; raises ``ConfigError`` for a malformed spec and ``SandboxError`` if the
        process cannot be started."""
        env = _common.build_env(spec)
        run_dir = _common.make_run_dir()
        keep = False
        try:
            tmp = os.path.join(run_dir, "tmp")
            os.mkdir(tmp, 0o700)
            env["HOME"] = env["TMPDIR"] = tmp
            input_dir = _common.write_inputs(run_dir, spec)
            if input_dir and "PYTHONPATH" in env and env["PYTHONPATH"] == "/input":
                env["PYTHONPATH"] = input_dir
            cmd = _common.command(spec, self.python, input_dir)
            copy = None
            cwd = tmp
            if spec.workspace is not None:
                if not os.path.isdir(spec.workspace):
                    raise SandboxError(f"workspace {spec.workspace!r} is not a directory")
                copy = os.path.join(run_dir, "copy")
                overlay.copy_workspace(os.path.realpath(spec.workspace), copy)
                cwd = copy
            proc = self._popen(cmd, spec, env, cwd)
            kill_group = _group_killer(proc.pid)

            sup = supervise(proc, spec.stdin, wall_s=spec.limits.wall_s,
                            output_bytes=spec.limits.output_bytes, stop=kill_group,
                            after_exit=kill_group)
            kill_group()
            result = _common.to_result(sup, spec, self.name, message=WARNING, weak=True)
            if copy is not None:
                result.changes = overlay.diff_trees(os.path.realpath(spec.workspace or ""), copy,
                                                    spec.limits)
                result.upper_dir, result._run_dir = copy, run_dir
                keep = True
            return result
        finally:
            if not keep:
                _remove(run_dir)


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        remove_tree(path)
