"""In-process adapters: verl's compute_score and OpenRLHF's reward_func score through the
same judging code as the service, with a real runtime and real sandboxes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from revex import Runtime
from revex.integrations import openrlhf, verl

TESTS = "def check(candidate):\n    assert candidate(2) == 3\n    assert candidate(5) == 6\n"
LABEL = {"tests": TESTS, "entry_point": "inc"}


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    with Runtime(state_dir=tmp_path_factory.mktemp("s"), policy="training", audit=None) as rt:
        yield rt


def test_verl_compute_score(runtime: Runtime) -> None:
    good = "Here:\n```python\ndef inc(x):\n    return x + 1\n```\n"
    half = "```python\ndef inc(x):\n    return 3\n```"
    forged = "```python\nimport os\nprint('ALL TESTS PASSED')\nos._exit(0)\n```"
    assert verl.compute_score("humaneval", good, LABEL, runtime=runtime) == 1.0
    assert verl.compute_score("humaneval", half, json.dumps(LABEL), runtime=runtime) == 0.5
    assert verl.compute_score("humaneval", forged, LABEL, runtime=runtime) == 0.0
    assert verl.compute_score("x", good, {"nonsense": 1}, runtime=runtime) == 0.0
    assert verl.compute_score("x", "", LABEL, runtime=runtime) == 0.0
    mbpp = {"test_list": ["assert inc(1) == 2", "assert inc(0) == 1"]}
    assert verl.compute_score("mbpp", good, mbpp, runtime=runtime) == 1.0
    stdio = {"inputs": ["2\n", "9\n"], "outputs": ["3\n", "10\n"]}
    reader = "```python\nprint(int(input()) + 1)\n```"
    assert verl.compute_score("codecontests", reader, stdio, runtime=runtime) == 1.0
    cpp = ("```cpp\n#include <cstdio>\n"
           "int main(){int x;scanf(\"%d\",&x);printf(\"%d\\n\",x+1);}\n```")
    from revex.runtime.sandbox import languages

    if languages.toolchain("cpp").ok:
        assert verl.compute_score("codecontests", cpp, {**stdio, "language": "cpp"},
                                  runtime=runtime) == 1.0


def test_openrlhf_reward_func_returns_tensors(runtime: Runtime) -> None:
    import torch

    prompt = "Write inc.\n"
    queries = [prompt + "```python\ndef inc(x):\n    return x + 1\n```",
               prompt + "```python\ndef inc(x):\n    raise ValueError\n```"]
    out = openrlhf.reward_func(queries, [prompt, prompt], [json.dumps(LABEL)] * 2,
                               runtime=runtime)
    assert isinstance(out["rewards"], torch.Tensor)
    assert out["rewards"].tolist() == [1.0, 0.0] and out["scores"].tolist() == [1.0, 0.0]
    assert out["extra_logs"]["all_passed"].tolist() == [1.0, 0.0]


def test_default_runtime_lives_in_the_cache_dir(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import revex.integrations as integ

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(integ, "_runtime", None)
    rt = integ.default_runtime()
    try:
        assert rt.state_dir == tmp_path / "revex" / "rewards"  # shared with the rewards
        assert rt.policy.name == "training" and integ.default_runtime() is rt
    finally:
        rt.close()
