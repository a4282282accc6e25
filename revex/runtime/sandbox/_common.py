"""Pieces both backends share: per-run directories, the scratch environment, the interpreter,
input files, and turning a supervised run into an :class:`ExecResult`."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from revex.errors import ConfigError, SandboxError
from revex.runtime.sandbox._lifetime import owner_tag, tag_owner_alive
from revex.runtime.sandbox._supervise import Supervised
from revex.runtime.sandbox._tree import remove_tree
from revex.runtime.sandbox.base import ExecResult, ExecSpec, ExecStatus

SANDBOX_UID = 65534
SANDBOX_GID = 65534
BASE_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONIOENCODING": "utf-8",
}
_CPU_TICK_S = 0.05  # between reads of a spawned run's CPU counter
#: Code longer than this goes to a file instead of ``python -c`` (MAX_ARG_STRLEN is 128 KiB).
MAX_INLINE_CODE = 100_000
#: Run directories are ``revex-<owner tag>-<random>``: the owner's pid is recoverable.
_RUN_DIR = re.compile(r"revex-(\d+\.\d+\.\d+)-[0-9a-f]+")


def runs_root() -> str:
    """The per-user directory that holds run directories: traversable by the sandbox user
    (mode 0711) but not listable. Raises ``SandboxError`` if it cannot be made safe."""
    return user_dir("revex-sandbox", "the sandbox run root")


def user_dir(prefix: str, what: str) -> str:
    """``$TMPDIR/<prefix>-<uid>``, mode 0711 (the jail user may traverse it, only the owner
    lists or creates), created if missing. Raises ``SandboxError`` naming ``what`` if it
    cannot be made, is not a directory, or belongs to someone else."""
    root = os.path.join(tempfile.gettempdir(), f"{prefix}-{os.geteuid()}")
    try:
        os.makedirs(root, mode=0o711, exist_ok=True)
        st = os.lstat(root)
    except OSError as exc:
        raise SandboxError(f"cannot create {what} {root}: {exc}") from exc
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise SandboxError(f"{root} is not a directory owned by uid {os.geteuid()}")
    if stat.S_IMODE(st.st_mode) != 0o711:
        os.chmod(root, 0o711)
    return root


def make_run_dir() -> str:
    """Create a fresh per-run directory (mode 0755, named after this process plus a random
    part) and return its path."""
    path = os.path.join(runs_root(), f"revex-{owner_tag()}-{secrets.token_hex(12)}")
    os.mkdir(path, 0o755)
    os.chmod(path, 0o755)
    return path


def run_dir_owner(name: str) -> str | None:
    """The owner tag in a run directory's name, ``None`` for a name revex did not give."""
    m = _RUN_DIR.fullmatch(name)
    return m.group(1) if m else None


def cleanup_dead_run_dirs() -> list[str]:
    """Remove the run directories (under this user's :func:`runs_root`) whose owner process is
    dead; returns them. Directories of live owners, and names revex did not give, stay."""
    removed: list[str] = []
    try:
        root = runs_root()
    except SandboxError:
        return removed  # no run root: nothing can have been left there
    with contextlib.suppress(OSError), os.scandir(root) as it:
        for entry in list(it):
            tag = run_dir_owner(entry.name)
            if tag is not None and not tag_owner_alive(tag):
                try:
                    remove_tree(entry.path)
                except OSError:
                    continue
                removed.append(entry.path)
    return removed


def build_env(spec: ExecSpec) -> dict[str, str]:
    """The child's environment, built from scratch: :data:`BASE_ENV` plus ``spec.env``.

    Raises ``ConfigError`` for a name or value that is not a valid environment entry.
    """
    env = dict(BASE_ENV)
    for key, value in spec.env.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise ConfigError(f"invalid environment entry {key!r}")
        env[key] = value
    if spec.files:
        env.setdefault("PYTHONPATH", "/input")
    return env


def write_inputs(run_dir: str, spec: ExecSpec) -> str | None:
    """Write ``spec.files`` (and long code) under ``<run_dir>/input``; return that folder or
    ``None`` when there is nothing to write. Raises ``ConfigError`` for an unsafe file name."""
    long_code = spec.code is not None and len(spec.code) > MAX_INLINE_CODE
    if not spec.files and not long_code:
        return None
    inp = os.path.join(run_dir, "input")
    os.mkdir(inp, 0o755)
    files = dict(spec.files)
    if long_code:
        assert spec.code is not None
        files["__revex_main__.py"] = spec.code.encode()
    for rel, data in files.items():
        parts = rel.split("/")
        if rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in rel:
            raise ConfigError(f"ExecSpec.files name {rel!r} must be a relative path without '..'")
        dest = os.path.join(inp, *parts)
        os.makedirs(os.path.dirname(dest), mode=0o755, exist_ok=True)
        with open(dest, "wb") as f:
            f.write(data)
        os.chmod(dest, 0o644)
    return inp


def command(spec: ExecSpec, python: str, input_dir: str | None) -> list[str]:
    """The argv to run inside the sandbox (``input_dir`` as seen from inside)."""
    if (spec.code is None) == (spec.argv is None):
        raise ConfigError("ExecSpec needs exactly one of code and argv")
    if spec.argv is not None:
        if not spec.argv:
            raise ConfigError("ExecSpec.argv is empty")
        return list(spec.argv)
    assert spec.code is not None
    long_code = len(spec.code) > MAX_INLINE_CODE
    if spec.language == "bash":
        return ["/bin/bash", f"{input_dir}/__revex_main__.py"] if long_code else [
            "/bin/bash", "-c", spec.code]
    if spec.language not in ("python", "python3"):
        raise ConfigError(f"language {spec.language!r} is not supported; use argv")
    if long_code:
        return [python, "-B", f"{input_dir}/__revex_main__.py"]
    return [python, "-B", "-c", spec.code]


def world_traversable(path: str) -> bool:
    """Whether every directory from / down to ``path`` can be traversed by any user."""
    path = os.path.realpath(path)
    while True:
        try:
            if not os.stat(path).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
        if path == "/":
            return True
        path = os.path.dirname(path)


def sandbox_python() -> tuple[str, str | None]:
    """The interpreter to run inside a sandbox and the prefix to bind for it (``None`` when it
    lives under the always-bound /usr).

    revex's own base interpreter is used when the sandbox user can reach it; a prefix under a
    private directory (e.g. /root/.pyenv, /root being 0700) cannot be bind-mounted by the
    unprivileged jailed user, so /usr/bin/python3 is used then. Raises ``SandboxError`` if
    neither exists.
    """
    prefix = os.path.realpath(sys.base_prefix)
    exe = os.path.join(prefix, "bin", f"python{sys.version_info[0]}.{sys.version_info[1]}")
    if os.path.exists(exe) and world_traversable(prefix):
        if prefix.startswith(("/usr/", "/bin/", "/lib/")) or prefix == "/usr":
            return exe, None
        return exe, prefix
    for cand in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(cand):
            return cand, None
    raise SandboxError("no Python interpreter reachable by the sandbox user")


def to_result(sup: Supervised, spec: ExecSpec, backend: str, *, oom: bool = False,
              peak_mb: float | None = None, message: str = "",
              weak: bool = False, infer_memory_from_stderr: bool = True,
              exit_fact: tuple[int | None, int | None] | None = None,
              run_cpu_s: float | None = None) -> ExecResult:
    """Turn a supervised run into a result, choosing the status.

    ``exit_fact``: (exit code, signal) of the sandboxed process as its supervisor saw it; when
    absent they are read from ``sup.returncode`` (where an exit code above 128 reads as a
    signal). ``run_cpu_s``: CPU seconds of the whole run (a cgroup), else rusage is used.
    ``infer_memory_from_stderr`` reads a ``MemoryError`` in the code's own stderr as status
    ``memory``: forgeable by the code, so backends with a kernel fact pass ``False``.
    """
    code = sup.returncode
    if exit_fact is not None:
        exit_code, sig = exit_fact
        code = exit_code if exit_code is not None else 128 + (sig or 0)
    else:
        sig = -code if code < 0 else (code - 128 if code > 128 else None)
    err_tail = sup.stderr[-400:]
    ru = sup.rusage
    cpu = (ru.ru_utime + ru.ru_stime) if ru else 0.0
    if run_cpu_s is not None:
        cpu = run_cpu_s
    # RLIMIT_CPU with soft == hard ends in SIGKILL (not SIGXCPU) once the CPU time is used up.
    cpu_out = sup.cpu_limited or sig == signal.SIGXCPU or (
        sig == signal.SIGKILL and cpu >= 0.75 * max(1, math.ceil(spec.limits.cpu_s)))
    if sup.timed_out:
        status = ExecStatus.TIMEOUT
    elif sup.output_limited:
        status = ExecStatus.OUTPUT_LIMIT
    elif oom or (infer_memory_from_stderr and code != 0 and b"MemoryError" in err_tail):
        status = ExecStatus.MEMORY
    elif cpu_out:
        status = ExecStatus.TIMEOUT
    elif code == 0:
        status = ExecStatus.OK
    elif sig is not None:
        status = ExecStatus.KILLED
    else:
        status = ExecStatus.FAILED
    if peak_mb is None:
        peak_mb = ru.ru_maxrss / 1024 if ru else 0.0
    return ExecResult(
        status=status,
        exit_code=code if sig is None else None,
        signal=sig,
        stdout=sup.stdout.decode("utf-8", "replace"),
        stderr=sup.stderr.decode("utf-8", "replace"),
        stdout_truncated=sup.stdout_truncated,
        stderr_truncated=sup.stderr_truncated,
        cpu_s=cpu,
        wall_s=sup.wall_s,
        peak_memory_mb=peak_mb,
        backend=backend,
        weak_isolation=weak,
        message=message,
    )


class SpawnedProcess:
    """A sandboxed process handed to a caller that drives its pipes (see ``Spawned`` in base).

    A watcher ends it after ``wall_s`` even if the caller forgets, and (given ``cpu_used``, a
    reader of the whole run's CPU seconds) once the run used ``cpu_s`` (``cpu_limited`` says
    so); :meth:`close` kills, reaps and cleans up (idempotent, thread-safe).
    """

    def __init__(self, proc: subprocess.Popen[bytes], *, stop: Callable[[], None],
                 cleanup: Callable[[], None], wall_s: float,
                 cpu_used: Callable[[], float | None] | None = None,
                 cpu_s: float = math.inf) -> None:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        self.proc = proc
        self.stdin = proc.stdin.fileno()
        self.stdout = proc.stdout.fileno()
        self.stderr = proc.stderr.fileno()
        self.cpu_limited = False
        self._stop = stop
        self._cleanup = cleanup
        self._lock = threading.Lock()
        self._closed = False
        self._done = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(wall_s, cpu_used, cpu_s),
                                   daemon=True, name="revex-spawn-watch")
        watcher.start()

    def _watch(self, wall_s: float, cpu_used: Callable[[], float | None] | None,
               cpu_s: float) -> None:
        deadline = time.monotonic() + wall_s
        tick = _CPU_TICK_S if cpu_used is not None else wall_s
        while not self._done.wait(max(0.0, min(tick, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                break
            if cpu_used is not None and (cpu_used() or 0.0) > cpu_s:
                self.cpu_limited = True
                break
        else:
            return  # closed
        self._stop_now()

    def _stop_now(self) -> None:
        with self._lock:
            if not self._closed:
                self._stop()

    def close(self) -> None:
        """Kill, reap and clean up; safe to call more than once."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._done.set()
        try:
            self._stop()
            try:
                self.proc.wait(timeout=2.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        finally:
            for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                if f is not None:
                    with contextlib.suppress(BrokenPipeError):
                        f.close()
            self._cleanup()

    def __enter__(self) -> SpawnedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def take_json_line(buf: bytearray) -> dict[str, Any]:
    """Remove the first line from ``buf`` (which must hold a newline) and decode it as a JSON
    object. Raises ValueError when it is not one."""
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    msg = json.loads(line)
    if type(msg) is not dict:
        raise ValueError("not a JSON object")
    return msg
