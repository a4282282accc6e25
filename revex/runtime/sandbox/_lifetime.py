"""Sandboxes die with their owner, and what a dead owner left behind is removed later.

* Owner tags: every run directory and per-run cgroup is named after the process that made it
  (``<pid>.<start time in clock ticks>.<pid namespace>``), so a later process in the same pid
  namespace can tell whether the owner still lives. The start time guards against pid reuse:
  a reused pid has another start time, so the owner counts as dead, while a live owner is never
  mistaken for a dead one.
* :func:`popen_tied` starts a sandbox process with ``PR_SET_PDEATHSIG``. The kernel
  sends that signal when the *thread* that forked the child ends, so every tied process is
  forked by one long-lived launcher thread per process: the signal then fires exactly when the
  owning process ends, however it ends (SIGKILL included). (Between the fork and the moment the
  signal is armed there is a window of about a millisecond; a child orphaned in it is killed
  with its run's cgroup by the next ``cleanup_leftovers``.)
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

_PR_SET_PDEATHSIG = 1
_TAG = re.compile(r"(\d+)\.(\d+)\.(\d+)")
_launchers: dict[int, ThreadPoolExecutor] = {}
_launch_lock = threading.Lock()
_libc: Any = None


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot, ``None`` when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = data.rsplit(b")", 1)[-1].split()
    try:
        return int(fields[19])  # field 22 overall
    except (IndexError, ValueError):
        return None


def _pid_namespace() -> int:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def owner_tag(pid: int | None = None) -> str:
    """The tag naming resources owned by ``pid`` (default: this process):
    ``<pid>.<start time>.<pid namespace inode>``."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}.{_start_time(pid) or 0}.{_pid_namespace()}"


def tag_owner_alive(tag: str) -> bool:
    """Whether the process a tag names still runs. Tags that do not parse, and tags of another
    pid namespace (whose pids mean nothing here), count as alive, so that nothing whose owner
    cannot be told is ever removed."""
    m = _TAG.fullmatch(tag)
    if m is None or int(m.group(3)) != _pid_namespace():
        return True
    pid, start = int(m.group(1)), int(m.group(2))
    now = _start_time(pid)
    return now is not None and now == start


def tag_pid(tag: str) -> int | None:
    """The pid in an owner tag, or ``None`` when it is not one."""
    m = _TAG.fullmatch(tag)
    return int(m.group(1)) if m else None


def _launcher() -> ThreadPoolExecutor:
    # One per process: after a fork the parent's launcher thread does not exist in the child.
    pid = os.getpid()
    with _launch_lock:
        ex = _launchers.get(pid)
        if ex is None:
            _launchers.clear()
            ex = _launchers[pid] = ThreadPoolExecutor(max_workers=1,
                                                      thread_name_prefix="revex-launcher")
        return ex


def _setpriv() -> str | None:
    """util-linux ``setpriv`` when it supports ``--pdeathsig`` (checked once)."""
    global _setpriv_path
    if _setpriv_path is None:
        path = shutil.which("setpriv") or ""
        if path:
            try:
                out = subprocess.run([path, "--help"], capture_output=True, text=True,
                                     timeout=10, check=False).stdout
            except (OSError, subprocess.SubprocessError):
                out = ""
            path = path if "--pdeathsig" in out else ""
        _setpriv_path = path
    return _setpriv_path or None


_setpriv_path: str | None = None


def popen_tied(argv: Sequence[str], *, join_tasks: Sequence[tuple[str, str]] = (),
               then: Callable[[], None] | None = None, death_signal: int = signal.SIGKILL,
               **kwargs: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(argv, **kwargs)`` whose child gets ``death_signal`` when this process
    ends. (nsjail takes SIGTERM: it then kills its jail and removes its cgroups itself; a
    SIGKILLed nsjail can leave a jailed child alive, whose own parent-death signal the kernel
    cleared when nsjail changed its uid.)

    The signal is armed by ``setpriv --pdeathsig`` exec'ing ``argv`` (a ``preexec_fn`` would make
    Python fork instead of vfork, ~10 ms a start); without such a setpriv, or with ``then``
    (more work for the child before it executes, e.g. rlimits), by a ``preexec_fn``.
    ``join_tasks``: (cgroup v1 ``tasks`` file to join, ``tasks`` file to return to) pairs: the
    launcher thread joins those cgroups while it starts the child, which is born in them, so a
    per-run cgroup sees everything the run starts. The thread moves itself by writing ``0``
    (the current thread): since Linux 6.0 that skips the global threadgroup lock whose
    writers wait for an RCU grace period (~10 ms per move, measured), while naming any pid,
    its own tid included, takes it. Raises ``OSError``/``SubprocessError`` like ``Popen``.
    """
    global _libc
    setpriv = _setpriv() if then is None else None
    preexec: Callable[[], None] | None = None
    if setpriv is not None:
        argv = [setpriv, f"--pdeathsig={signal.Signals(death_signal).name}", "--", *argv]
    else:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        libc, parent = _libc, os.getpid()

        def tie() -> None:
            # Runs in the forked child before exec: no allocation-heavy work, no locks.
            libc.prctl(_PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
            if os.getppid() != parent:  # the owner died before the signal was armed
                os._exit(70)
            if then is not None:
                then()

        preexec = tie

    def start() -> subprocess.Popen[bytes]:
        back: list[str] = []
        try:
            for join, home in join_tasks:
                _write(join, b"0")
                back.append(home)
            return subprocess.Popen(list(argv), preexec_fn=preexec, **kwargs)
        finally:
            for home in back:
                _write(home, b"0")

    return _launcher().submit(start).result()


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def own_cgroups() -> dict[str, str]:
    """This thread's cgroup (path below the hierarchy's mount) per v1 controller (and named
    hierarchy, as ``name=...``); empty when it cannot be read."""
    out: dict[str, str] = {}
    try:
        with open("/proc/thread-self/cgroup") as f:
            for line in f:
                _, ctls, path = line.rstrip("\n").split(":", 2)
                for ctl in ctls.split(","):
                    if ctl:
                        out[ctl] = path
    except OSError:
        pass
    return out
