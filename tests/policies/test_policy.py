from __future__ import annotations

from pathlib import Path

import pytest

from revex import PolicyError
from revex.policies.engine import PolicyEngine, glob_match
from revex.policies.model import Decision, Policy, preset_names


def test_presets_load_and_validate() -> None:
    assert {"default", "permissive", "strict", "training"} <= set(preset_names())
    for name in preset_names():
        assert Policy.load(name).name == name


def test_first_matching_rule_wins_and_the_decision_names_it() -> None:
    policy = Policy.from_toml(
        """
[policy]
name = "t"
default = "allow"

[[rules]]
name = "no-secrets"
kind = "fs.*"
path = ["secrets/**", "**/*.key"]
decision = "deny"
reason = "secrets are off limits"

[[rules]]
name = "reads"
kind = "fs.read"
decision = "allow"
"""
    )
    engine = PolicyEngine(policy)
    denied = engine.check({"kind": "fs.read", "path": "secrets/a/b.txt"})
    assert (denied.decision, denied.rule, denied.reason) == (
        Decision.DENY, "no-secrets", "secrets are off limits")
    assert engine.check({"kind": "fs.write", "path": "deep/dir/id.key"}).rule == "no-secrets"
    assert engine.check({"kind": "fs.read", "path": "notes.txt"}).rule == "reads"
    fallback = engine.check({"kind": "fs.write", "path": "notes.txt"})
    assert fallback.decision is Decision.ALLOW and fallback.rule == "t:default"


def test_a_rule_does_not_match_an_action_lacking_its_attribute() -> None:
    policy = Policy.from_toml(
        '[policy]\nname="t"\ndefault="deny"\n[[rules]]\nname="p"\npath="**"\ndecision="allow"\n')
    assert PolicyEngine(policy).check({"kind": "sql.execute"}).decision is Decision.DENY


def test_globs_keep_single_star_within_one_directory() -> None:
    assert glob_match(["*.py"], "a.py")
    assert not glob_match(["*.py"], "pkg/a.py")
    assert glob_match(["**/*.py"], "pkg/sub/a.py")
    assert glob_match(["**/*.py"], "a.py")
    assert glob_match(["src/**"], ["src/a", "src/b/c"])
    assert not glob_match(["src/**"], ["src/a", "other/b"])


def test_ceilings_and_quotas() -> None:
    policy = Policy.from_toml(
        """
[policy]
name = "t"
[quotas]
actions = 2
bytes_written = 10
[[rules]]
name = "small-runs"
kind = "exec.run"
max_memory_mb = 512
decision = "allow"
""")
    engine = PolicyEngine(policy)
    assert engine.check({"kind": "exec.run", "memory_mb": 256}).decision is Decision.ALLOW
    assert engine.check({"kind": "exec.run", "memory_mb": 4096}).decision is Decision.DENY
    assert engine.over_quota({"actions": 1}, {"actions": 1}) is None
    assert engine.over_quota({"actions": 2}, {"actions": 1}) == "actions: 3 > 2"
    assert engine.over_quota({}, {"bytes_written": 11}) == "bytes_written: 11 > 10"


def test_an_unknown_field_names_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('[policy]\nname = "x"\n\n[[rules]]\nname = "a"\ndecision = "allow"\n\n'
                    '[[rules]]\nname = "b"\ndecison = "deny"\n')
    with pytest.raises(PolicyError) as info:
        Policy.load(path)
    message = str(info.value)
    assert f"{path}:10" in message and "rules.1.decison" in message


def test_a_wrong_value_and_bad_toml_are_reported_clearly(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('[policy]\nname = "x"\ndefault = "maybe"\n')
    with pytest.raises(PolicyError, match=r"p.toml:3: field 'policy.default'"):
        Policy.load(path)
    path.write_text('[policy\nname = "x"\n')
    with pytest.raises(PolicyError, match="not valid TOML"):
        Policy.load(path)


def test_an_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(PolicyError, match=r"presets are .*default"):
        Policy.load("nope")
