"""Change sets from overlay (workspace owned by the jail user) and copy mode (owned by root),
the process backend, backend selection and the non-root path."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from revex.runtime.sandbox import doctor, run_many, select_backend
from revex.runtime.sandbox.base import ExecSpec, ExecStatus, Limits
from revex.runtime.sandbox.nsjail import NsjailBackend
from revex.runtime.sandbox.overlay import apply_changes
from revex.runtime.sandbox.process import ProcessBackend
from tests.helpers import python_for_other_users

EDIT = """
import os, shutil
open('a', 'w').write('A2')
os.remove('b')
os.chmod('c', 0o700)
os.symlink('a', 'ln')
os.makedirs('n/m')
open('n/m/x', 'w').write('x')
shutil.rmtree('d')
os.mkdir('d')
open('d/g', 'w').write('g')
"""


def _make_ws(root: str, uid: int) -> str:
    ws = os.path.join(root, "ws")
    os.mkdir(ws, 0o755)
    for name in "abc":
        with open(os.path.join(ws, name), "w") as f:
            f.write(name)
    os.mkdir(os.path.join(ws, "d"))
    with open(os.path.join(ws, "d", "f"), "w") as f:
        f.write("f")
    for base, dirs, files in os.walk(ws):
        for n in [base, *(os.path.join(base, x) for x in dirs + files)]:
            os.chown(n, uid, uid)
    return ws


def _tree(root: str) -> dict[str, tuple[str, int]]:
    out = {}
    for base, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(base, n)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if os.path.islink(p):
                kind = "l:" + os.readlink(p)
            elif os.path.isdir(p):
                kind = "d"
            else:
                with open(p) as f:
                    kind = "f:" + f.read()
            out[rel] = (kind, st.st_mode & 0o777)
    return out


@pytest.mark.parametrize("owner", [65534, 0], ids=["overlay", "copy"])
def test_change_set_applies_to_the_same_tree(nsjail: NsjailBackend, open_dir: str,
                                             owner: int) -> None:
    ws = _make_ws(open_dir, owner)
    r = nsjail.run(ExecSpec(code=EDIT + "print(sorted(os.listdir('.')))", workspace=ws))
    assert r.ok, r.stderr
    kinds = {c.path: c.kind for c in r.changes}
    assert kinds["a"] == "file" and kinds["b"] == "delete" and kinds["ln"] == "symlink"
    assert kinds["n"] == "dir" and kinds["n/m/x"] == "file" and kinds["d/g"] == "file"
    assert next(c for c in r.changes if c.path == "c").mode == 0o700
    assert next(c for c in r.changes if c.path == "ln").target == "a"
    if owner == 65534:
        assert kinds["d"] == "opaque"
    assert _tree(ws)["a"][0] == "f:a"  # the real workspace is untouched
    expected = ["a", "c", "d", "ln", "n"]
    assert r.stdout.strip() == str(expected)
    assert r.upper_dir is not None
    apply_changes(r.changes, r.upper_dir, ws)
    tree = _tree(ws)
    assert sorted(k for k in tree if "/" not in k) == expected
    assert tree["a"][0] == "f:A2" and tree["c"][1] == 0o700 and tree["ln"][0] == "l:a"
    assert "d/f" not in tree and tree["d/g"][0] == "f:g" and tree["n/m/x"][0] == "f:x"
    upper = r.upper_dir
    r.discard()
    assert not os.path.exists(upper) and r.upper_dir is None


def test_process_backend_is_weak_but_limited(process_backend: ProcessBackend,
                                             open_dir: str) -> None:
    r = process_backend.run(ExecSpec(code="print('hi')"))
    assert r.ok and r.weak_isolation and "weak isolation" in r.message
    r = process_backend.run(ExecSpec(code="import time; time.sleep(30)", limits=Limits(wall_s=1)))
    assert r.status is ExecStatus.TIMEOUT and r.wall_s < 1.6
    r = process_backend.run(ExecSpec(code="b = bytearray(2 << 30)", limits=Limits(memory_mb=256)))
    assert r.status is ExecStatus.MEMORY
    r = process_backend.run(ExecSpec(code="print('x' * 100000)", limits=Limits(output_bytes=100)))
    assert r.status is ExecStatus.OUTPUT_LIMIT and len(r.stdout) == 100
    ws = _make_ws(open_dir, 0)
    r = process_backend.run(ExecSpec(code="import os; os.remove('b')", workspace=ws))
    assert [c.kind for c in r.changes] == ["delete"] and os.path.exists(os.path.join(ws, "b"))
    r.discard()


def test_process_backend_kills_the_group(process_backend: ProcessBackend,
                                         open_dir: str) -> None:
    marker = os.path.join(open_dir, "late")
    code = (f"import os, time\nif os.fork() == 0:\n    time.sleep(2)\n"
            f"    open({marker!r}, 'w').write('x')\n    os._exit(0)\n")
    assert process_backend.run(ExecSpec(code=code)).ok
    import time
    time.sleep(2.5)
    assert not os.path.exists(marker)


def test_select_backend_and_doctor() -> None:
    assert select_backend().name == "nsjail"
    assert select_backend("process").name == "process"
    from revex.errors import ConfigError
    with pytest.raises(ConfigError):
        select_backend("docker-ish")
    rows = {name: ok for name, ok, _ in doctor()}
    assert rows["backend nsjail"] and rows["seccomp"] and rows["user namespaces"]


def test_run_many_keeps_order(nsjail: NsjailBackend) -> None:
    specs = [ExecSpec(code=f"print({i})") for i in range(8)]
    results = run_many(specs, concurrency=2, backend=nsjail)
    assert [r.stdout.strip() for r in results] == [str(i) for i in range(8)]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root")
def test_backend_works_as_non_root_user() -> None:
    code = ("import revex, sys\n"
            "from revex.runtime.sandbox.nsjail import NsjailBackend\n"
            "from revex.runtime.sandbox.base import ExecSpec, Limits\n"
            "assert revex.__file__.startswith(sys.argv[1]), revex.__file__\n"
            "b = NsjailBackend()\n"
            "r = b.run(ExecSpec(code='import os; print(os.getuid())'))\n"
            "m = b.run(ExecSpec(code='b = bytearray(2 << 30)', limits=Limits(memory_mb=256)))\n"
            "print(r.status, r.stdout.strip(), m.status, 'rlimits only' in r.message)\n")
    # `nobody` gets a world-readable copy of what it imports: the checkout (and a virtualenv in
    # it) may sit below a directory it cannot enter, such as a clone in a `mktemp -d` folder
    with python_for_other_users("revex.runtime.sandbox.nsjail") as (python, path):
        out = subprocess.run(
            ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", python, "-s",
             "-c", code, path],
            capture_output=True, text=True, timeout=60, cwd=path,
            env={"PYTHONPATH": path, "PATH": "/usr/bin:/bin"}, check=False)
    # Without cgroups nothing the code cannot write says "memory": the rlimit makes the
    # allocation fail inside the code, which is then a plain failure (statuses are facts).
    assert out.stdout.split() == ["ok", "65534", "failed", "True"], out.stderr
