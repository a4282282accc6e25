"""What crosses back from a pool worker is checked plain data: anything else is refused with a
SandboxError naming the field, and the executor choice is validated. No Ray needed."""

from __future__ import annotations

import json
import pickle

import pytest

from revex.errors import ConfigError, SandboxError
from revex.runtime.pool import LocalPool, make_pool, result_from_wire, result_to_wire
from revex.runtime.sandbox import run_many
from revex.runtime.sandbox.base import ExecResult, ExecStatus, FileChange, Limits, make_spec
from revex.runtime.sandbox.nsjail import NsjailBackend

SPEC = make_spec("print(1)", limits=Limits(output_bytes=100))


def _good() -> dict[str, object]:
    return json.loads(result_to_wire(ExecResult(status=ExecStatus.OK, exit_code=0,
                                                stdout="1\n", backend="nsjail", wall_s=0.1)))


def test_a_plain_result_round_trips() -> None:
    r = result_from_wire(json.dumps(_good()), SPEC)
    assert (r.status, r.exit_code, r.stdout, r.backend, r.wall_s) == (
        ExecStatus.OK, 0, "1\n", "nsjail", 0.1)
    assert r.changes == [] and r.upper_dir is None


@pytest.mark.parametrize("field, value, why", [
    ("status", "root", "unknown status"),
    ("exit_code", "0", "exit_code"),
    ("exit_code", 1.5, "exit_code"),
    ("signal", True, "signal"),
    ("stdout", {"__class__": "os.system"}, "stdout"),
    ("stdout", "x" * 10_000, "stdout"),
    ("wall_s", "1", "wall_s"),
    ("weak_isolation", 0, "weak_isolation"),
])
def test_a_wrong_field_is_refused(field: str, value: object, why: str) -> None:
    data = _good()
    data[field] = value
    with pytest.raises(SandboxError, match=why):
        result_from_wire(json.dumps(data), SPEC)


def test_extra_fields_pickles_and_non_json_are_refused() -> None:
    data = _good()
    data["upper_dir"] = "/etc"
    with pytest.raises(SandboxError, match="upper_dir"):
        result_from_wire(json.dumps(data), SPEC)
    with pytest.raises(SandboxError, match="not a JSON string"):
        result_from_wire(pickle.dumps(ExecResult(status=ExecStatus.OK)), SPEC)
    with pytest.raises(SandboxError, match="malformed JSON"):
        result_from_wire("{", SPEC)


def test_a_change_set_never_leaves_its_node() -> None:
    r = ExecResult(status=ExecStatus.OK, changes=[FileChange(path="a", kind="file")])
    with pytest.raises(SandboxError, match="stay local"):
        result_to_wire(r)


def test_executor_choice_is_validated() -> None:
    with pytest.raises(ConfigError, match="unknown executor"):
        make_pool("spark", backend=NsjailBackend)
    assert isinstance(make_pool("local", backend=NsjailBackend), LocalPool)


def test_run_many_through_a_local_pool_keeps_order() -> None:
    specs = [make_spec(f"print({i})") for i in range(3)]
    results = run_many(specs, pool=LocalPool(NsjailBackend()))
    assert [r.stdout for r in results] == ["0\n", "1\n", "2\n"]
