"""A run's change set is hostile input: what the host refuses to apply, and how it says so.

Every episode test runs on three paths: the cold nsjail backend in copy mode (workspace owned by
root) and in overlay mode (workspace owned by the jail user 65534), and the default Runtime's warm
backend, which hands runs with a workspace to its cold backend (copy mode here). Each refused
change set must leave the workspace untouched, be journaled DENIED, be listed in
``changes_refused``, and still return the run's result.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from revex import Limits, Policy, PolicyViolation, Runtime
from revex.demo import tree_digest
from revex.runtime.journal import Record, Status
from revex.runtime.sandbox.base import ExecSpec
from revex.runtime.sandbox.nsjail import NsjailBackend

JAIL_UID = 65534


@dataclass
class Setup:
    rt: Runtime
    ws: Path
    base: Path
    path: str


def _chown_tree(root: Path, uid: int) -> None:
    os.lchown(root, uid, uid)
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            os.lchown(os.path.join(base, name), uid, uid)


@pytest.fixture
def base() -> Iterator[Path]:
    path = tempfile.mkdtemp(prefix="revex-hostile-")
    os.chmod(path, 0o755)  # the jail user must be able to traverse to the workspace
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


def _setup(base: Path, path: str, policy: str | Policy = "default") -> Setup:
    ws = base / "ws"
    ws.mkdir(exist_ok=True)
    (ws / "keep.txt").write_text("keep")
    if path == "overlay":
        _chown_tree(ws, JAIL_UID)
    sandbox = None if path == "warm" else "nsjail"
    rt = Runtime(state_dir=base / "state", policy=policy, audit=None, sandbox=sandbox)
    assert rt.backend.name == ("nsjail-warm" if path == "warm" else "nsjail")
    return Setup(rt, ws, base, path)


@pytest.fixture(params=["copy", "overlay", "warm"])
def setup(request: pytest.FixtureRequest, base: Path) -> Iterator[Setup]:
    s = _setup(base, request.param)
    yield s
    s.rt.close()


def _denied(rt: Runtime, episode_id: str) -> list[Record]:
    return [r for r in rt.journal.records(episode_id) if r.status is Status.DENIED]


def _run_refused(s: Setup, code: str, limits: Limits | None = None) -> tuple[list[str],
                                                                            list[Record]]:
    """Run ``code`` in a committed episode; assert the result came back with its change set
    refused and nothing applied. Returns (changes_refused, DENIED records)."""
    before = tree_digest(s.ws)
    with s.rt.episode(workspace=s.ws, on_exit="commit") as ep:
        result = ep.run(code=code, limits=limits or Limits(wall_s=30))
        assert result.status == "ok", result.stderr
        assert result.changes_applied is False
        run = [r for r in s.rt.journal.records(ep.id) if r.kind == "exec.run"]
        assert run and run[-1].status is Status.DONE  # the run itself is journaled
        denied = _denied(s.rt, ep.id)
    assert tree_digest(s.ws) == before
    assert result.changes_refused
    return result.changes_refused, denied


# ---- item 1: setuid, setgid and sticky bits; mode 0 --------------------------------------------

SETUID = """
import os, shutil
shutil.copy('/usr/bin/id', 'id')
os.chmod('id', 0o4755)
open('fine.txt', 'w').write('fine')
"""


def test_setuid_file_from_a_run_never_reaches_the_host(setup: Setup) -> None:
    refused, denied = _run_refused(setup, SETUID)
    assert not (setup.ws / "id").exists() and not (setup.ws / "fine.txt").exists()
    assert any(line.startswith("id:") and "setuid" in line for line in refused)
    assert [(r.kind, r.target, r.rule) for r in denied] == [("fs.write", "id", "path-safety")]


@pytest.mark.parametrize("code", [
    "import os\nos.mkdir('g')\nos.chmod('g', 0o2775)\n",
    "import os\nos.mkdir('t')\nos.chmod('t', 0o1777)\n",
    "import os\nopen('s', 'w').close()\nos.chmod('s', 0o2755)\n",
], ids=["setgid-dir", "sticky-dir", "setgid-file"])
def test_setgid_and_sticky_bits_from_a_run_are_refused(setup: Setup, code: str) -> None:
    refused, denied = _run_refused(setup, code)
    assert len(refused) == 1 and "setgid" in refused[0]
    assert [r.rule for r in denied] == ["path-safety"]


def test_a_setgid_bit_inherited_from_the_workspace_is_not_refused(setup: Setup) -> None:
    os.chmod(setup.ws, 0o2755)  # a group-shared workspace: new directories inherit setgid
    with setup.rt.episode(workspace=setup.ws, on_exit="commit") as ep:
        result = ep.run(code="import os\nos.makedirs('a/b')\nos.chmod('a/b', 0o750)\n",
                        limits=Limits(wall_s=30))
        assert result.changes_applied is True, result.changes_refused
    a, b = (os.lstat(setup.ws / p).st_mode for p in ("a", "a/b"))
    assert (stat.S_IMODE(a) & 0o777, stat.S_IMODE(b) & 0o777) == (0o755, 0o750)
    if setup.path != "overlay":  # an overlay's root has the upper's mode: nothing inherited
        assert a & stat.S_ISGID


def test_mode_zero_is_applied_as_zero(setup: Setup) -> None:
    code = ("import os\nopen('z', 'w').write('z')\nos.chmod('z', 0)\n"
            "os.mkdir('d0')\nos.chmod('d0', 0)\n")
    with setup.rt.episode(workspace=setup.ws, on_exit="commit") as ep:
        result = ep.run(code=code, limits=Limits(wall_s=30))
        assert result.changes_applied is True, result.changes_refused
    assert stat.S_IMODE(os.lstat(setup.ws / "z").st_mode) == 0
    assert stat.S_IMODE(os.lstat(setup.ws / "d0").st_mode) == 0
    assert (setup.ws / "z").read_text() == "z"  # root may still read it


def test_fs_api_refuses_special_mode_bits_and_keeps_mode_zero(base: Path) -> None:
    s = _setup(base, "copy")
    with s.rt, s.rt.episode(workspace=s.ws, on_exit="commit") as ep:
        ep.fs.write_text("x", "x")
        for call in (lambda: ep.fs.chmod("x", 0o4755),
                     lambda: ep.fs.write_text("y", "y", mode=0o2755),
                     lambda: ep.fs.mkdir("d", 0o1777)):
            with pytest.raises(PolicyViolation) as info:
                call()
            assert info.value.rule == "path-safety" and "setuid" in str(info.value)
        ep.fs.write_text("zero", "0", mode=0)
        (s.ws / "suid").write_bytes(b"host file")
        os.chmod(s.ws / "suid", 0o4755)
        ep.fs.copy("suid", "copied")  # like cp: the copy drops the bit
        denied = _denied(s.rt, ep.id)
    assert [(r.kind, r.rule) for r in denied] == [
        ("fs.chmod", "path-safety"), ("fs.write", "path-safety"), ("fs.mkdir", "path-safety")]
    assert stat.S_IMODE(os.lstat(s.ws / "x").st_mode) & 0o7000 == 0
    assert not (s.ws / "y").exists() and not (s.ws / "d").exists()
    assert stat.S_IMODE(os.lstat(s.ws / "zero").st_mode) == 0
    assert stat.S_IMODE(os.lstat(s.ws / "copied").st_mode) == 0o755


# ---- item 3: FIFOs, sockets, devices, names that are not UTF-8 ---------------------------------

@pytest.mark.parametrize(("code", "what"), [
    ("import os\nos.mkfifo('f')\n", "FIFO"),
    ("import socket\ns = socket.socket(socket.AF_UNIX)\ns.bind('sock')\n", "socket"),
    ("open(b'bad\\xff.txt', 'w').write('x')\n", "UTF-8"),
    ("import os, stat\nos.mknod('w', stat.S_IFCHR | 0o600, os.makedev(0, 0))\n", "device"),
], ids=["fifo", "socket", "non-utf8-name", "whiteout-device"])
def test_special_files_and_bad_names_are_refused_and_the_result_returned(
        setup: Setup, code: str, what: str) -> None:
    if what == "device" and setup.path == "overlay":
        pytest.skip("overlayfs refuses mknod to the jail user (EPERM): nothing to refuse")
    refused, denied = _run_refused(setup, code + "open('ok.txt', 'w').write('ok')\n")
    assert not (setup.ws / "ok.txt").exists()
    assert len(refused) == 1 and what in refused[0], refused
    assert str(setup.base) not in refused[0]  # no host path in what the caller is told
    assert [r.rule for r in denied] == ["path-safety"]
    if what == "UTF-8":
        assert denied[0].target == "bad\\xff.txt"


# ---- item 4: size limits, quotas, sparse files -------------------------------------------------

FLOOD = "import os\nos.mkdir('flood')\nfor i in range(300): open(f'flood/{i}', 'w').write('x')\n"


def test_a_change_set_over_the_file_limit_is_refused_whole(setup: Setup) -> None:
    refused, denied = _run_refused(setup, FLOOD, Limits(wall_s=30, changed_files=50))
    assert not (setup.ws / "flood").exists()
    assert len(refused) == 1 and "changed_files" in refused[0] and "50" in refused[0]
    assert [(r.kind, r.rule) for r in denied] == [("exec.changes", "change-limit")]


def test_a_file_flood_is_refused_at_the_default_limit(setup: Setup) -> None:
    code = ("import os\nos.mkdir('flood')\n"
            "for i in range(10_050): open(f'flood/{i}', 'w').close()\n")
    refused, denied = _run_refused(setup, code, Limits(wall_s=60))
    assert len(refused) == 1 and "changed_files" in refused[0] and "10000" in refused[0]
    assert [r.rule for r in denied] == ["change-limit"]


def test_a_change_set_over_the_byte_limit_is_refused_whole(setup: Setup) -> None:
    code = "for i in range(3): open(f'big{i}', 'wb').write(b'x' * 500_000)\n"
    refused, denied = _run_refused(setup, code, Limits(wall_s=30, changed_mb=1))
    assert len(refused) == 1 and "changed_mb" in refused[0]
    assert [r.rule for r in denied] == ["change-limit"]


def test_reading_stops_as_soon_as_the_limit_is_exceeded(open_dir: str,
                                                        nsjail: NsjailBackend) -> None:
    ws = os.path.join(open_dir, "ws")
    os.mkdir(ws, 0o755)
    for owner in (JAIL_UID, 0):  # overlay, then copy mode
        os.chown(ws, owner, owner)
        with nsjail.run(ExecSpec(code=FLOOD, workspace=ws,
                                 limits=Limits(wall_s=30, changed_files=20))) as r:
            assert r.ok, r.stderr
            assert len(r.changes) == 21  # 20 read, then one refusal for the whole set
            assert r.changes[-1].kind == "refused" and "changed_files" in (
                r.changes[-1].target or "")


def test_the_whole_change_set_is_checked_against_the_quota_first(base: Path) -> None:
    policy = Policy.from_toml("""
[policy]
name = "small"
default = "allow"
[quotas]
actions = 40
""")
    for path in ("copy", "overlay"):
        sub = base / path
        sub.mkdir(mode=0o755)
        s = _setup(sub, path, policy)
        with s.rt, s.rt.episode(workspace=s.ws, on_exit="commit") as ep:
            result = ep.run(code=FLOOD, limits=Limits(wall_s=30))
            assert result.status == "ok" and result.changes_applied is False
            assert len(result.changes_refused) == 1
            assert "quota" in result.changes_refused[0] and "actions" in result.changes_refused[0]
            assert not (s.ws / "flood").exists()
            assert [(r.kind, r.rule) for r in _denied(s.rt, ep.id)] == [("exec.changes", "quota")]
            # nothing was charged for the refused set: the episode can still act
            ep.fs.write_text("after.txt", "the quota is not used up")
        assert (s.ws / "after.txt").exists()


def test_sparse_files_keep_their_holes(setup: Setup) -> None:
    probe = setup.base / "probe"
    with open(probe, "wb") as f:
        f.truncate(32 << 20)
    if os.stat(probe).st_blocks * 512 > 1 << 20:
        pytest.skip("the file system under the test directory does not keep holes")
    code = ("f = open('sparse', 'wb')\nf.write(b'head')\nf.seek(32 << 20)\nf.write(b'tail')\n"
            "f.close()\n")
    with setup.rt.episode(workspace=setup.ws, on_exit="commit") as ep:
        result = ep.run(code=code, limits=Limits(wall_s=30))
        assert result.changes_applied is True, result.changes_refused
    st = os.stat(setup.ws / "sparse")
    assert st.st_size == (32 << 20) + 4
    assert st.st_blocks * 512 < 1 << 20, "the holes were written out densely"
    with open(setup.ws / "sparse", "rb") as f:
        assert f.read(4) == b"head"
        f.seek(32 << 20)
        assert f.read() == b"tail"


# ---- item 5: symlink chains --------------------------------------------------------------------

CHAIN = "import os\nos.symlink('.', 'l1')\nos.symlink('l1/..', 'up')\nos.symlink('up/x', 'leak')\n"


def test_symlink_chains_from_a_run_are_refused(setup: Setup) -> None:
    refused, denied = _run_refused(setup, CHAIN)
    assert not os.path.lexists(setup.ws / "leak")
    assert [line.split(":")[0] for line in refused] == ["up"]
    assert [(r.kind, r.target, r.rule) for r in denied] == [("fs.symlink", "up", "path-safety")]


def _inside(ws: Path, link: Path) -> bool:
    real = os.path.realpath(link)
    return real == str(ws) or real.startswith(str(ws) + os.sep)


def test_symlink_chains_through_the_api_are_refused_in_any_order(base: Path) -> None:
    s = _setup(base, "copy")
    (base / "x").write_text("host file beside the workspace")
    with s.rt, s.rt.episode(workspace=s.ws, on_exit="commit") as ep:
        ep.fs.symlink("leak", "up/x")  # its target does not exist yet
        ep.fs.symlink("l1", ".")
        with pytest.raises(PolicyViolation) as info:
            ep.fs.symlink("up", "l1/..")
        assert info.value.rule == "path-safety"
        # a '..' after a name that does not exist yet: meaning decided later, refused now
        with pytest.raises(PolicyViolation):
            ep.fs.symlink("later", "missing/../..")
        # through a symlink the host put there itself (not made through revex)
        os.symlink("../..", s.ws / "hostlink")
        with pytest.raises(PolicyViolation):
            ep.fs.symlink("via", "hostlink/x")
        ep.fs.mkdir("a/b", parents=True)
        ep.fs.symlink("a/b/ok", "../../keep.txt")
        with pytest.raises(PolicyViolation):  # moved up, the same target would climb out
            ep.fs.rename("a/b", "b")
        assert [r.target for r in _denied(s.rt, ep.id)] == ["up", "later", "via", "a/b -> b"]
    for link in ("leak", "l1", "a/b/ok"):
        assert _inside(s.ws, s.ws / link), link
    assert (s.ws / "a/b/ok").read_text() == "keep"


def test_a_host_symlink_replaced_by_a_directory_is_applied(setup: Setup) -> None:
    (setup.ws / "sub").mkdir()
    os.symlink("sub", setup.ws / "a")
    if setup.path == "overlay":
        _chown_tree(setup.ws, JAIL_UID)
    code = "import os\nos.remove('a')\nos.mkdir('a')\nopen('a/x', 'w').write('x')\n"
    with setup.rt.episode(workspace=setup.ws, on_exit="commit") as ep:
        result = ep.run(code=code, limits=Limits(wall_s=30))
        assert result.changes_applied is True, result.changes_refused
    assert not os.path.islink(setup.ws / "a") and (setup.ws / "a" / "x").read_text() == "x"


# ---- item 6: deep trees ------------------------------------------------------------------------

DEEP = "import os\nfor _ in range(2000):\n    os.mkdir('d')\n    os.chdir('d')\n"


def test_a_deep_tree_is_refused_journaled_and_its_run_dir_removed(
        setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    # run directories of this test only: a private temp root, so others' runs are not counted
    tmp_root = setup.base / "tmp"
    tmp_root.mkdir(mode=0o755)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_root))
    refused, denied = _run_refused(setup, DEEP, Limits(wall_s=60))  # default depth cap
    assert len(refused) == 1 and "changed_depth" in refused[0]
    assert [r.rule for r in denied] == ["change-limit"]
    runs = [p for p in tmp_root.iterdir() if p.name.startswith("revex-sandbox-")]
    assert runs and all(not any(r.iterdir()) for r in runs), "a run directory was left behind"


# ---- item 4: a large change set is journaled in batches, and survives a crash in one ----------

def test_a_large_change_set_is_journaled_in_batches_and_rolled_back_exactly(
        setup: Setup) -> None:
    from revex.runtime import execution

    before = tree_digest(setup.ws)
    with setup.rt.episode(workspace=setup.ws) as ep:
        result = ep.run(code=FLOOD, limits=Limits(wall_s=30))
        assert result.changes_applied is True, result.changes_refused
        assert len(os.listdir(setup.ws / "flood")) == 300
        records = setup.rt.journal.records(ep.id)
        writes = [r for r in records if r.kind == "fs.write"]
        intents = [r for r in writes if r.status is Status.INTENT]
        assert len(intents) == 300 and all(r.params["source"] == "exec#1" for r in intents)
        first_outcome = min(r.seq for r in writes if r.status is Status.DONE)
        # the INTENTs of the first group are all durable before the first outcome
        grouped = sum(r.seq < first_outcome for r in intents)
        assert grouped > 1, "INTENT and outcome alternate: two durable writes per file"
        assert grouped == execution.BATCH
    assert tree_digest(setup.ws) == before


CRASH_CHILD = r"""
import os, sys, threading, time
from revex import Limits, Runtime

state, ws, code = sys.argv[1:4]

def kill_midway() -> None:
    # a real crash (no cleanup, no atexit) once part of the first group is applied
    while True:
        try:
            if sum(not n.startswith(".") for n in os.listdir(os.path.join(ws, "flood"))) >= 60:
                os._exit(9)
        except FileNotFoundError:
            pass
        time.sleep(0.0005)

rt = Runtime(state, audit=None, sandbox="nsjail")
ep = rt.episode(ws, on_exit="commit")
threading.Thread(target=kill_midway, daemon=True).start()
ep.run(code=code, limits=Limits(wall_s=60))
print("finished", flush=True)
"""


def test_a_crash_in_the_middle_of_a_batch_is_recovered_exactly(base: Path) -> None:
    import subprocess
    import sys

    ws = base / "ws"
    ws.mkdir()
    (ws / "keep.txt").write_text("keep")
    before = tree_digest(ws)
    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get(
        "PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", CRASH_CHILD, str(base / "state"), str(ws), FLOOD],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 9, (out.stdout, out.stderr)
    assert os.path.isdir(ws / "flood")  # it died with part of the set applied
    with Runtime(base / "state", audit=None, recover=False) as rt:
        (info,) = rt.episodes()
        records = rt.journal.records(info.id)
        outcomes = {r.refers_to for r in records if r.status is not Status.INTENT}
        open_intents = [r for r in records if r.status is Status.INTENT and r.kind == "fs.write"
                        and r.seq not in outcomes]
        assert len(open_intents) >= 60  # durable before their effects, still without outcome
    with Runtime(base / "state", audit=None) as rt:  # recovery
        assert [e.status for e in rt.episodes()] == ["recovered"]
        assert rt.verify().ok
    assert tree_digest(ws) == before
