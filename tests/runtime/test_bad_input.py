"""Bad input gets a clear RevexError subclass and leaves the journal intact: malformed paths,
unusable state directories, damaged or future journals, malformed policies."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from revex import PolicyError, Runtime, StateError
from revex.errors import InvalidPath, JournalCorrupt, JournalFormatError
from revex.runtime.journal import Status
from tests.helpers import python_for_other_users


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[Runtime]:
    runtime = Runtime(tmp_path / "state", audit=None)
    yield runtime
    runtime.close()


BAD_PATHS: list[Any] = [
    "",
    "   ",
    "a\x00b",
    "dir/\x00",
    "caf\udce9.txt",              # a surrogate escape: undecodable bytes from os.fsdecode
    os.fsdecode(b"\xff\xfe.txt"),
    b"bytes.txt",
    b"\xff.txt",
    Path("ok") / "nul\x00",
]


@pytest.mark.parametrize("path", BAD_PATHS, ids=repr)
@pytest.mark.parametrize("op", ["write_text", "read_text", "append", "delete", "mkdir",
                                "chmod", "exists", "rename_src", "rename_dst", "symlink"])
def test_malformed_path_raises_invalid_path_and_journal_stays_intact(
        rt: Runtime, tmp_path: Path, path: Any, op: str) -> None:
    calls = {
        "write_text": lambda ep: ep.fs.write_text(path, "x"),
        "read_text": lambda ep: ep.fs.read_text(path),
        "append": lambda ep: ep.fs.append(path, "x"),
        "delete": lambda ep: ep.fs.delete(path),
        "mkdir": lambda ep: ep.fs.mkdir(path),
        "chmod": lambda ep: ep.fs.chmod(path, 0o600),
        "exists": lambda ep: ep.fs.exists(path),
        "rename_src": lambda ep: ep.fs.rename(path, "b"),
        "rename_dst": lambda ep: ep.fs.rename("a", path),
        "symlink": lambda ep: ep.fs.symlink(path, "a"),
    }
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a").write_text("a")
    with rt.episode(ws) as ep:
        before = len(rt.journal.records())
        with pytest.raises(InvalidPath) as info:
            calls[op](ep)
        assert "path" in str(info.value)
        # no partial records: nothing journaled for the malformed call
        assert len(rt.journal.records()) == before
        # the episode still works afterwards
        ep.fs.write_text("after.txt", "ok")
    assert rt.verify().ok
    assert sorted(os.listdir(ws)) == ["a"]
    statuses = {r.status for r in rt.journal.records()}
    assert Status.INTENT in statuses and Status.DENIED not in statuses


def test_state_dir_that_is_a_file_raises_state_error(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.write_text("not a dir")
    with pytest.raises(StateError, match="not a directory"):
        Runtime(state, audit=None)


def test_state_dir_below_a_regular_file_raises_state_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StateError, match="state dir"):
        Runtime(tmp_path / "file" / "state", audit=None)


def test_unwritable_state_dir_raises_state_error_for_an_unprivileged_user(
        tmp_path: Path) -> None:
    # root ignores permission bits, so the check runs as `nobody` (setpriv) when we are root
    # pytest's tmp_path sits below a 0700 directory `nobody` cannot enter
    base = Path(tempfile.mkdtemp(prefix="revex-perm-"))
    os.chmod(base, 0o755)
    state = base / "state"
    state.mkdir()
    os.chmod(state, 0o555)
    script = ("import sys, revex\nfrom revex import Runtime, StateError\n"
              "assert revex.__file__.startswith(sys.argv[2]), revex.__file__\n"
              "try:\n    Runtime(sys.argv[1], audit=None)\n"
              "except StateError as e:\n    print('StateError:', e)\n")
    # `nobody` gets a world-readable copy of what it imports: the checkout (and a virtualenv in
    # it) may sit below a directory it cannot enter, such as a clone in a `mktemp -d` folder
    with python_for_other_users("revex", "revex.runtime.runtime") as (python, path):
        cmd = [python, "-s", "-c", script, str(state), path]
        if os.geteuid() == 0:
            if not Path("/usr/bin/setpriv").exists():
                pytest.skip("running as root without setpriv: permissions do not bind for root")
            cmd = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
        env = {"PYTHONPATH": path, "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, cwd=path)
    assert "StateError:" in out.stdout, out.stderr
    assert "not writable" in out.stdout
    shutil.rmtree(base)


def _journal_with_records(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    rt = Runtime(state, audit=None)
    with rt.episode(tmp_path / "ws") as ep:
        ep.fs.write_text("a.txt", "a")
    rt.close()
    return state


def test_garbage_journal_raises_journal_corrupt(tmp_path: Path) -> None:
    state = _journal_with_records(tmp_path)
    for suffix in ("-wal", "-shm"):
        (state / f"journal.db{suffix}").unlink(missing_ok=True)
    (state / "journal.db").write_bytes(os.urandom(8192))
    with pytest.raises(JournalCorrupt, match="journal"):
        Runtime(state, audit=None)


def test_journal_from_a_newer_format_raises_journal_format_error(tmp_path: Path) -> None:
    state = _journal_with_records(tmp_path)
    db = sqlite3.connect(state / "journal.db")
    db.execute("UPDATE meta SET value='99' WHERE key='format'")
    db.commit()
    db.close()
    with pytest.raises(JournalFormatError, match="99"):
        Runtime(state, audit=None)


def _policy(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


GOOD_HEAD = '[policy]\nname = "p"\ndefault = "deny"\n\n'


def test_policy_that_is_not_toml_names_file_and_line(tmp_path: Path) -> None:
    path = _policy(tmp_path, GOOD_HEAD + "[[rules]]\nname = \"r\"\ndecision = allow\n")
    with pytest.raises(PolicyError) as info:
        Runtime(tmp_path / "state", policy=path, audit=None)
    assert str(path) in str(info.value)
    assert "line 7" in str(info.value)


def test_policy_with_an_unknown_field_names_file_line_and_field(tmp_path: Path) -> None:
    text = GOOD_HEAD + '[[rules]]\nname = "r"\ndecision = "allow"\npaht = "**"\n'
    path = _policy(tmp_path, text)
    with pytest.raises(PolicyError) as info:
        Runtime(tmp_path / "state", policy=path, audit=None)
    msg = str(info.value)
    assert f"{path}:8" in msg and "rules.0.paht" in msg


def test_policy_with_a_wrong_type_names_file_line_and_field(tmp_path: Path) -> None:
    text = GOOD_HEAD + "[quotas]\nactions = \"many\"\n"
    path = _policy(tmp_path, text)
    with pytest.raises(PolicyError) as info:
        Runtime(tmp_path / "state", policy=path, audit=None)
    msg = str(info.value)
    assert f"{path}:6" in msg and "quotas.actions" in msg


def test_unknown_preset_name_lists_the_presets(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        Runtime(tmp_path / "state", policy="no-such-preset", audit=None)
    assert "no-such-preset" in str(info.value) and "default" in str(info.value)
