"""Property: any sequence of ``ep.fs`` operations, rolled back to any checkpoint (or to the
start), leaves the workspace exactly as it was at that point: bytes, types, modes, symlink
targets and mtimes of every entry and of the root. An operation that fails (ActionFailed,
PolicyViolation) leaves the tree unchanged."""

from __future__ import annotations

import posixpath
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from revex import ActionFailed, PolicyViolation, Runtime
from tests.helpers import assert_same_tree, populate, snapshot_tree

# existing entries from `populate` plus names the episode may create (files or directories)
PATHS = ["a", "b", "d", "d/a", "d/b", "d/e", "d/e/a", "e", "e/a",
         "keep.txt", "exec.sh", "sub", "sub/inner.bin", "sub/deeper", "link"]
MODES = [0o600, 0o644, 0o640, 0o755, 0o700, 0o555]
LARGE = 3 * 1024 * 1024 + 17

path = st.sampled_from(PATHS)
size = st.sampled_from([0, 1, 100, 5000, 5000, 70_000, LARGE])  # a few large (3 MB) files

op = st.one_of(
    st.tuples(st.just("write"), path, size, st.sampled_from([None, None, 0o600, 0o755])),
    st.tuples(st.just("append"), path, st.sampled_from([1, 100, 70_000])),
    st.tuples(st.just("delete"), path),
    st.tuples(st.just("mkdir"), path, st.booleans()),
    st.tuples(st.just("rmdir"), path, st.booleans()),
    st.tuples(st.just("rename"), path, path),
    st.tuples(st.just("chmod"), path, st.sampled_from(MODES)),
    st.tuples(st.just("symlink"), path, path),
    st.tuples(st.just("copy"), path, path),
    st.tuples(st.just("checkpoint"),),
)
program = st.tuples(st.lists(op, min_size=1, max_size=25), st.integers(0, 1 << 30),
                    st.randoms(use_true_random=False))


def _data(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n)


def _apply(ep: Any, step: tuple[Any, ...], rng: random.Random) -> None:
    name = step[0]
    if name == "write":
        _, p, n, mode = step
        ep.fs.write_bytes(p, _data(rng, n), mode=mode)
    elif name == "append":
        ep.fs.append(step[1], _data(rng, step[2]))
    elif name == "delete":
        ep.fs.delete(step[1])
    elif name == "mkdir":
        ep.fs.mkdir(step[1], parents=step[2])
    elif name == "rmdir":
        ep.fs.rmdir(step[1], recursive=step[2])
    elif name == "rename":
        ep.fs.rename(step[1], step[2])
    elif name == "chmod":
        ep.fs.chmod(step[1], step[2])
    elif name == "symlink":
        link, target = step[1], step[2]
        # a relative target that stays inside the workspace, from the link's directory
        ep.fs.symlink(link, posixpath.relpath(target, posixpath.dirname(link) or "."))
    elif name == "copy":
        ep.fs.copy(step[1], step[2])
    else:  # pragma: no cover
        raise AssertionError(step)


def run_program(ops: list[tuple[Any, ...]], choice: int, rng: random.Random) -> None:
    base = Path(tempfile.mkdtemp(prefix="revex-prop-"))
    try:
        ws = base / "ws"
        populate(ws)
        rt = Runtime(base / "state", audit=None)
        try:
            start = snapshot_tree(ws)
            with rt.episode(ws) as ep:
                checkpoints: list[tuple[Any, dict[str, Any]]] = [(None, start)]
                current = start
                for step in ops:
                    if step[0] == "checkpoint":
                        checkpoints.append((ep.checkpoint(), current))
                        continue
                    try:
                        _apply(ep, step, rng)
                    except (ActionFailed, PolicyViolation):
                        after = snapshot_tree(ws)
                        assert_same_tree(current, after)  # a failed op changed nothing
                        continue
                    current = snapshot_tree(ws)
                cp, expected = checkpoints[choice % len(checkpoints)]
                ep.rollback(to=cp)
                assert_same_tree(expected, snapshot_tree(ws))
                # rolling back the rest (to the start) is exact as well
                ep.rollback()
                assert_same_tree(start, snapshot_tree(ws))
            assert_same_tree(start, snapshot_tree(ws))
            assert rt.verify().ok
        finally:
            rt.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                    HealthCheck.data_too_large])


@settings(max_examples=60, **COMMON)  # type: ignore[arg-type]
@given(program)
def test_random_fs_ops_roll_back_exactly_to_any_checkpoint(prog: Any) -> None:
    ops, choice, rng = prog
    run_program(ops, choice, rng)


@pytest.mark.slow
@settings(max_examples=600, **COMMON)  # type: ignore[arg-type]
@given(st.tuples(st.lists(op, min_size=1, max_size=60), st.integers(0, 1 << 30),
                 st.randoms(use_true_random=False)))
def test_random_fs_ops_roll_back_exactly_to_any_checkpoint_long(prog: Any) -> None:
    ops, choice, rng = prog
    run_program(ops, choice, rng)
