"""The sandbox contract: what a backend is asked to run and what it reports.

One protocol, ``SandboxBackend.run(spec) -> ExecResult``; backends (nsjail, process, docker) are
chosen explicitly by configuration. What the sandboxed code does (exit codes, timeouts, memory
kills) is always a result with a ``status``; only the backend's own failure to start or supervise
the code raises :class:`revex.errors.SandboxError`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Protocol, runtime_checkable


class ExecStatus(StrEnum):
    OK = "ok"
    FAILED = "failed"
    TIMEOUT = "timeout"
    MEMORY = "memory"
    OUTPUT_LIMIT = "output_limit"
    KILLED = "killed"
    SANDBOX_ERROR = "sandbox_error"
    #: A compiled language's compiler failed (its message is in ``stderr``); nothing ran.
    COMPILE_ERROR = "compile_error"


@dataclass(frozen=True)
class Limits:
    """Resource limits for one execution. Every field has a safe default.

    wall_s: wall-clock seconds before the whole process tree is killed (status ``timeout``).
    cpu_s: CPU seconds (RLIMIT_CPU); exceeding it also gives ``timeout``.
    memory_mb: memory ceiling (cgroup where available, else address space); ``memory``.
    pids: maximum number of processes/threads in the sandbox.
    fsize_mb: largest file the code may write (RLIMIT_FSIZE); writes past it fail.
    output_bytes: stdout and stderr are each kept up to this many bytes; ``output_limit``.
    nofile: maximum open file descriptors.
    tmpfs_mb: size of the private /tmp.
    changed_files: most entries a run's workspace change set may hold; more refuses it whole.
    changed_mb: most MiB of file content a change set may hold (apparent sizes); more refuses it.
    changed_depth: deepest path (in components) a change set may hold; deeper refuses it.
    """

    wall_s: float = 10.0
    cpu_s: float = 10.0
    memory_mb: int = 512
    pids: int = 64
    fsize_mb: int = 64
    output_bytes: int = 1_000_000
    nofile: int = 256
    tmpfs_mb: int = 64
    changed_files: int = 10_000
    changed_mb: int = 1024
    changed_depth: int = 128

    def __post_init__(self) -> None:
        # Every field by its declared type, so fields added later are covered too: ``float``
        # fields take finite numbers, ``int`` fields whole numbers (2.0 becomes 2, 2.5 is
        # refused); all must be positive and at most the cap below.
        from revex.errors import ConfigError

        for f in fields(self):
            value = getattr(self, f.name)
            declared = f.type if isinstance(f.type, str) else str(f.type)
            kinds = {k.strip() for k in declared.split("|")}
            if "None" in kinds and value is None:
                continue  # an optional limit that is not set
            kinds.discard("None")
            kind = kinds.pop() if len(kinds) == 1 else ""
            kind = {"<class 'int'>": "int", "<class 'float'>": "float"}.get(kind, kind)
            if kind not in ("int", "float"):
                continue
            cap = _LIMIT_CAPS.get(f.name, _MAX_FLOAT if kind == "float" else _MAX_INT)
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ConfigError(f"Limits.{f.name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ConfigError(f"Limits.{f.name} must be a finite number, got {value!r}")
            if kind == "int" and value != int(value):
                raise ConfigError(f"Limits.{f.name} must be a whole number, got {value!r}")
            if value <= 0 or value > cap:
                raise ConfigError(
                    f"Limits.{f.name} must be greater than 0 and at most {cap}, got {value!r}")
            if kind == "int" and not isinstance(value, int):
                object.__setattr__(self, f.name, int(value))


#: Upper bounds: large enough for any real run, small enough that every value still fits the
#: kernel and nsjail interfaces it ends up in (seconds, MiB, counts).
_MAX_FLOAT = 1e6
_MAX_INT = 1 << 40
_LIMIT_CAPS: dict[str, float] = {"memory_mb": 1 << 30, "pids": 1 << 22, "fsize_mb": 1 << 30,
                                 "nofile": 1 << 20, "tmpfs_mb": 1 << 30}


def _check_text(value: object, name: str) -> None:
    """Text that goes to the kernel (argv, environment, paths) must be a str that encodes to
    UTF-8 without NUL bytes. Raises ConfigError naming the field otherwise."""
    from revex.errors import ConfigError

    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a str, got {type(value).__name__}")
    if "\0" in value:
        raise ConfigError(f"{name} contains a NUL byte; remove it")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigError(
            f"{name} is not valid UTF-8 text ({exc.reason} at position {exc.start}: "
            f"{value[exc.start:exc.end]!r}); pass text that encodes to UTF-8") from None


@dataclass(frozen=True)
class FileChange:
    """One entry of a change set read from a sandbox run's overlay upper directory.

    kind: ``file`` (new or modified regular file), ``dir`` (new directory or mode change),
    ``symlink``, ``delete`` (a whiteout), ``opaque`` (a directory whose lower contents were
    replaced), ``refused`` (an entry the host never applies, or at path ``.`` a change set over
    a limit; ``target`` says why: see :mod:`revex.runtime.sandbox.overlay`).
    """

    path: str
    kind: str
    size: int = 0
    mode: int = 0
    target: str | None = None


@dataclass(frozen=True)
class ExecSpec:
    """What to run. Exactly one of ``code`` and ``argv``."""

    code: str | None = None
    argv: tuple[str, ...] | None = None
    language: str = "python"
    stdin: bytes = b""
    env: Mapping[str, str] = field(default_factory=dict)
    files: Mapping[str, bytes] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    network: bool = False
    workspace: str | None = None  # host directory mounted (as an overlay lower) at /workspace
    #: Limits of the compile step of a compiled language (None: the language's defaults).
    compile_limits: Limits | None = None
    #: (host path, jail path) pairs bound read-only; set by revex (compiled languages'
    #: build output, toolchain config), never from user input.
    ro_mounts: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        # Everything here reaches argv, the environment or a path: refuse what the kernel
        # would reject (NUL) or what has no UTF-8 form (lone surrogates, undecodable names).
        if self.code is not None:
            _check_text(self.code, "ExecSpec.code")
        for i, arg in enumerate(self.argv or ()):
            _check_text(arg, f"ExecSpec.argv[{i}]")
        _check_text(self.language, "ExecSpec.language")
        for key, value in self.env.items():
            _check_text(key, "ExecSpec.env name")
            _check_text(value, f"ExecSpec.env[{key!r}]")
        for name in self.files:
            _check_text(name, "ExecSpec.files name")
        if self.workspace is not None:
            _check_text(self.workspace, "ExecSpec.workspace")


@dataclass
class ExecResult:
    status: ExecStatus
    exit_code: int | None = None
    signal: int | None = None
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    cpu_s: float = 0.0
    wall_s: float = 0.0
    peak_memory_mb: float = 0.0
    changes: list[FileChange] = field(default_factory=list)
    backend: str = ""
    weak_isolation: bool = False
    message: str = ""
    #: Host directory holding the run's file changes as an overlayfs upper layer (new and
    #: modified files, whiteouts for deletions) or, for copy-mode runs, the changed copy of the
    #: workspace. ``None`` when the spec had no workspace or the result was discarded. The
    #: caller owns it: apply ``changes`` (reading file contents with :meth:`change_path`), then
    #: call :meth:`discard`. Kept out of ``repr`` and equality.
    upper_dir: str | None = field(default=None, repr=False, compare=False)
    #: The per-run directory that contains ``upper_dir``; removed by :meth:`discard`.
    _run_dir: str | None = field(default=None, repr=False, compare=False)
    #: Set by ``Episode.run``: whether the change set was applied to the workspace (as
    #: journaled file actions), and what the policy refused (then nothing was applied).
    changes_applied: bool | None = None
    changes_refused: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status is ExecStatus.OK

    def change_path(self, change: FileChange) -> str:
        """Host path holding the new content of ``change`` (a ``file``/``dir``/``symlink``).

        Raises ``ValueError`` when the result has no upper directory (no workspace, or
        already discarded).
        """
        if self.upper_dir is None:
            raise ValueError("this result has no change directory (no workspace, or discarded)")
        return f"{self.upper_dir}/{change.path}"

    def discard(self) -> None:
        """Delete the change directory. Idempotent; call it once the changes were applied or
        rejected. Raises ``OSError`` only if the directory exists and cannot be removed."""
        from revex.runtime.sandbox._tree import remove_tree

        root, self._run_dir, self.upper_dir = self._run_dir, None, None
        if root is not None:
            remove_tree(root)  # iterative: a run can leave a tree too deep for shutil.rmtree

    def __enter__(self) -> ExecResult:
        return self

    def __exit__(self, *exc: object) -> None:
        # Leaving the block never raises: the changes may already be applied and journaled, and
        # the result must reach the caller. A directory that cannot be removed now is removed
        # once this process has ended (``cleanup_leftovers``).
        with contextlib.suppress(OSError):
            self.discard()


@dataclass(frozen=True)
class TestCaseResult:
    """The verdict of one test (one ``assert``) from ``harness.run_tests``.

    status: ``passed``, ``failed`` (assertion false or the solution raised), ``error`` (the
    solution's process died, returned something that is not plain data, or broke the protocol),
    ``timeout``.
    """

    name: str
    status: str
    message: str = ""


class PassCount:
    """``pass_rate`` and ``all_passed`` of a result with ``passed`` and ``total`` fields."""

    passed: int
    total: int

    @property
    def pass_rate(self) -> float:
        return self.passed / self.total if self.total else 0.0

    @property
    def all_passed(self) -> bool:
        return self.total > 0 and self.passed == self.total


@dataclass
class TestReport(PassCount):
    """All verdicts for one solution; ``pass_rate`` is ``passed / total`` (0.0 when empty)."""

    passed: int
    total: int
    results: list[TestCaseResult] = field(default_factory=list)
    message: str = ""


def make_spec(
    code: str | None = None,
    *,
    argv: Sequence[str] | None = None,
    language: str = "python",
    stdin: str | bytes = b"",
    env: Mapping[str, str] | None = None,
    files: Mapping[str, str | bytes] | None = None,
    limits: Limits | None = None,
    network: bool = False,
    workspace: str | None = None,
    compile_limits: Limits | None = None,
) -> ExecSpec:
    """Validate a run request and build its :class:`ExecSpec`.

    Raises ConfigError naming what is wrong (both or neither of code/argv, an unknown language,
    non-str environment values, file names that escape /input).
    """
    from revex.errors import ConfigError

    if (code is None) == (argv is None):
        raise ConfigError("give exactly one of code= (source text) or argv= (a command list)")
    if code is not None and not isinstance(code, str):
        raise ConfigError(f"code must be str, got {type(code).__name__}")
    if argv is not None and (isinstance(argv, str) or not all(isinstance(a, str) for a in argv)
                             or not argv):
        raise ConfigError("argv must be a non-empty list of str, e.g. ['python3', 'main.py']")
    if language not in LANGUAGES:
        raise ConfigError(f"unknown language {language!r}; supported: {', '.join(LANGUAGES)}")
    if compile_limits is not None and not isinstance(compile_limits, Limits):
        raise ConfigError("compile_limits must be a revex.Limits")
    env = dict(env or {})
    for key, value in env.items():
        if not isinstance(key, str) or not isinstance(value, str) or "=" in key or not key:
            raise ConfigError(f"env entries must be str -> str with no '=' in names: {key!r}")
    encoded: dict[str, bytes] = {}
    for name, content in (files or {}).items():
        if not isinstance(name, str) or name.startswith("/") or ".." in name.split("/"):
            raise ConfigError(f"file name {name!r} must be relative without '..'")
        encoded[name] = _to_bytes(content, f"files[{name!r}]")
    return ExecSpec(
        code=code, argv=tuple(argv) if argv is not None else None, language=language,
        stdin=_to_bytes(stdin, "stdin"), env=env,
        files=encoded, limits=limits or Limits(), network=bool(network), workspace=workspace,
        compile_limits=compile_limits,
    )


def _to_bytes(value: str | bytes, name: str) -> bytes:
    """Text as UTF-8, bytes as they are; ConfigError naming ``name`` for anything else."""
    from revex.errors import ConfigError

    if isinstance(value, str):
        _check_text(value.replace("\0", ""), name)  # NUL is fine in data, surrogates are not
        return value.encode()
    if not isinstance(value, bytes | bytearray | memoryview):  # bytes(5) would be 5 NULs
        raise ConfigError(f"{name} must be str or bytes, got {type(value).__name__}")
    return bytes(value)


#: Every ``language=`` accepted; see ``languages.py`` for all but python and bash.
LANGUAGES = ("python", "bash", "c", "cpp", "java", "javascript", "go", "rust")


@runtime_checkable
class SandboxBackend(Protocol):
    """A way to run untrusted code. ``name`` is shown in every result."""

    name: str

    def run(self, spec: ExecSpec) -> ExecResult: ...


class Spawned(Protocol):
    """A started sandboxed process whose pipes the caller drives (see
    :class:`InteractiveBackend`). ``stdin``/``stdout``/``stderr`` are the raw pipe fds."""

    stdin: int
    stdout: int
    stderr: int

    def close(self) -> None:
        """Kill whatever still runs in the sandbox, reap it and remove every per-run resource.
        Idempotent."""
        ...


@runtime_checkable
class InteractiveBackend(SandboxBackend, Protocol):
    """A backend that can also start a sandboxed process and hand over its pipes, with the
    same isolation and limits as :meth:`run` (``limits.wall_s`` bounds the whole session).
    Used by the test harness, whose server talks to the host over those pipes."""

    def spawn(self, spec: ExecSpec) -> Spawned: ...
