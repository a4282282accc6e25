"""SandboxFusion's ``/run_code`` contract, field for field, over revex's sandbox.

verl's sandbox reward (``verl.utils.reward_score.sandbox_fusion``) and the ``sandbox-fusion``
SDK post these bodies; the shapes and the grading rules they depend on are in
``shared/research/integrations.md``. What matters to those clients:

- every run outcome is HTTP 200; an unknown language or a malformed body is HTTP 422;
- ``status`` is ``Success`` only for a run that finished with exit code 0; a non-zero exit, a
  timeout, a memory kill or an output overflow is ``Failed`` (verl grades a ``Success`` on stdout
  alone, so a crash must never be one); ``SandboxError`` is kept for revex's own faults, which
  clients retry;
- a timeout is ``TimeLimitExceeded`` with ``return_code`` null.

The code's exit status and output are hostile input: the response is built from the
:class:`~revex.runtime.sandbox.base.ExecResult` the backend derived from facts the code cannot
write, and files fetched back are read with size caps, never following symlinks.
"""

from __future__ import annotations

import base64
import binascii
import os
import shutil
import stat
import tempfile
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from revex.errors import ConfigError, RevexError
from revex.runtime.sandbox.base import ExecResult, ExecStatus, Limits

#: SandboxFusion language names revex runs, mapped to revex's own (``c`` is revex's addition).
#: Other names get a 422 that lists these; a language whose toolchain is missing on this host
#: gets a 422 saying why (see ``revex doctor``).
LANGUAGES: dict[str, str] = {"python": "python", "bash": "bash", "cpp": "cpp", "c": "c",
                             "java": "java", "nodejs": "javascript", "go": "go", "rust": "rust"}

#: Upper bounds the service puts on what a request may ask for.
MAX_TIMEOUT_S = 60.0
MAX_MEMORY_MB = 4096
DEFAULT_MEMORY_MB = 1024
MAX_FETCH_BYTES = 8 * 1024 * 1024
OUTPUT_BYTES = 1024 * 1024  # SandboxFusion keeps 1 MB of each stream


class RunCodeRequest(BaseModel):
    """SandboxFusion's ``RunCodeRequest``."""

    model_config = ConfigDict(extra="ignore")

    code: str = Field(max_length=4 * 1024 * 1024)
    language: str
    compile_timeout: float = Field(default=10, gt=0)
    run_timeout: float = Field(default=10, gt=0)
    memory_limit_MB: int = -1
    stdin: str | None = None
    files: dict[str, str | None] = Field(default_factory=dict)
    fetch_files: list[str] = Field(default_factory=list)


class CommandRunResult(BaseModel):
    status: Literal["Finished", "Error", "TimeLimitExceeded"]
    execution_time: float | None = None
    return_code: int | None = None
    stdout: str | None = None
    stderr: str | None = None


class RunCodeResponse(BaseModel):
    status: Literal["Success", "Failed", "SandboxError"]
    message: str = ""
    compile_result: CommandRunResult | None = None
    run_result: CommandRunResult | None = None
    executor_pod_name: str | None = None
    files: dict[str, str] = Field(default_factory=dict)


def check_language(language: str) -> str:
    """revex's name for a SandboxFusion language; ConfigError (HTTP 422) if revex lacks it."""
    try:
        return LANGUAGES[language]
    except KeyError:
        raise ConfigError(f"language {language!r} is not supported by this revex server; "
                          f"supported: {', '.join(sorted(LANGUAGES))}") from None


def limits_for(req: RunCodeRequest, language: str) -> tuple[Limits, Limits | None]:
    """The run's and the compile's limits: the request's, clamped to what the service allows
    (the language's own defaults for everything a request cannot say)."""
    import dataclasses

    from revex.runtime.sandbox import languages

    memory = DEFAULT_MEMORY_MB if req.memory_limit_MB <= 0 else req.memory_limit_MB
    wall = min(float(req.run_timeout), MAX_TIMEOUT_S)
    base = languages.default_limits(language)
    run = dataclasses.replace(base, wall_s=wall, cpu_s=wall,
                              memory_mb=min(memory, MAX_MEMORY_MB), output_bytes=OUTPUT_BYTES)
    lang = languages.LANGUAGE_TABLE.get(language)
    if lang is None or not lang.compiled:
        return run, None
    compile_wall = min(float(req.compile_timeout), MAX_TIMEOUT_S)
    return run, dataclasses.replace(lang.compile_limits, wall_s=compile_wall,
                                    cpu_s=compile_wall)


def _safe_rel(name: str) -> list[str]:
    parts = name.split("/")
    if (not name or name.startswith("/") or "\0" in name
            or any(p in ("", ".", "..") for p in parts)):
        raise ConfigError(f"file name {name!r} must be a relative path without '..' or '//'")
    return parts


def write_request_files(root: str, files: dict[str, str | None]) -> None:
    """Write the request's base64 files under ``root`` (the run's workspace)."""
    for name, content in files.items():
        parts = _safe_rel(name)
        if content is None:
            continue
        try:
            data = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ConfigError(f"files[{name!r}] is not valid base64: {exc}") from None
        dest = os.path.join(root, *parts)
        os.makedirs(os.path.dirname(dest), mode=0o755, exist_ok=True)
        with open(dest, "wb") as f:
            f.write(data)
        os.chmod(dest, 0o644)


def _read_capped(dir_fd_root: str, parts: list[str]) -> bytes | None:
    """Read a regular file below ``dir_fd_root`` without following any symlink; None if it is
    not there or not a regular file. The content came from sandboxed code: capped in size."""
    fd = os.open(dir_fd_root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
        ffd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    except OSError:
        os.close(fd)
        return None
    os.close(fd)
    try:
        st = os.fstat(ffd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_FETCH_BYTES:
            return None
        with os.fdopen(ffd, "rb", closefd=False) as f:
            return f.read(MAX_FETCH_BYTES + 1)[:MAX_FETCH_BYTES]
    finally:
        os.close(ffd)


def fetch(result: ExecResult, workspace: str, names: list[str]) -> dict[str, str]:
    """Files the client asked for, from the run's change set (or the unchanged input)."""
    out: dict[str, str] = {}
    changed = {c.path: c for c in result.changes}
    for name in names:
        parts = _safe_rel(name)
        change = changed.get(name)
        data: bytes | None = None
        if change is not None:
            if change.kind == "file" and result.upper_dir:
                data = _read_capped(result.upper_dir, parts)
        else:
            data = _read_capped(workspace, parts)
        if data is not None:
            out[name] = base64.b64encode(data).decode()
    return out


def to_response(result: ExecResult, files: dict[str, str] | None = None, *,
                compiled: bool = False) -> RunCodeResponse:
    """Map an ExecResult onto SandboxFusion's response (see the module docstring)."""
    status = result.status
    if status is ExecStatus.COMPILE_ERROR:
        # revex's own message (compile_cache), not the compiler's output
        timed_out = "ran out of time" in (result.message or "")
        return RunCodeResponse(
            status="Failed", message=result.message or "compile error",
            compile_result=CommandRunResult(
                status="TimeLimitExceeded" if timed_out else "Finished",
                execution_time=round(result.wall_s, 6),
                return_code=None if timed_out else (result.exit_code or 1),
                stdout=result.stdout, stderr=result.stderr or result.message))
    if status is ExecStatus.SANDBOX_ERROR:
        return RunCodeResponse(
            status="SandboxError", message=result.message or "sandbox error",
            run_result=CommandRunResult(status="Error", execution_time=result.wall_s,
                                        stdout=result.stdout, stderr=result.stderr))
    timed_out = status is ExecStatus.TIMEOUT
    code = None if timed_out else _return_code(result)
    run = CommandRunResult(
        status="TimeLimitExceeded" if timed_out else "Finished",
        execution_time=round(result.wall_s, 6), return_code=code,
        stdout=result.stdout, stderr=result.stderr)
    ok = status is ExecStatus.OK and code == 0  # never Success on a crash: verl grades stdout
    message = "" if ok else (result.message or str(status))
    compile_result = (CommandRunResult(status="Finished", execution_time=0.0, return_code=0,
                                       stdout="", stderr="") if compiled else None)
    return RunCodeResponse(status="Success" if ok else "Failed", message=message,
                           compile_result=compile_result, run_result=run, files=files or {})


def _return_code(result: ExecResult) -> int:
    if result.exit_code is not None and not (result.status is not ExecStatus.OK
                                             and result.exit_code == 0):
        return result.exit_code
    if result.signal:
        return -result.signal
    # a memory kill or an output overflow with no exit status of its own still failed
    return 0 if result.status is ExecStatus.OK else 1


def run_code(runtime: Any, req: RunCodeRequest) -> RunCodeResponse:
    """Run one SandboxFusion request through ``runtime`` (a :class:`revex.Runtime`).

    Raises ConfigError for a request revex refuses (HTTP 422). Every run outcome, including
    revex's own sandbox faults, is a response.
    """

    language = check_language(req.language)
    limits, compile_limits = limits_for(req, language)
    for name in req.fetch_files:
        _safe_rel(name)
    workspace = tempfile.mkdtemp(prefix="revex-serve-")
    try:
        os.chmod(workspace, 0o755)
        write_request_files(workspace, req.files)
        needs_workspace = bool(req.files or req.fetch_files)
        try:
            result = runtime.run(req.code, language=language, stdin=req.stdin or "",
                                 limits=limits, compile_limits=compile_limits,
                                 workspace=workspace if needs_workspace else None)
        except ConfigError:
            raise
        except RevexError as exc:
            return RunCodeResponse(status="SandboxError", message=str(exc))
        try:
            files = fetch(result, workspace, req.fetch_files) if req.fetch_files else {}
        finally:
            result.discard()
        return to_response(result, files, compiled=compile_limits is not None)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
