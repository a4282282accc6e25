"""The runs_per_minute quota: code runs of one episode in a rolling minute, refused as rule
`quota`, journaled DENIED, and shown as such in the audit view."""

from __future__ import annotations

from pathlib import Path

import pytest

from revex import PolicyViolation, Runtime
from revex.policies.model import Policy
from revex.runtime.journal import Status
from revex.service.audit_view import episode_view

POLICY = """
[policy]
name = "rated"
default = "allow"
[quotas]
runs_per_minute = 2
"""


def test_runs_beyond_the_rate_are_refused_as_quota(tmp_path: Path) -> None:
    with Runtime(state_dir=tmp_path / "s", policy=Policy.from_toml(POLICY), audit=None) as rt:
        with rt.episode(tmp_path / "ws") as ep:
            assert ep.run("print(1)").stdout == "1\n"
            ep.run_tests("def f():\n    return 1\n", "assert f() == 1\n", "f")
            with pytest.raises(PolicyViolation, match="runs_per_minute: 3 > 2") as info:
                ep.run("print(3)")
            assert info.value.rule == "quota"
            ep.fs.write_text("still.txt", "file actions are not runs")
            ep_id = ep.id
        denied = [(r.kind, r.rule) for r in rt.journal.records(ep_id)
                  if r.status is Status.DENIED]
        assert denied == [("exec.run", "quota")]
        view = episode_view(rt, ep_id)
        assert view is not None and view.counts["denied"] == 1
        with rt.episode(tmp_path / "ws2") as other:  # the rate is per episode
            assert other.run("print(4)").stdout == "4\n"
