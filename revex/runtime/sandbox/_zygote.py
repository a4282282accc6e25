"""The zygote that runs INSIDE an nsjail sandbox and forks one fresh child per run.

Never imported by revex on the host: :mod:`revex.runtime.sandbox._warmzygote` sends this file's
source as the jailed program. Stdlib only. The zygote itself never runs user code, and never
holds a run's data: the child reads its code, environment and limits itself, after the fork,
from a pipe only it has; /tmp is emptied by a throwaway process. So nothing of a run (its code, env,
stdin, output, file names) ever enters the memory later children are forked from.

It is pid 1 of the jail's pid namespace, so (a) no process of a run can kill or stop it (the
kernel drops signals to a namespace's init from inside unless it installed a handler, and it
installs none: SIGINT, for which Python installs one, is reset to the default), (b)
``kill(-1, SIGKILL)`` ends every other process in the jail, daemons that called ``setsid``
included, and (c) orphans are reparented to it and reaped. It is not dumpable, so a run cannot
open its ``/proc/1/mem`` (ptrace and process_vm_* are also denied by seccomp).

Protocol, on fd 0 (a unix stream socket; moved to a private close-on-exec fd at start):
  host   -> {"precompile": [SOURCE, ...]} (one JSON line: trusted sources, the harness's call
            server, compiled once here; a run whose code is exactly one of them uses that code
            object instead of compiling it)
  zygote -> {"ready": true, "vsz": BYTES}
  host   -> b"R" (with four fds attached, SCM_RIGHTS: the child's request pipe, stdin, stdout
            and stderr) and the wall-clock limit as an 8-byte big-endian double; the host then
            writes the JSON request {"code", "env", "cpu_s", "as_bytes" (-1: unlimited),
            "fsize", "nofile", "nproc"} to the request pipe and closes it; only the child
            reads it
  host   -> b"k" (stop the run now; optional; a "k" that arrives after the run ended is
            skipped)
  zygote -> {"done": WAIT_STATUS, "utime", "stime", "maxrss_kb", "timed_out"} once every other
            process in the jail is killed and reaped
  zygote -> {"clean": BOOL} once /tmp is emptied, its mode and times restored, and the zygote
            checked that /tmp holds no inode and no block and that nothing a run can change
            about the zygote from outside (nice, scheduler, CPU affinity, I/O priority,
            rlimits) changed. false: it could not prove that; it exits, and the host starts a
            fresh one. The host sends the next "R" only after a true "clean" (it may return
            the run's result before reading it).

Each run's child is forked ahead of its request, right after the jail was proven clean (and
once at start): it sets up what does not depend on the request (session, SIGINT handler, cwd,
an empty environment, argv, sys.path, __main__) and waits on a socketpair only the zygote holds
the other end of; on "R" the zygote passes it the four fds. So the fork and that set-up are off
the run's path. Nothing of a run is in the zygote when it forks: the previous run's processes
are all reaped and /tmp proven empty by then.
Messages from the zygote are JSON lines.
"""

# The modules marked F401 are only preloaded: imported once here, they are shared copy-on-write
# with every child (a child that changes one changes only its own copy).
import _signal
import atexit
import base64  # noqa: F401
import collections  # noqa: F401
import contextlib
import ctypes
import fcntl
import functools  # noqa: F401
import gc
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

_LIBC = ctypes.CDLL(None, use_errno=True)
#: ioprio_get by architecture (I/O priority is inherited and settable by a same-uid process).
_IOPRIO_GET = {"x86_64": 252, "aarch64": 31}.get(os.uname().machine)
_RLIMITS = tuple(getattr(resource, n) for n in dir(resource) if n.startswith("RLIMIT_"))
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: trusted sources the host sent at start, compiled once (exactly what the child would compile)
_PRECOMPILED: dict = {}


def _prctl_dumpable(value):
    _LIBC.prctl(4, value, 0, 0, 0)  # PR_SET_DUMPABLE


def _scan(fd):
    """Unlink every non-directory in the directory ``fd``; return its subdirectories (made
    0700, so they can be entered and emptied whatever mode a run left)."""
    subdirs = []
    for name in os.listdir(fd):
        if stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
            os.chmod(name, 0o700, dir_fd=fd)
            subdirs.append(name)
        else:
            os.unlink(name, dir_fd=fd)
    return subdirs


def _wipe(top, mode):
    """Empty ``top`` and give it ``mode`` back. Iterative and fd-relative, so any depth and any
    path length work; holds at most two fds. Runs in a throwaway process (the names it reads
    must not stay in the zygote's memory). Raises ``OSError`` if anything cannot be removed."""
    os.chmod(top, mode)
    fd = os.open(top, _DIR_FLAGS)
    stack = []
    try:
        pending = _scan(fd)
        while True:
            if pending:
                name = pending.pop()
                sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = sub
                stack.append((name, pending))
                pending = _scan(fd)
            elif stack:
                name, pending = stack.pop()
                up = os.open("..", _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = up
                os.rmdir(name, dir_fd=fd)
            else:
                return
    finally:
        os.close(fd)


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


def _fingerprint():
    """What a later run could observe of an earlier one outside its own memory: /tmp's mode,
    owner, links, used inodes and blocks, and the zygote attributes a same-uid process can
    change from outside and that children inherit."""
    st = os.stat("/tmp", follow_symlinks=False)
    vfs = os.statvfs("/tmp")
    ioprio = _LIBC.syscall(_IOPRIO_GET, 1, 0) if _IOPRIO_GET else None
    return (st.st_mode, st.st_uid, st.st_gid, st.st_nlink, vfs.f_files - vfs.f_ffree,
            vfs.f_blocks - vfs.f_bfree, os.getpriority(os.PRIO_PROCESS, 0),
            os.sched_getscheduler(0), os.sched_getparam(0).sched_priority,
            tuple(sorted(os.sched_getaffinity(0))), ioprio,
            tuple(resource.getrlimit(r) for r in _RLIMITS))


def _clean(tmp_mode):
    """Empty /tmp in a throwaway child; return whether it worked."""
    try:
        pid = os.fork()
    except OSError:
        return False
    if pid == 0:
        try:
            _wipe("/tmp", tmp_mode)
        except BaseException:
            os._exit(1)
        os._exit(0)
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return False
    return status == 0


def _read_request(fd):
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return json.loads(b"".join(chunks))


def _child(sock):
    # Runs in the forked child; never returns. Everything up to exec() is trusted code. The
    # child is forked ahead of its run (after the jail was proven clean) and prepares what
    # does not depend on the request; then it waits on ``sock`` (only the zygote has the other
    # end) for the run's four fds. The request (code, env, limits) is read here, after the
    # fork, so the zygote never holds it.
    try:
        os.setsid()
        # as in a fresh interpreter (_signal: signal.signal's enum conversions touch, and so
        # copy, many pages shared with the zygote)
        _signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir("/tmp")
        # os.environ.clear() without its generic MutableMapping loop
        for key in list(os.environ._data):  # type: ignore[attr-defined]
            os.unsetenv(key)
        os.environ._data.clear()  # type: ignore[attr-defined]
        if "random" in sys.modules:
            sys.modules["random"].seed()
        sys.argv = ["-c"]
        sys.path.insert(0, "")  # as ``python -c`` in a cold run: /tmp, proven empty
        main = type(sys)("__main__")
        main.__dict__["__builtins__"] = __builtins__
        sys.modules["__main__"] = main
        # Touch now what reading the request and compiling touch (a page shared with the
        # zygote is copied on its first write), so less of that is left for the run's path.
        # Neither leaves state behind.
        json.loads('{"code": "pass", "env": {"A": "B"}, "cpu_s": 1}')
        compile("pass", "<string>", "exec")

        _, fds, _, _ = socket.recv_fds(sock, 1, 4)
        sock.close()
        if len(fds) != 4:
            os._exit(120)
        req_fd = fds[0]
        for target, fd in enumerate(fds[1:]):
            os.dup2(fd, target)
        os.closerange(3, req_fd)
        os.closerange(req_fd + 1, 1 << 16)
        req = _read_request(req_fd)
        _prctl_dumpable(1)
        inf = resource.RLIM_INFINITY
        for which, soft, hard in (
            (resource.RLIMIT_AS, req["as_bytes"], req["as_bytes"]),
            # SIGXCPU at the limit (a status the host can name), SIGKILL a second later
            (resource.RLIMIT_CPU, req["cpu_s"], req["cpu_s"] + 1),
            (resource.RLIMIT_FSIZE, req["fsize"], req["fsize"]),
            (resource.RLIMIT_NOFILE, req["nofile"], req["nofile"]),
            (resource.RLIMIT_NPROC, req["nproc"], req["nproc"]),
            (resource.RLIMIT_CORE, 0, 0),
        ):
            resource.setrlimit(which, (inf if soft < 0 else soft, inf if hard < 0 else hard))
        os.environ.update(req["env"])
        code = req["code"]
        del req
    except BaseException:
        os._exit(120)
    rc = 0
    try:
        compiled = _PRECOMPILED.get(code)
        exec(compile(code, "<string>", "exec") if compiled is None else compiled, main.__dict__)
    except SystemExit as exc:
        rc = _exit_code(exc.code)
    except BaseException as exc:
        tb = exc.__traceback__
        tb = tb.tb_next if tb is not None else None  # hide this frame, as python -c does
        with contextlib.suppress(BaseException):
            sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        rc = 1
    try:
        # as interpreter shutdown does: wait for threads only if threading was imported
        threading = sys.modules.get("threading")
        if threading is not None:
            threading._shutdown()
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


def _recv_line(ctl):
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = ctl.recv(1 << 16)
        if not chunk:
            return None
        buf += chunk
    return buf


def _supervise(ctl, ctl_fd, pid, wall_s):
    """Wait for the child, a stop request or the wall limit; return (timed_out, eof)."""
    pidfd = os.pidfd_open(pid)
    deadline = time.monotonic() + wall_s
    timed_out = stop = eof = False
    try:
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
    finally:
        os.close(pidfd)
    if timed_out or stop or eof:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):  # also before its setsid()
            os.kill(pid, signal.SIGKILL)
    return timed_out, eof


def _prefork():
    """Fork the next run's child; return its pid and the socket its fds go over."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pid = os.fork()
    if pid == 0:
        mine.close()
        _child(theirs)
    theirs.close()
    return pid, mine


def _hand_over(sock, fds):
    """Give the waiting child its run's fds; False if it is gone."""
    try:
        socket.send_fds(sock, [b"R"], fds)
        return True
    except OSError:
        return False
    finally:
        sock.close()


def main():
    ctl_fd = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 10)
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    ctl = socket.socket(fileno=ctl_fd)
    _prctl_dumpable(0)
    # No handlers: signals from the jail to its init are then dropped by the kernel.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # Nothing is imported after this point; never from /tmp.
    if sys.path and sys.path[0] == "":
        del sys.path[0]
    first = _recv_line(ctl)
    if first is None:
        return
    for source in json.loads(first)["precompile"]:
        _PRECOMPILED[source] = compile(source, "<string>", "exec")
    tmp_stat = os.stat("/tmp")
    tmp_mode = stat.S_IMODE(tmp_stat.st_mode)
    tmp_times = (tmp_stat.st_atime_ns, tmp_stat.st_mtime_ns)
    pristine = _fingerprint()
    with open("/proc/self/statm") as f:
        vsz = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")

    def send(obj):
        ctl.sendall((json.dumps(obj) + "\n").encode())

    # Every object so far is left out of later collections: a child's collector then never
    # walks (and so never copies) the pages it shares with the zygote.
    gc.collect()
    gc.freeze()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    pid, child_sock = _prefork()
    send({"ready": True, "vsz": vsz})
    while True:
        # Skip stale stop requests ("k" sent while the last run was already ending).
        try:
            mark, fds, _, _ = socket.recv_fds(ctl, 1, 4)
        except OSError:
            return
        if mark == b"k" and not fds:
            continue
        head = _recv_exact(ctl, 8) if mark == b"R" else None
        if head is None or len(fds) != 4:
            return
        wall_s = struct.unpack(">d", head)[0]
        handed = _hand_over(child_sock, fds)
        for fd in fds:
            os.close(fd)
        if not handed:
            return
        timed_out, eof = _supervise(ctl, ctl_fd, pid, wall_s)
        _, status, ru = os.wait4(pid, 0)
        _reap_all()
        # Every process of the run was reaped by now (by its parent or by this init), so the
        # difference in children's usage is the whole run's CPU time.
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if eof:
            return
        # The run's report first: how long the cleanup takes is not the run's business.
        send({"done": status, "utime": after.ru_utime - before.ru_utime,
              "stime": after.ru_stime - before.ru_stime, "maxrss_kb": ru.ru_maxrss,
              "timed_out": timed_out})
        # Most runs leave /tmp as it was: then the fingerprint proves it without a wipe. Its
        # times are set back every time (a run could write any value into them).
        clean = _fingerprint() == pristine or (_clean(tmp_mode) and _fingerprint() == pristine)
        try:
            os.utime("/tmp", ns=tmp_times)
        except OSError:
            clean = False
        send({"clean": clean})
        if not clean:
            return
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        pid, child_sock = _prefork()

if __name__ == "__main__":
    main()
