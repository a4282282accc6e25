"""Helpers shared by the runtime tests: exact tree snapshots, small runtime factories, and
what a test needs to run revex as another (unprivileged) user.

``snapshot_tree`` is the yardstick of every rollback test: two snapshots are equal only when
every entry (and the root) has the same type, permission bits, mtime in nanoseconds, size,
bytes and symlink target.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# files larger than this are compared by sha256 instead of by their bytes (keeps diffs readable)
BIG = 64 * 1024


def _entry(path: str) -> dict[str, Any]:
    st = os.lstat(path)
    mode = st.st_mode
    out: dict[str, Any] = {
        "mode": stat.S_IMODE(mode),
        "mtime_ns": st.st_mtime_ns,
    }
    if stat.S_ISLNK(mode):
        out["type"] = "symlink"
        out["target"] = os.readlink(path)
    elif stat.S_ISDIR(mode):
        out["type"] = "dir"
    elif stat.S_ISREG(mode):
        out["type"] = "file"
        out["size"] = st.st_size
        with open(path, "rb") as f:
            data = f.read()
        if len(data) > BIG:
            out["sha256"] = hashlib.sha256(data).hexdigest()
        else:
            out["content"] = data
    elif stat.S_ISFIFO(mode):
        out["type"] = "fifo"
    else:
        out["type"] = f"other:{stat.S_IFMT(mode):o}"
    if out["type"] == "symlink":
        # a symlink's permission bits are meaningless on Linux (always 0o777)
        out.pop("mode")
    return out


def snapshot_tree(root: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Exact state of the tree under ``root``: ``{relative path: entry}``; the root is ``"."``.

    Each entry holds ``type`` (file, dir, symlink, fifo), ``mode`` (permission bits),
    ``mtime_ns`` (for files, directories and symlinks), and for files ``size`` plus
    ``content`` (bytes) or ``sha256`` for files over 64 KiB; for symlinks ``target``.
    Symlinks are never followed.
    """
    root = os.fspath(root)
    out = {".": _entry(root)}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            out[os.path.relpath(full, root)] = _entry(full)
    return out


def diff_trees(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> list[str]:
    """Human-readable differences between two snapshots (empty when equal)."""
    lines = []
    for rel in sorted(set(before) | set(after)):
        a, b = before.get(rel), after.get(rel)
        if a == b:
            continue
        if a is None:
            lines.append(f"+ {rel}: {_short(b)}")
        elif b is None:
            lines.append(f"- {rel}: {_short(a)}")
        else:
            keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            lines.append(f"~ {rel}: " + ", ".join(
                f"{k} {_short(a.get(k))} -> {_short(b.get(k))}" for k in keys))
    return lines


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 80 else text[:77] + "..."


def assert_same_tree(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> None:
    diff = diff_trees(before, after)
    assert not diff, "tree differs:\n  " + "\n  ".join(diff[:40])


def populate(ws: Path) -> None:
    """A small tree with files of several modes, a subdirectory and a symlink, with settled
    (old, distinct) mtimes so that a restore which forgets an mtime is caught."""
    ws.mkdir(parents=True, exist_ok=True)
    (ws / "keep.txt").write_text("original\n")
    os.chmod(ws / "keep.txt", 0o640)
    (ws / "exec.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(ws / "exec.sh", 0o755)
    (ws / "sub").mkdir()
    (ws / "sub" / "inner.bin").write_bytes(bytes(range(256)) * 4)
    (ws / "sub" / "deeper").mkdir()
    (ws / "sub" / "deeper" / "leaf.txt").write_text("leaf")
    os.symlink("sub/inner.bin", ws / "link")
    t = 1_600_000_000_000_000_000
    for i, (dirpath, dirnames, filenames) in enumerate(
            sorted(os.walk(ws), key=lambda x: -len(x[0]))):
        for j, name in enumerate(dirnames + filenames):
            os.utime(os.path.join(dirpath, name), ns=(t + i * 1000 + j, t + i * 1000 + j),
                     follow_symlinks=False)
        os.utime(dirpath, ns=(t + i * 7919, t + i * 7919))


# ---- random file actions (crash tests, benchmarks) --------------------------------------------

POOL = ["a", "b", "d", "d/a", "d/b", "d/e", "d/e/a", "e", "e/a",
        "keep.txt", "exec.sh", "sub", "sub/inner.bin", "sub/deeper", "link"]


def random_fs_action(ep: Any, rng: Any, *, large: int = 1 << 20) -> str:
    """Perform one random ``ep.fs`` action over a small pool of names; returns its name.

    The caller decides what to do with the ActionFailed/PolicyViolation it may raise.
    """
    import posixpath

    p, q = rng.choice(POOL), rng.choice(POOL)
    name = rng.choice(["write", "write", "write", "append", "delete", "mkdir", "mkdirp",
                       "rmdir", "rename", "rename", "chmod", "symlink", "copy"])
    if name == "write":
        n = large if rng.random() < 0.05 else rng.choice([0, 10, 100, 5000])
        ep.fs.write_bytes(p, rng.randbytes(n), mode=rng.choice([None, None, 0o600]))
    elif name == "append":
        ep.fs.append(p, rng.randbytes(rng.choice([1, 100, 5000])))
    elif name == "delete":
        ep.fs.delete(p)
    elif name == "mkdir":
        ep.fs.mkdir(p)
    elif name == "mkdirp":
        ep.fs.mkdir(p, parents=True)
    elif name == "rmdir":
        ep.fs.rmdir(p, recursive=rng.random() < 0.7)
    elif name == "rename":
        ep.fs.rename(p, q)
    elif name == "chmod":
        ep.fs.chmod(p, rng.choice([0o600, 0o644, 0o755, 0o700]))
    elif name == "symlink":
        ep.fs.symlink(p, posixpath.relpath(q, posixpath.dirname(p) or "."))
    else:
        ep.fs.copy(p, q)
    return name


# ---- running revex as another user ------------------------------------------------------------

def blocked_for_others(path: str | os.PathLike[str]) -> str | None:
    """The first directory on the way to ``path`` (or ``path`` itself) that a user who holds only
    the "other" permission bits cannot pass or read, or None when such a user reaches it."""
    target = Path(os.path.abspath(path))
    for directory in [*reversed(target.parents), target]:
        try:
            mode = directory.stat().st_mode
        except OSError:
            return str(directory)
        need = stat.S_IXOTH if directory != target or directory.is_dir() else 0
        if directory == target:
            need |= stat.S_IROTH
        if mode & need != need:
            return str(directory)
    return None


_PROBE = """
import importlib, json, sys, sysconfig
for name in sys.argv[1:]:
    importlib.import_module(name)
stdlib = sysconfig.get_paths()["stdlib"]
found = {}
for name, module in list(sys.modules.items()):
    top = name.split(".")[0]
    path = getattr(sys.modules.get(top), "__file__", None)
    if (top in found or top in ("revex", "_distutils_hack") or path is None
            or top.startswith("__editable__")
            or path.startswith(stdlib) or "-packages" not in path):
        continue
    found[top] = path
print(json.dumps(found))
"""


def _share(src: Path, dst: Path) -> None:
    """Make ``src`` (a file or a package directory) readable by everyone at ``dst``: files that
    already are world-readable are hard-linked (cheap, and their modes are never touched), the
    rest copied and opened up; directories are new and get 0755."""
    def put(a: str, b: str) -> None:
        if os.stat(a).st_mode & stat.S_IROTH:
            try:
                os.link(a, b)
                return
            except OSError:  # another file system, or links refused: copy instead
                pass
        shutil.copyfile(a, b)
        os.chmod(b, 0o644)

    if src.is_dir():
        shutil.copytree(src, dst, copy_function=put, symlinks=False,
                        ignore=shutil.ignore_patterns("__pycache__"))
        for dirpath, _dirnames, _filenames in os.walk(dst):
            os.chmod(dirpath, 0o755)
    else:
        put(str(src), str(dst))


def _python_for_others() -> str | None:
    """An interpreter of this Python version that every user can run, or None."""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for candidate in (sys.executable, f"/usr/bin/python{version}", "/usr/bin/python3",
                      f"/usr/local/bin/python{version}"):
        real = os.path.realpath(candidate)
        if not os.path.isfile(real) or blocked_for_others(real) is not None:
            continue
        out = subprocess.run([real, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30, check=False)
        if out.stdout.strip() == version:
            return real
    return None


@contextlib.contextmanager
def python_for_other_users(*modules: str) -> Iterator[tuple[str, str]]:
    """``(python, pythonpath)`` with which a user holding only the "other" permission bits can
    import ``modules`` from THIS checkout, wherever it lives (a clone under /root or in a 0700
    ``mktemp -d`` folder, a virtualenv inside it).

    The ``revex`` package this process imports and every third-party package that importing
    ``modules`` loads are shared into a fresh world-readable directory under the system temp
    dir (removed on exit); ``python`` is an interpreter of this version that user can run.
    Skips the test, saying why, when there is none.
    """
    import pytest

    import revex

    python = _python_for_others()
    if python is None:
        pytest.skip(f"no Python {sys.version_info[0]}.{sys.version_info[1]} interpreter that "
                    f"other users can run ({sys.executable} is below a closed directory)")
    probe = subprocess.run([sys.executable, "-c", _PROBE, *modules], capture_output=True,
                           text=True, timeout=120, check=True)
    root = Path(tempfile.mkdtemp(prefix="revex-pkg-"))
    try:
        os.chmod(root, 0o755)
        _share(Path(revex.__file__).parent, root / "revex")
        sites = set()
        for top, path in json.loads(probe.stdout).items():
            src = Path(path)
            if src.name == "__init__.py":
                _share(src.parent, root / top)
                sites.add(src.parent.parent)
            else:  # a single-file module or an extension module
                _share(src, root / src.name)
                sites.add(src.parent)
        for site in sites:  # shared libraries wheels bundle (auditwheel's <dist>.libs)
            for libs in site.glob("*.libs"):
                if not (root / libs.name).exists():
                    _share(libs, root / libs.name)
        blocked = blocked_for_others(root)
        if blocked is not None:
            pytest.skip(f"{blocked} is closed to other users: the temp dir cannot be shared")
        yield python, str(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
