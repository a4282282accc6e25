"""Compile once per (source, language, toolchain), in a sandbox, and keep the output.

The compiler runs as an ordinary sandboxed run (``ExecSpec.compile_limits``, else the
language's defaults) with an empty workspace; its change set is the build output. That output
was produced by untrusted code (the source chooses what the compiler emits, and a compiler may
be made to do anything), so the host treats it as hostile: only regular files with plain names
are copied, at most :data:`MAX_FILES` files and :data:`MAX_BYTES` bytes, into a fresh directory
with modes revex chooses (never setuid), owned by the host user, below a 0711 per-user root. The
host never executes, loads or parses it: it is only ever bind-mounted read-only into a jail.

Entries are keyed by SHA-256 over the language, the toolchain identity (paths, sizes, mtimes,
version), the compile command and the source, so N test cases of one solution compile once
(a per-key lock serializes concurrent builders; an atomic rename publishes the entry). A
definite compiler failure is cached too (its message), so N cases also fail to compile once;
a compile timeout, memory kill or sandbox error is not cached.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

from revex.errors import SandboxError
from revex.runtime.sandbox import _common
from revex.runtime.sandbox.base import ExecResult, ExecSpec, ExecStatus, SandboxBackend
from revex.runtime.sandbox.languages import Language, Toolchain, compile_spec, main_name

MAX_FILES = 1000
MAX_BYTES = 256 << 20
MAX_DEPTH = 8
MAX_MESSAGE = 16_000
#: Entries kept in the cache; the least recently used beyond this are removed.
MAX_ENTRIES = 2000
_NAME = re.compile(r"^[A-Za-z0-9_$][A-Za-z0-9_$.+-]{0,200}$")
_ERROR_FILE = ".compile_error.json"  # a name compiler output can never have (see _NAME)
_locks: dict[str, list[Any]] = {}  # key -> [lock, users]
_locks_guard = threading.Lock()


def cache_root() -> str:
    """The per-user cache directory (mode 0711: the jail user may traverse to a bound entry,
    nobody but the owner may list or create). Raises ``SandboxError`` if it is not safe."""
    return _common.user_dir("revex-build", "the compile cache")


def cache_key(source: str, lang: Language, tc: Toolchain, spec: ExecSpec) -> str:
    argv = compile_spec(source, lang, tc, spec.compile_limits or lang.compile_limits, "/").argv
    blob = json.dumps([lang.name, tc.ident, argv, source], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


@contextlib.contextmanager
def _lock(key: str) -> Iterator[None]:
    """Serialize builders of one key; the entry is dropped when its last user leaves, so a
    long run over millions of distinct sources does not accumulate locks."""
    with _locks_guard:
        entry = _locks.setdefault(key, [threading.Lock(), 0])
        entry[1] += 1
    try:
        with entry[0]:
            yield
    finally:
        with _locks_guard:
            entry[1] -= 1
            if entry[1] == 0:
                del _locks[key]


def build(spec: ExecSpec, lang: Language, tc: Toolchain,
          backend: SandboxBackend) -> tuple[str | None, ExecResult | None]:
    """Compile ``spec.code`` (or find it in the cache). Returns ``(build_dir, None)`` on
    success and ``(None, result)`` when the run must end here: status ``compile_error`` (with
    the compiler's message in ``stderr``) or ``sandbox_error``. Raises ``SandboxError`` when
    the cache cannot be used."""
    assert spec.code is not None
    root = cache_root()
    key = cache_key(spec.code, lang, tc, spec)
    entry = os.path.join(root, key)
    with _lock(key):
        cached = _lookup(entry, lang)
        if cached is not None:
            return cached
        return _compile(spec, lang, tc, backend, root, entry)


def _lookup(entry: str, lang: Language) -> tuple[str | None, ExecResult | None] | None:
    try:
        st = os.lstat(entry)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        raise SandboxError(f"compile cache entry {entry} is not a directory owned by revex")
    with contextlib.suppress(OSError):  # recently used: kept longest by prune()
        os.utime(entry)
    err = os.path.join(entry, _ERROR_FILE)
    if os.path.exists(err):
        with open(err) as f:
            data = json.load(f)
        return None, _compile_error(lang, str(data.get("stderr", "")),
                                    str(data.get("stdout", "")), data.get("exit_code"),
                                    "compilation failed (cached)")
    return entry, None


def _compile_error(lang: Language, stderr: str, stdout: str, exit_code: object,
                   why: str) -> ExecResult:
    return ExecResult(status=ExecStatus.COMPILE_ERROR, stdout=stdout[:MAX_MESSAGE],
                      stderr=stderr[:MAX_MESSAGE],
                      exit_code=exit_code if isinstance(exit_code, int) else None,
                      backend="nsjail", message=f"{lang.name}: {why}")


def _compile(spec: ExecSpec, lang: Language, tc: Toolchain, backend: SandboxBackend,
             root: str, entry: str) -> tuple[str | None, ExecResult | None]:
    assert spec.code is not None
    limits = spec.compile_limits or lang.compile_limits
    work = tempfile.mkdtemp(prefix=".build-", dir=root)
    stage = os.path.join(root, f".stage-{secrets.token_hex(8)}")
    try:
        os.chmod(work, 0o755)
        result = backend.run(compile_spec(spec.code, lang, tc, limits, work))
        with result:
            if result.status is ExecStatus.SANDBOX_ERROR:
                return None, result
            if result.status is ExecStatus.FAILED and (
                    result.peak_memory_mb >= limits.memory_mb * 0.95
                    or "Killed signal terminated program" in result.stderr):
                # gcc's driver survives the kill of cc1 (OOM or RLIMIT_CPU) and just exits 1:
                # a limit was hit, the failure is not definite.
                result.status = (ExecStatus.TIMEOUT if result.cpu_s >= 0.75 * limits.cpu_s
                                 else ExecStatus.MEMORY)
            if result.status is not ExecStatus.OK:
                why = {ExecStatus.TIMEOUT: f"the compiler ran out of time ({limits.wall_s:g} s "
                                           "wall / cpu; see compile_limits)",
                       ExecStatus.MEMORY: f"the compiler ran out of memory ({limits.memory_mb} "
                                          "MiB; see compile_limits)",
                       ExecStatus.OUTPUT_LIMIT: "the compiler printed too much"}.get(
                    result.status, f"compilation failed ({result.status})")
                err = _compile_error(lang, result.stderr, result.stdout, result.exit_code, why)
                if result.status is ExecStatus.FAILED:  # definite: cache it
                    os.mkdir(stage, 0o755)
                    with open(os.path.join(stage, _ERROR_FILE), "w") as f:
                        json.dump({"stderr": err.stderr, "stdout": err.stdout,
                                   "exit_code": err.exit_code}, f)
                    _publish(stage, entry)
                return None, err
            os.mkdir(stage, 0o755)
            _copy_output(result, stage)
        expected = "main" if lang.name != "java" else (
            main_name(lang, spec.code).replace(".", "/") + ".class")
        if not os.path.isfile(os.path.join(stage, expected)):
            return None, _compile_error(lang, "", "", None,
                                        f"the compiler produced no {expected}")
        _publish(stage, entry)
        return entry, None
    except OSError as exc:
        raise SandboxError(f"cannot store the build output: {exc}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(stage, ignore_errors=True)


def _publish(stage: str, entry: str) -> None:
    """Atomically move ``stage`` to ``entry``; another process that got there first wins.
    Then keep the cache to :data:`MAX_ENTRIES` entries."""
    try:
        os.rename(stage, entry)
    except OSError:
        if not os.path.isdir(entry):
            raise
    prune(os.path.dirname(entry), MAX_ENTRIES)


def prune(root: str, keep: int) -> int:
    """Remove all but the ``keep`` most recently used entries (hits refresh an entry's mtime);
    returns how many were removed. A run that already bound a removed entry is unaffected."""
    entries = []
    for d in os.scandir(root):
        if len(d.name) == 64 and d.is_dir(follow_symlinks=False):
            with contextlib.suppress(OSError):
                entries.append((d.stat(follow_symlinks=False).st_mtime, d.path))
    if len(entries) <= keep:
        return 0
    entries.sort()
    old = entries[:len(entries) - keep]
    for _, path in old:
        shutil.rmtree(path, ignore_errors=True)
    return len(old)


def _copy_output(result: ExecResult, stage: str) -> None:
    """Copy the compile run's new regular files into ``stage`` (hostile input: see the module
    docstring). Raises ``SandboxError`` when the output breaks a bound."""
    total = count = 0
    for change in sorted(result.changes, key=lambda c: c.path.count("/")):
        parts = change.path.split("/")
        if len(parts) > MAX_DEPTH or not all(_NAME.match(p) for p in parts):
            raise SandboxError(f"compiler output has an unsafe name {change.path!r}")
        dest = os.path.join(stage, *parts)
        if change.kind in ("dir", "opaque"):
            os.makedirs(dest, 0o755, exist_ok=True)
            continue
        if change.kind != "file":
            continue  # symlinks, whiteouts: never followed, never copied
        count += 1
        if count > MAX_FILES:
            raise SandboxError(f"compiler output has more than {MAX_FILES} files")
        # O_NONBLOCK: a FIFO planted in the output must not block the host on open.
        fd = os.open(result.change_path(change), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with contextlib.closing(os.fdopen(fd, "rb")) as src:
            st = os.fstat(src.fileno())
            if not stat.S_ISREG(st.st_mode):
                continue
            total += st.st_size
            if total > MAX_BYTES:
                raise SandboxError(f"compiler output is larger than {MAX_BYTES >> 20} MiB")
            os.makedirs(os.path.dirname(dest), 0o755, exist_ok=True)
            out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            # Executable for the jail user when the compiler made it so; never setuid/setgid.
            os.chmod(dest, 0o755 if st.st_mode & 0o111 else 0o644)


def prepare(spec: ExecSpec, backend: SandboxBackend) -> ExecSpec | ExecResult:
    """``spec`` (source code in a language of :mod:`languages`) as a spec the backend can run
    directly, or the result that ends the run (``compile_error``, ``sandbox_error``).

    Raises ``ConfigError`` when the language's toolchain is missing and ``SandboxError`` when
    the cache cannot be used.
    """
    from revex.runtime.sandbox import languages

    lang, tc = languages.require(spec.language)
    build_dir: str | None = None
    if lang.compiled:
        build_dir, failed = build(spec, lang, tc, backend)
        if failed is not None:
            return failed
    return languages.run_spec(spec, lang, tc, build_dir)
