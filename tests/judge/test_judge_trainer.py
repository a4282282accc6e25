"""The trainer's JudgeReward on an APPS-style dataset (columns ``test_cases``, ``language``)
and Episode.judge as a journaled action."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from revex import ConfigError, Runtime
from revex.judge import CaseStatus
from revex.trainer.judge_reward import JudgeReward, extract_code

IO = json.dumps({"inputs": ["1 2\n", "5 5\n"], "outputs": ["3\n", "10\n"]})
CPP = ("```cpp\n#include <iostream>\nint main(){long long a,b;std::cin>>a>>b;"
       "std::cout<<a+b<<std::endl;}\n```")


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[Runtime]:
    os.chmod(tmp_path, 0o755)
    runtime = Runtime(state_dir=tmp_path / "state", audit=None, policy="training")
    yield runtime
    runtime.close()


def test_extract_code_takes_the_last_fence_and_its_language() -> None:
    assert extract_code("Here:\n```py\nprint(1)\n```\nand\n```c++\nint x;\n```") == (
        "int x;\n", "cpp")
    assert extract_code("print(2)") == ("print(2)", None)


def test_reward_judges_apps_rows_in_rolled_back_episodes(rt: Runtime) -> None:
    reward = JudgeReward(rt, concurrency=2)
    completions = [
        "```python\na, b = map(int, input().split())\nprint(a + b)\n```",
        CPP,
        "```python\nprint(3)\n```",  # right for the first case only
        "print('PASSED')\nimport sys\nsys.exit(0)",  # a forgery earns nothing
    ]
    before = len(rt.journal.episodes())
    scores = reward(["p"] * 4, completions, test_cases=[IO] * 4)
    assert scores == [1.0, 1.0, 0.5, 0.0]
    assert reward.last_results[1].language == "cpp"
    episodes = rt.journal.episodes()[before:]
    assert len(episodes) == 4 and {e["status"] for e in episodes} == {"rolled_back"}
    kinds = [r.kind for r in rt.journal.records(episodes[0]["id"])]
    assert "exec.tests" in kinds


def test_all_pass_mode_and_language_column(rt: Runtime) -> None:
    reward = JudgeReward(rt, reward_mode="all_pass", concurrency=1)
    src = "#include <stdio.h>\nint main(){int a,b;scanf(\"%d %d\",&a,&b);printf(\"%d\\n\",a*b);}"
    assert reward(["p"], [src], test_cases=IO, language=["c"]) == [0.0]  # 1*2 != 3
    assert [c.status for c in reward.last_results[0].cases] == [CaseStatus.WRONG_ANSWER,
                                                                CaseStatus.SKIPPED]


def test_missing_column_and_bad_rows_are_config_errors(rt: Runtime) -> None:
    reward = JudgeReward(rt)
    with pytest.raises(ConfigError, match="no 'test_cases' column"):
        reward(["p"], ["print(1)"])
    with pytest.raises(ConfigError, match=r"outputs\[0\]"):
        reward(["p"], ["print(1)"], test_cases=[json.dumps({"inputs": ["1"], "outputs": [1]})])
