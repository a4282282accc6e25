"""The zygote that runs INSIDE an nsjail sandbox and forks one fresh child per run.

Never imported by revex on the host: :mod:`revex.runtime.sandbox.warm` sends this file's source
as the jailed program. Stdlib only. The zygote itself never runs user code: it only receives
requests, forks, supervises and cleans up.

It is pid 1 of the jail's pid namespace, so (a) no process of a run can kill or stop it (the
kernel drops SIGKILL/SIGSTOP sent to a namespace's init from inside, and it installs no
handlers), (b) ``kill(-1, SIGKILL)`` ends every other process in the jail, daemons that called
``setsid`` included, and (c) orphans are reparented to it and reaped. It is not dumpable, so a
run cannot open its ``/proc/1/mem`` (ptrace and process_vm_* are also denied by seccomp).

Protocol, on fd 0 (a unix stream socket; moved to a private close-on-exec fd at start):
  zygote -> {"ready": true, "vsz": BYTES}
  host   -> b"R" (with three fds attached, SCM_RIGHTS: the child's stdin, stdout and stderr),
            a 4-byte big-endian length, a JSON request:
            {"code", "env", "wall_s", "cpu_s", "as_bytes", "fsize", "nofile", "nproc"}
  host   -> b"k" (stop the run now; optional, e.g. on an output overflow; a "k" that arrives
            after the run ended is skipped)
  zygote -> {"done": WAIT_STATUS, "utime", "stime", "maxrss_kb", "timed_out"}
Messages from the zygote are JSON lines. After every run, before "done": every other process in
the jail is killed and reaped, and /tmp is emptied, so the next run starts from a clean state.
"""

# The modules marked F401 are only preloaded: imported once here, they are shared copy-on-write
# with every child (a child that changes one changes only its own copy).
import base64  # noqa: F401
import collections  # noqa: F401
import contextlib
import fcntl
import functools  # noqa: F401
import itertools  # noqa: F401
import json
import math  # noqa: F401
import os
import re  # noqa: F401
import resource
import select
import signal
import socket
import stat
import string  # noqa: F401
import struct
import sys
import time
import typing  # noqa: F401

_LIBC: list = []


def _prctl_dumpable(value):
    if not _LIBC:
        import ctypes

        _LIBC.append(ctypes.CDLL(None, use_errno=True))
    _LIBC[0].prctl(4, value, 0, 0, 0)  # PR_SET_DUMPABLE


def _wipe(path):
    """Empty a directory tree owned by the sandbox user, whatever modes a run left."""
    try:
        entries = os.listdir(path)
    except OSError:
        return
    for name in entries:
        full = path + "/" + name
        try:
            st = os.lstat(full)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            with contextlib.suppress(OSError):
                os.chmod(full, 0o700)
            _wipe(full)
            with contextlib.suppress(OSError):
                os.rmdir(full)
        else:
            with contextlib.suppress(OSError):
                os.unlink(full)


def _reap_all():
    """Kill every process in the jail but this one and reap them all."""
    while True:
        with contextlib.suppress(OSError):
            os.kill(-1, signal.SIGKILL)
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return
        except InterruptedError:
            continue


def _child(req, fds, ctl_fd):
    # Runs in the forked child; never returns.
    try:
        os.setsid()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        os.closerange(3, 1 << 16)
        _prctl_dumpable(1)
        for which, value in (
            (resource.RLIMIT_AS, req["as_bytes"]),
            (resource.RLIMIT_CPU, req["cpu_s"]),
            (resource.RLIMIT_FSIZE, req["fsize"]),
            (resource.RLIMIT_NOFILE, req["nofile"]),
            (resource.RLIMIT_NPROC, req["nproc"]),
            (resource.RLIMIT_CORE, 0),
        ):
            resource.setrlimit(which, (value, value))
        os.chdir("/tmp")
        os.environ.clear()
        os.environ.update(req["env"])
        if "random" in sys.modules:
            sys.modules["random"].seed()
        sys.argv = ["-c"]
        sys.path[0] = ""
        main = type(sys)("__main__")
        main.__dict__["__builtins__"] = __builtins__
        sys.modules["__main__"] = main
        code = req["code"]
    except BaseException:
        os._exit(120)
    rc = 0
    try:
        exec(compile(code, "<string>", "exec"), main.__dict__)
    except SystemExit as exc:
        rc = _exit_code(exc.code)
    except BaseException as exc:
        tb = exc.__traceback__
        tb = tb.tb_next if tb is not None else None  # hide this frame, as python -c does
        with contextlib.suppress(BaseException):
            sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        rc = 1
    try:
        import threading

        threading._shutdown()  # type: ignore[attr-defined]
        import atexit

        atexit._run_exitfuncs()
    except SystemExit as exc:
        rc = _exit_code(exc.code)
    except BaseException:
        pass
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except BaseException:
            rc = rc or 120
    os._exit(rc)


def _exit_code(code):
    if code is None:
        return 0
    if type(code) is int:
        return code & 0xFF
    with contextlib.suppress(BaseException):
        sys.stderr.write(str(code) + "\n")
    return 1


def _recv_exact(ctl, n):
    buf = b""
    while len(buf) < n:
        chunk = ctl.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def main():
    ctl_fd = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 10)
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    ctl = socket.socket(fileno=ctl_fd)
    _prctl_dumpable(0)
    with open("/proc/self/statm") as f:
        vsz = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")

    def send(obj):
        ctl.sendall((json.dumps(obj) + "\n").encode())

    send({"ready": True, "vsz": vsz})
    while True:
        # Skip stale stop requests ("k" sent while the last run was already ending).
        try:
            mark, fds, _, _ = socket.recv_fds(ctl, 1, 3)
        except OSError:
            return
        if mark == b"k" and not fds:
            continue
        if mark != b"R":
            return
        head = _recv_exact(ctl, 4)
        if head is None:
            return
        body = _recv_exact(ctl, struct.unpack(">I", head)[0])
        if body is None or len(fds) != 3:
            return
        req = json.loads(body)
        pid = os.fork()
        if pid == 0:
            _child(req, fds, ctl_fd)
        for fd in fds:
            os.close(fd)
        pidfd = os.pidfd_open(pid)
        deadline = time.monotonic() + req["wall_s"]
        timed_out = stop = eof = False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([pidfd, ctl_fd], [], [], left)
            if pidfd in ready:
                break
            if ctl_fd in ready:
                data = ctl.recv(64)
                if not data:
                    eof = True
                    break
                if b"k" in data:
                    stop = True
                    break
        os.close(pidfd)
        if timed_out or stop or eof:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
        _, status, ru = os.wait4(pid, 0)
        _reap_all()
        _wipe("/tmp")
        if eof:
            return
        send({"done": status, "utime": ru.ru_utime, "stime": ru.ru_stime,
              "maxrss_kb": ru.ru_maxrss, "timed_out": timed_out})


if __name__ == "__main__":
    main()
