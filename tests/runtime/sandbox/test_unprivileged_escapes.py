"""The cold nsjail path as an unprivileged user (uid 65534, no cgroups): the sandbox suite's
escape cases, forged statuses and hidden paths hold there too, and overlay runs through the
public API apply, journal and clean up without raising.

These tests start a process as ``nobody`` (``setpriv``), so they need root. That process cannot
enter a checkout below a private directory (e.g. /root), so the files it needs are copied into a
temp directory it can read; the interpreter must be one ``nobody`` can run (the system python3
of the same version as the venv's), and the venv's site-packages must be readable by it.
Otherwise the tests skip and say why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

from tests.helpers import python_for_other_users

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                                reason="needs root and setpriv to start a process as nobody")


@pytest.fixture(scope="module")
def tree() -> Iterator[str]:
    """A copy of what the unprivileged process imports and tests, readable by nobody."""
    base = tempfile.mkdtemp(prefix="revex-nobody-")
    os.chmod(base, 0o755)
    shutil.copytree(os.path.join(REPO, "revex"), os.path.join(base, "revex"))
    # the suite's own pytest settings, less what needs plugins `nobody` is not given
    with open(os.path.join(base, "pytest.ini"), "w") as f:
        f.write("[pytest]\nmarkers =\n    slow: long-running tests\n")
    os.makedirs(os.path.join(base, "tests", "runtime"))
    shutil.copy(os.path.join(REPO, "tests", "runtime", "conftest.py"),
                os.path.join(base, "tests", "runtime"))
    shutil.copytree(os.path.join(REPO, "tests", "runtime", "sandbox"),
                    os.path.join(base, "tests", "runtime", "sandbox"))
    for root, dirs, files in os.walk(base):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _as_nobody(tree: str, args: list[str], cwd: str,
               timeout: float = 240) -> subprocess.CompletedProcess[str]:
    # what `nobody` imports is shared into a world-readable dir: the checkout and its venv may
    # sit below a directory `nobody` cannot enter (a clone in a 0700 `mktemp -d` folder)
    with python_for_other_users(*_IMPORTS) as (python, shared):
        probe = _run(tree, [python, "-c", "import pytest, nsjail, sqlalchemy"], cwd, 60,
                     shared)
        if probe.returncode != 0:
            pytest.skip(f"nobody cannot import pytest, nsjail, sqlalchemy: "
                        f"{probe.stderr[-300:]}")
        return _run(tree, [python, *args], cwd, timeout, shared)


_IMPORTS = ("pytest", "nsjail", "sqlalchemy", "revex.runtime.runtime",
            "revex.runtime.sandbox.nsjail", "revex.runtime.sandbox.warm",
            "revex.runtime.sandbox.process")


def _run(tree: str, argv: list[str], cwd: str, timeout: float,
         shared: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{tree}:{shared}",
           "PYTHONDONTWRITEBYTECODE": "1", "HOME": "/tmp", "LANG": "C.UTF-8"}
    return subprocess.run(
        ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups", *argv],
        capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env, check=False)


ESCAPES = ("secret or outside or loopback or seccomp or clone3 or unprivileged or daemon "
           "or fork_bomb")


def test_escape_cases_hold_as_nobody(tree: str) -> None:
    out = _as_nobody(tree, ["-m", "pytest", "-q", "-p", "no:cacheprovider",
                            "tests/runtime/sandbox/test_sandbox_nsjail.py",
                            "-k", f"cold and ({ESCAPES})"], cwd=tree)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "failed" not in out.stdout
    passed = int(out.stdout.rsplit(" passed", 1)[0].split()[-1])
    assert passed >= 14, out.stdout[-500:]


def test_forged_statuses_and_hidden_paths_hold_as_nobody(tree: str) -> None:
    out = _as_nobody(tree, ["-m", "pytest", "-q", "-p", "no:cacheprovider",
                            "tests/runtime/sandbox/test_cold_hardening.py", "-k",
                            "nsjail_looking or memory_error_text or exit_code_above "
                            "or mountinfo or missing_program"], cwd=tree)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "5 passed" in out.stdout, out.stdout[-500:]


OVERLAY_EPISODE = """
import json, os, sys
from revex import Runtime
from revex.runtime.sandbox import _common
from revex.runtime.sandbox._lifetime import owner_tag

base = sys.argv[1]
ws = os.path.join(base, "ws")
os.mkdir(ws, 0o755)
with open(os.path.join(ws, "a.txt"), "w") as f:
    f.write("a")
with Runtime(state_dir=os.path.join(base, "state")) as rt:
    with rt.episode(workspace=ws, on_exit="commit") as ep:
        r = ep.run(code="import os\\n"
                        "print(' overlay ' in open('/proc/self/mountinfo').read())\\n"
                        "open('b.txt', 'w').write('b')\\n"
                        "os.mkdir('d')\\n"
                        "open('d/c.txt', 'w').write('c')")
mine = [n for n in os.listdir(_common.runs_root()) if n.startswith(f"revex-{owner_tag()}-")]
print(json.dumps({"status": str(r.status), "stdout": r.stdout, "stderr": r.stderr,
                  "applied": r.changes_applied, "euid": os.geteuid(),
                  "b": open(os.path.join(ws, "b.txt")).read(),
                  "c": open(os.path.join(ws, "d", "c.txt")).read(), "left": mine}))
"""


def test_overlay_run_as_nobody_applies_and_leaves_nothing(tree: str) -> None:
    base = tempfile.mkdtemp(prefix="revex-nobody-ws-")
    try:
        os.chmod(base, 0o755)
        os.chown(base, NOBODY, NOBODY)
        out = _as_nobody(tree, ["-c", OVERLAY_EPISODE, base], cwd=base)
        assert out.returncode == 0, out.stderr[-3000:]
        got = json.loads(out.stdout.strip().splitlines()[-1])
        assert got["euid"] == NOBODY and got["status"] == "ok", got
        assert got["stdout"].strip() == "True", got  # the run really went through overlayfs
        assert got["applied"] is True and got["b"] == "b" and got["c"] == "c"
        assert got["left"] == []  # the run dir (with overlayfs's mode-000 work/work) is gone
    finally:
        shutil.rmtree(base, ignore_errors=True)
