"""The host side of one warm zygote: its nsjail jail, control socket and per-run cgroups.

See :mod:`revex.runtime.sandbox.warm` for the design and ``_zygote.py`` for the protocol (the
program that runs inside). Private to the warm backend.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import struct
import subprocess
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from revex.errors import SandboxError
from revex.runtime.sandbox import _common, _runcgroup
from revex.runtime.sandbox.base import ExecSpec, Limits
from revex.runtime.sandbox.nsjail import SECCOMP_POLICY, NsjailBackend

ZYGOTE_SOURCE = (Path(__file__).parent / "_zygote.py").read_text()
#: The cold policy plus SysV IPC and POSIX message queues (objects that would outlive a run).
WARM_SECCOMP_POLICY = SECCOMP_POLICY.replace(
    "ERRNO(1) { ",
    "ERRNO(1) { shmget, shmat, shmdt, shmctl, msgget, msgsnd, msgrcv, msgctl, semget, semop, "
    "semctl, semtimedop, mq_open, mq_unlink, mq_timedsend, mq_timedreceive, mq_notify, "
    "mq_getsetattr, ", 1)
#: Trusted sources the zygote compiles once, at start: a run whose code is exactly one of them
#: (the harness's call server) skips compiling it (several ms).
PRECOMPILED = ((Path(__file__).parent / "_harness_server.py").read_text(),)
_ZYGOTE_MEM_OVERHEAD_MB = 64
_START_TIMEOUT_S = 15.0
_CLEAN_TIMEOUT_S = 30.0
_CHUNK = 65536


class ZygoteGone(Exception):
    """The zygote ended or broke the protocol."""


def _set_opt(argv: list[str], opt: str, value: str) -> None:
    i = argv.index(opt, 0, argv.index("--"))
    argv[i + 1] = value


class Zygote:
    """One jailed zygote, its control socket and its per-run cgroups. One run at a time."""

    def __init__(self, cold: NsjailBackend, pool: Limits) -> None:
        self.mem_parent: str | None = None
        self.cg: _runcgroup.RunCgroups | None = None
        self.zygote_pid = 0
        jail = replace(pool, memory_mb=pool.memory_mb + _ZYGOTE_MEM_OVERHEAD_MB,
                       pids=pool.pids + 2, wall_s=10.0, cpu_s=10.0)  # + zygote and its cleaner
        if cold.cgroups:
            try:
                self.mem_parent = _runcgroup.new_memory_parent(jail.memory_mb << 20)
            except OSError as exc:
                raise SandboxError(f"cannot create the zygote's memory cgroup: {exc}") from exc
        spec = ExecSpec(code=ZYGOTE_SOURCE, limits=jail)
        argv = cold._argv(spec, _common.command(spec, cold.python, None),
                          _common.build_env(spec), "/tmp", [], self.mem_parent,
                          seccomp=WARM_SECCOMP_POLICY)
        _set_opt(argv, "-t", "0")  # lives until closed
        _set_opt(argv, "--rlimit_cpu", "inf")  # each child sets its own limits
        _set_opt(argv, "--rlimit_as", "inf")
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._buf = bytearray()
        try:
            self.proc = subprocess.Popen(argv, stdin=theirs.fileno(), stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, close_fds=True, env={})
        except OSError as exc:
            self.sock.close()
            self._remove_cgroups()
            raise SandboxError(f"cannot start nsjail: {exc}") from exc
        finally:
            theirs.close()
        try:
            self.sock.sendall(json.dumps({"precompile": PRECOMPILED}).encode() + b"\n")
            hello = self.recv(_START_TIMEOUT_S)
            self.zygote_pid = _only_child(self.proc.pid)
            if self.mem_parent is not None:
                # The zygote lives in the run cgroups, so every child it forks starts in them
                # (no move per run); counters are reset before each run.
                self.cg = _runcgroup.RunCgroups(self.mem_parent, self.zygote_pid)
                self.cg.create()
                self.cg.adopt(self.zygote_pid)
        except (ZygoteGone, OSError) as exc:
            err = self._stderr_tail()
            self.close()
            raise SandboxError(f"the warm zygote did not start: {exc}: {err}") from exc
        self.vsz = int(hello.get("vsz", 0))
        #: the last run reported, its cleanup report not yet read (or not "clean": true)
        self._clean_due = False

    # -- control channel --------------------------------------------------------------------
    def recv(self, timeout: float | None) -> dict[str, Any]:
        """The next JSON message; raises :class:`ZygoteGone` on EOF, garbage or timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise ZygoteGone("no message in time")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(_CHUNK)
            except TimeoutError as exc:
                raise ZygoteGone("no message in time") from exc
            except OSError as exc:
                raise ZygoteGone(f"control socket: {exc}") from exc
            if not chunk:
                raise ZygoteGone("the zygote exited")
            self._buf += chunk
        try:
            return _common.take_json_line(self._buf)
        except ValueError as exc:
            raise ZygoteGone("malformed message") from exc

    def has_message(self) -> bool:
        return b"\n" in self._buf

    def start(self, spec: ExecSpec, vsz: int) -> tuple[int, int, int]:
        """Start ``spec``: set the run cgroups' limits, have the zygote fork a child, and hand
        the child its request (code, env, limits) over a pipe the zygote never reads. Return
        the host ends (stdin writer, stdout reader, stderr reader)."""
        lim = spec.limits
        assert spec.code is not None and not self._clean_due
        # With per-run cgroups the run's memory is the cgroup's to limit and to report (an
        # allocation past it is an OOM kill, a fact); no address-space limit (-1) then, which
        # would turn it into a MemoryError, a text the code could also print.
        body = json.dumps({
            "code": spec.code, "env": _common.build_env(spec),
            "cpu_s": max(1, int(-(-lim.cpu_s // 1))),
            "as_bytes": -1 if self.cg else vsz + (lim.memory_mb << 20),
            "fsize": lim.fsize_mb << 20, "nofile": lim.nofile, "nproc": lim.pids + 1,
        }).encode()
        try:
            if self.cg is not None:
                self.cg.prepare(lim.memory_mb << 20, lim.pids + 1)  # + the zygote
        except OSError as exc:
            raise ZygoteGone(f"cannot set the run's cgroup limits: {exc}") from exc
        self._clean_due = True  # from now on, until the zygote reports the jail fresh again
        req_r, req_w = os.pipe()
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        mine = (in_w, out_r, err_r)
        try:
            try:
                self.sock.settimeout(None)
                socket.send_fds(self.sock, [b"R" + struct.pack(">d", lim.wall_s)],
                                [req_r, in_r, out_w, err_w])
            finally:
                for fd in (req_r, in_r, out_w, err_w):
                    os.close(fd)
            view = memoryview(body)
            try:
                while view:
                    view = view[os.write(req_w, view):]
            except BrokenPipeError:
                # The fds were handed over, so the zygote supervises this run and reports how
                # it ended: no reader left means the child is gone before running anything
                # (killed at a wall limit shorter than its start, or the zygote died, which
                # its missing report then says). Either way an outcome, not a start failure.
                pass
        except OSError as exc:
            for fd in mine:
                os.close(fd)
            raise ZygoteGone(f"cannot start the run: {exc}") from exc
        finally:
            os.close(req_w)
        return mine

    def proven_clean(self) -> bool:
        """Whether the jail is as fresh as before the last run: waits for the zygote's report
        if it is still due. False if it says it is not, ends, or takes too long (then it must
        be replaced). Called once per run, before the zygote serves the next one."""
        if self._clean_due:
            with contextlib.suppress(ZygoteGone):
                self._clean_due = self.recv(_CLEAN_TIMEOUT_S).get("clean") is not True
        return not self._clean_due

    def stop_run(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.send(b"k")

    # -- lifecycle --------------------------------------------------------------------------
    def alive(self) -> bool:
        return self.proc.poll() is None

    def _stderr_tail(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        with contextlib.suppress(OSError):
            return self.proc.stderr.read()[-2000:].decode("utf-8", "replace")
        return ""

    def close(self) -> None:
        """End the jail (nsjail kills everything in it on SIGTERM) and remove its cgroups,
        also those nsjail could not remove (they are named after the zygote's pid)."""
        with contextlib.suppress(OSError):
            self.sock.close()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self._remove_cgroups()

    def _remove_cgroups(self) -> None:
        if self.cg is not None:
            self.cg.remove()  # also closes the files it keeps open
        elif self.mem_parent is not None or self.zygote_pid:
            _runcgroup.RunCgroups(self.mem_parent, self.zygote_pid).remove()
        self.mem_parent = None
        self.cg = None


def _only_child(pid: int) -> int:
    """The host pid of the one child of ``pid`` (nsjail's: the zygote). Raises ``OSError`` if
    there is not exactly one."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        kids = f.read().split()
    if len(kids) != 1:
        raise OSError(f"expected one child of pid {pid}, found {len(kids)}")
    return int(kids[0])


@dataclass
class Done:
    status: int | None
    rusage: resource.struct_rusage | None
    timed_out: bool
    zygote_ok: bool  # the zygote reported the run


def done_from(msg: dict[str, Any]) -> Done:
    ru = resource.struct_rusage((float(msg["utime"]), float(msg["stime"]), int(msg["maxrss_kb"]),
                                 *([0] * 13)))
    return Done(int(msg["done"]), ru, bool(msg.get("timed_out")), True)


def read_done(z: Zygote) -> Done:
    try:
        msg = z.recv(1.0)
        if "done" not in msg:
            raise ZygoteGone("protocol violation")
        return done_from(msg)
    except (ZygoteGone, KeyError, TypeError, ValueError):
        return Done(None, None, False, False)


def cpu_used(z: Zygote) -> float:
    cg = z.cg
    if cg is None:
        return 0.0
    try:
        return cg.cpu_s()
    except OSError:
        return 0.0
