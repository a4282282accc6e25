"""Languages other than Python: toolchains, per-language limits, and turning source into a run.

Every language runs with the same isolation as Python (the nsjail backend: namespaces, no
network, private /tmp, seccomp, cgroup and rlimit limits). Compiled languages compile in a
sandbox of their own (``ExecSpec.compile_limits`` or :attr:`Language.compile_limits`); the
compiler's output is copied by :mod:`revex.runtime.sandbox.compile_cache` into a revex-owned
host directory and bind-mounted read-only at ``/build`` for each run. That output is a product of
sandboxed code, so the host never executes or interprets it; it only copies regular files.

Per-language defaults (documented in SECURITY.md, "Judging"):

* ``c``/``cpp``: gcc/g++ ``-O2`` (gnu17 / gnu++17, ``-lm``), compile limits 30 s, 1 GiB.
* ``java``: javac then ``java -Xmx<3/4 of memory_mb>m -Xss16m -XX:+UseSerialGC
  -XX:-UsePerfData`` (code cache and class space capped at 64 MiB to fit the address-space
  rlimit); the serial collector keeps the JVM's thread count (and so the ``pids``
  limit it needs) small. Compile limits 60 s, 2 GiB, 128 threads (javac is a JVM too).
  :func:`default_limits` gives Java runs 1 GiB and 128 pids.
* ``javascript``: ``node`` with ``--max-old-space-size=<3/4 of memory_mb>`` and
  ``--stack-size=7600`` (KiB: deep recursion, yet inside the jail's 8 MiB stack rlimit so it
  ends in a RangeError, not a crash), no compile step.
* ``go``/``rust``: ``go build`` / ``rustc -O``, compile limits 60 s, 2 GiB, when the toolchain
  is installed where the sandbox user can reach it.
* ``python``/``bash``: unchanged, handled by the backend itself (warm path for Python).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from revex.errors import ConfigError
from revex.runtime.sandbox import _common
from revex.runtime.sandbox.base import ExecResult, ExecSpec, ExecStatus, Limits

#: Where the compile output is bound inside a run, and the sources inside a compile.
BUILD_DIR = "/build"
OUT_DIR = "/workspace"
SRC_DIR = "/input"
#: Toolchains must resolve below these (they are bound read-only into every jail).
_VISIBLE = ("/usr/", "/bin/", "/lib/", "/lib64/", "/sbin/")

_JAVA_PUBLIC = re.compile(r"^\s*public\s+(?:(?:final|abstract|strictfp)\s+)*class\s+"
                          r"([A-Za-z_$][\w$]*)", re.MULTILINE)
_JAVA_CLASS = re.compile(r"\bclass\s+([A-Za-z_$][\w$]*)")
_JAVA_MAIN = re.compile(r"\bstatic\s+(?:final\s+)?void\s+main\s*\(")
_JAVA_PACKAGE = re.compile(r"^\s*package\s+([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\s*;",
                           re.MULTILINE)


@dataclass(frozen=True)
class Language:
    """How one language is built and run.

    ``tools``: executables looked up on the host PATH (first is the one whose version names the
    toolchain). ``compile``/``run`` build argv from the resolved tools, the source file name,
    the main name (Java class) and the run's limits. ``compile is None``: interpreted.
    """

    name: str
    tools: tuple[str, ...]
    source_name: Callable[[str], str]
    run: Callable[[dict[str, str], str, Limits], list[str]]
    compile: Callable[[dict[str, str], str], list[str]] | None = None
    compile_limits: Limits = field(default_factory=lambda: Limits(
        wall_s=30, cpu_s=30, memory_mb=1024, pids=64, fsize_mb=128, output_bytes=64_000,
        tmpfs_mb=256))
    compile_env: tuple[tuple[str, str], ...] = ()
    run_limits: Limits = field(default_factory=Limits)
    version_argv: tuple[str, ...] = ("--version",)

    @property
    def compiled(self) -> bool:
        return self.compile is not None


def _java_class(source: str) -> str:
    """The class to run: the public top-level class, else the class declaring ``main``."""
    m = _JAVA_PUBLIC.search(source)
    if m:
        return m.group(1)
    main = _JAVA_MAIN.search(source)
    if main:
        names = _JAVA_CLASS.findall(source[:main.start()])
        if names:
            return str(names[-1])
    return "Main"


def _java_main(source: str) -> str:
    pkg = _JAVA_PACKAGE.search(source)
    cls = _java_class(source)
    return f"{pkg.group(1)}.{cls}" if pkg else cls


def _heap(lim: Limits) -> int:
    """The JVM's and V8's own heap ceiling: above the run's memory limit, so that filling the
    memory is stopped by the kernel (a counted cgroup OOM kill: status ``memory``, a fact)
    rather than by the runtime's own error, whose text the code could print too."""
    return max(64, lim.memory_mb * 2)


_BIG_COMPILE = Limits(wall_s=60, cpu_s=60, memory_mb=2048, pids=128, fsize_mb=256,
                      output_bytes=64_000, tmpfs_mb=512)
_JAVA_FLAGS = ("-XX:+UseSerialGC", "-XX:-UsePerfData", "-XX:TieredStopAtLevel=1",
               "-Xshare:auto")

LANGUAGE_TABLE: dict[str, Language] = {
    lang.name: lang for lang in (
        Language("c", ("gcc",), lambda s: "main.c",
                 compile=lambda t, src: [t["gcc"], "-O2", "-std=gnu17", "-pipe", "-o",
                                         f"{OUT_DIR}/main", f"{SRC_DIR}/{src}", "-lm"],
                 run=lambda t, main, lim: [f"{BUILD_DIR}/main"]),
        Language("cpp", ("g++",), lambda s: "main.cpp",
                 compile=lambda t, src: [t["g++"], "-O2", "-std=gnu++17", "-pipe", "-o",
                                         f"{OUT_DIR}/main", f"{SRC_DIR}/{src}"],
                 run=lambda t, main, lim: [f"{BUILD_DIR}/main"]),
        Language("java", ("javac", "java"), lambda s: f"{_java_class(s)}.java",
                 compile=lambda t, src: [t["javac"], "-J-Xmx1024m", *(f"-J{f}" for f in
                                                                      _JAVA_FLAGS),
                                         "-encoding", "UTF-8", "-nowarn", "-d", OUT_DIR,
                                         f"{SRC_DIR}/{src}"],
                 run=lambda t, main, lim: [t["java"], f"-Xmx{_heap(lim)}m", "-Xss16m",
                                           "-XX:ReservedCodeCacheSize=64m",
                                           "-XX:CompressedClassSpaceSize=64m",
                                           "-XX:+UseSerialGC", "-XX:-UsePerfData",
                                           "-cp", BUILD_DIR, main],
                 compile_limits=_BIG_COMPILE,
                 run_limits=Limits(memory_mb=1024, pids=128),
                 version_argv=("-version",)),
        Language("javascript", ("node",), lambda s: "main.js",
                 run=lambda t, main, lim: [t["node"], f"--max-old-space-size={_heap(lim)}",
                                           "--stack-size=7600", f"{SRC_DIR}/main.js"]),
        Language("go", ("go",), lambda s: "main.go",
                 compile=lambda t, src: [t["go"], "build", "-o", f"{OUT_DIR}/main",
                                         f"{SRC_DIR}/{src}"],
                 run=lambda t, main, lim: [f"{BUILD_DIR}/main"],
                 compile_limits=_BIG_COMPILE,
                 compile_env=(("GOCACHE", "/tmp/gocache"), ("GOPATH", "/tmp/go"),
                              ("CGO_ENABLED", "0")),
                 version_argv=("version",)),
        Language("rust", ("rustc",), lambda s: "main.rs",
                 compile=lambda t, src: [t["rustc"], "-O", "--edition", "2021", "-o",
                                         f"{OUT_DIR}/main", f"{SRC_DIR}/{src}"],
                 run=lambda t, main, lim: [f"{BUILD_DIR}/main"],
                 compile_limits=_BIG_COMPILE),
    )
}
#: Languages the backend runs itself (no build step here).
NATIVE = ("python", "bash")


@dataclass(frozen=True)
class Toolchain:
    """A language's tools as found on this host: resolved paths and a version line, or why
    the language cannot run (``missing`` non-empty)."""

    language: str
    paths: dict[str, str]
    version: str = ""
    missing: str = ""
    extra_ro: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.missing

    @property
    def ident(self) -> str:
        """What the compile cache keys on besides the source: paths, sizes, mtimes, version."""
        parts = [self.version]
        for name, path in sorted(self.paths.items()):
            st = os.stat(path)
            parts.append(f"{name}={path}:{st.st_size}:{st.st_mtime_ns}")
        return "|".join(parts)


@functools.cache
def toolchain(name: str) -> Toolchain:
    """Find ``name``'s tools on this host (cached per process). Never raises for a missing
    tool; the result says why (not on PATH, or not reachable by the sandbox user)."""
    lang = LANGUAGE_TABLE[name]
    paths: dict[str, str] = {}
    for tool in lang.tools:
        found = shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/local/bin:/usr/bin")
        if found is None:
            return Toolchain(name, {}, missing=f"{tool} is not installed (not on PATH)")
        real = os.path.realpath(found)
        if not real.startswith(_VISIBLE) or not _common.world_traversable(real):
            return Toolchain(name, {}, missing=(
                f"{tool} resolves to {real}, outside the read-only system dirs the sandbox "
                "binds (/usr, /bin, /lib); install it system-wide"))
        paths[tool] = real
    try:
        out = subprocess.run([paths[lang.tools[0]], *lang.version_argv], capture_output=True,
                             timeout=30, check=False, env={"PATH": "/usr/bin:/bin"})
        text = (out.stdout or out.stderr).decode("utf-8", "replace").strip().splitlines()
        version = text[0] if text else "?"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Toolchain(name, paths, missing=f"{paths[lang.tools[0]]} does not run: {exc}")
    return Toolchain(name, paths, version=version, extra_ro=_etc_targets(paths))


def _etc_targets(paths: dict[str, str]) -> tuple[str, ...]:
    """Directories under /etc that a toolchain's home links into (Debian's JDK keeps
    ``conf/*`` and ``lib/jvm.cfg`` as links to /etc/java-N-openjdk): bound read-only."""
    out: set[str] = set()
    for path in paths.values():
        home = os.path.dirname(os.path.dirname(path))
        for sub in ("conf", "lib"):
            d = os.path.join(home, sub)
            if not os.path.isdir(d) or not home.startswith("/usr/lib/jvm/"):
                continue
            for entry in os.scandir(d):
                if entry.is_symlink():
                    target = os.path.realpath(entry.path)
                    if target.startswith("/etc/"):
                        out.add("/".join(target.split("/")[:3]))
    return tuple(sorted(p for p in out if os.path.isdir(p)))


def supported() -> tuple[str, ...]:
    """Every language name ``language=`` accepts (whether or not its toolchain is here)."""
    return NATIVE + tuple(LANGUAGE_TABLE)


def needs_build(spec: ExecSpec) -> bool:
    """Whether ``spec`` is source code in a language this module turns into a run."""
    return spec.code is not None and spec.language in LANGUAGE_TABLE


def default_limits(language: str) -> Limits:
    """Run limits for ``language`` when the caller gives none (Java: 1 GiB, 128 pids)."""
    lang = LANGUAGE_TABLE.get(language)
    return lang.run_limits if lang is not None else Limits()


def require(language: str) -> tuple[Language, Toolchain]:
    """The language and its toolchain. Raises ``ConfigError`` naming the language and why its
    toolchain cannot be used (see ``revex doctor``)."""
    lang = LANGUAGE_TABLE.get(language)
    if lang is None:
        raise ConfigError(f"unknown language {language!r}; supported: {', '.join(supported())}")
    tc = toolchain(language)
    if not tc.ok:
        raise ConfigError(f"language {language!r} is not available here: {tc.missing} "
                          "(see `revex doctor`)")
    return lang, tc


def main_name(lang: Language, source: str) -> str:
    return _java_main(source) if lang.name == "java" else "main"


def run_spec(spec: ExecSpec, lang: Language, tc: Toolchain, build_dir: str | None) -> ExecSpec:
    """The spec that runs ``spec.code``: argv from the language, the source at /input for
    interpreted languages, the build bound read-only at /build for compiled ones."""
    assert spec.code is not None
    argv = lang.run(tc.paths, main_name(lang, spec.code), spec.limits)
    files = dict(spec.files)
    mounts = tuple((p, p) for p in tc.extra_ro)
    if lang.compiled:
        assert build_dir is not None
        mounts += ((build_dir, BUILD_DIR),)
    else:
        files[lang.source_name(spec.code)] = spec.code.encode()
    return replace(spec, code=None, argv=tuple(argv), files=files,
                   ro_mounts=tuple(spec.ro_mounts) + mounts)


def compile_spec(source: str, lang: Language, tc: Toolchain, limits: Limits,
                 out_dir: str) -> ExecSpec:
    """The spec that compiles ``source`` into ``out_dir`` (bound as the workspace)."""
    assert lang.compile is not None
    src = lang.source_name(source)
    return ExecSpec(argv=tuple(lang.compile(tc.paths, src)), language=lang.name,
                    files={src: source.encode()}, env=dict(lang.compile_env), limits=limits,
                    workspace=out_dir, ro_mounts=tuple((p, p) for p in tc.extra_ro))


_HELLO = {
    "c": '#include <stdio.h>\nint main(){puts("hello");return 0;}',
    "cpp": '#include <iostream>\nint main(){std::cout<<"hello"<<std::endl;}',
    "java": 'public class Main { public static void main(String[] a) {'
            ' System.out.println("hello"); } }',
    "javascript": 'console.log("hello")',
    "go": 'package main\nimport "fmt"\nfunc main(){fmt.Println("hello")}',
    "rust": 'fn main(){println!("hello");}',
}


def doctor_rows(run: Callable[[ExecSpec], ExecResult] | None = None) -> list[tuple[str, bool,
                                                                               str]]:
    """One row per language: (``language NAME``, works, toolchain and version, or why not).
    With ``run`` (a backend's ``run``), each available language also compiles and runs a
    hello-world in the sandbox. Never raises for a missing toolchain; it reports it."""
    rows: list[tuple[str, bool, str]] = [
        ("language python", True, "the sandbox's Python (warm path)"),
        ("language bash", os.path.exists("/bin/bash"), "/bin/bash"),
    ]
    for name in LANGUAGE_TABLE:
        tc = toolchain(name)
        if not tc.ok:
            rows.append((f"language {name}", False, tc.missing))
            continue
        where = ", ".join(tc.paths.values())
        ok, why = True, f"{tc.version} ({where})"
        if run is not None:
            from revex.errors import RevexError

            try:
                res = run(ExecSpec(code=_HELLO[name], language=name,
                                   limits=default_limits(name)))
                ok = res.status is ExecStatus.OK and res.stdout.strip() == "hello"
                if not ok:
                    why += f"; sandbox probe: {res.status} {res.message} {res.stderr[-300:]}"
            except RevexError as exc:
                ok, why = False, f"{why}; sandbox probe failed: {exc}"
        rows.append((f"language {name}", ok, why))
    return rows
