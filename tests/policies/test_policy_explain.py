"""Policy explain: the decision it reports is check's, every matching rule is listed in order,
failing conditions are named; `revex policy check/explain/presets`; the README's preset table
is the generated one."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from revex.policies.engine import PolicyEngine, rule_matches
from revex.policies.explain import preset_table
from revex.policies.model import Policy

PRESETS = ("default", "strict", "permissive", "training")
ROOT = Path(__file__).resolve().parents[2]

actions = st.fixed_dictionaries({
    "kind": st.sampled_from(["fs.write", "fs.read", "exec.run", "exec.tests", "sql.execute",
                             "http.request"]),
}, optional={
    "path": st.sampled_from(["a.py", "out/x", "tmp", "src/deep/b.txt"]),
    "statement": st.sampled_from(["update", "delete", "insert", "drop database", "unknown"]),
    "where": st.booleans(),
    "network": st.booleans(),
    "irreversible": st.booleans(),
    "wall_s": st.floats(min_value=0.1, max_value=120),
    "memory_mb": st.integers(min_value=1, max_value=4096),
})


@settings(max_examples=200, deadline=None)
@given(preset=st.sampled_from(PRESETS), attrs=actions)
def test_explain_agrees_with_check_and_lists_every_match(preset: str, attrs: dict) -> None:
    policy = Policy.load(preset)
    engine = PolicyEngine(policy)
    decision = engine.check(attrs)
    explanation = engine.explain(attrs)
    assert (explanation.decision, explanation.rule) == (decision.decision, decision.rule)
    assert explanation.matched == [r.name for r in policy.rules if rule_matches(r, attrs)]
    for trace in explanation.trace:
        assert trace.matched == (trace.why_not == "")


def test_explain_names_the_condition_that_failed() -> None:
    exp = PolicyEngine(Policy.load("strict")).explain({"kind": "fs.write", "path": "src/a.py"})
    assert exp.rule == "strict:default" and exp.decision == "deny"
    [write] = [t for t in exp.trace if t.rule == "write-scratch"]
    assert write.why_not.startswith("path = ['out/**'") and "'src/a.py'" in write.why_not


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "revex.cli", *args], capture_output=True,
                          text=True, timeout=120)


def test_policy_commands(tmp_path: Path) -> None:
    out = _cli("policy", "explain", json.dumps({"kind": "sql.execute", "statement": "update",
                                                "where": False}))
    assert out.returncode == 0
    assert out.stdout.splitlines()[0].startswith("decision: approve by sql-unbounded-write")
    assert "MATCH sql -> allow" in out.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[policy]\nname = "x"\n[[rules]]\nname = "r"\ndecision = "maybe"\n')
    out = _cli("policy", "check", str(bad))
    assert out.returncode == 2 and f"{bad}:5" in out.stderr and "Traceback" not in out.stderr
    good = ROOT / "revex/policies/presets/training.toml"
    assert "ok: policy 'training'" in _cli("policy", "check", str(good)).stdout
    out = _cli("policy", "explain", "not json")
    assert out.returncode == 2 and "not JSON" in out.stderr


def test_readme_preset_table_is_the_generated_one() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- presets:begin -->\n(.*?)\n<!-- presets:end -->", readme, re.S)
    assert block is not None, "README.md lost its preset table markers"
    assert block.group(1) == preset_table(), "run `revex policy presets` and paste the table"
