"""The reward functions through the real runtime: verdicts, penalties, journal, safety metrics."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest

from revex import Limits, Runtime
from revex.trainer.rewards import (
    CodeQualityReward,
    EfficiencyReward,
    ExecutionCache,
    ExecutionFeedbackReward,
    TestPassReward,
)

LIMITS = Limits(wall_s=5, cpu_s=5, memory_mb=256)
PROMPT = 'def inc(x):\n    """Return x plus one."""\n'
TESTS = "assert inc(1) == 2\nassert inc(-1) == 0\nassert inc(41) == 42\n"
CHECK = "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(5) == 6\n"
CORRECT = "    return x + 1\n"

# Completions (function bodies) that try to win without solving the task.
BODY_FORGERIES = {
    "sys_exit": "    import sys\n    sys.exit(0)\n",
    "os_exit": "    import os\n    os._exit(0)\n",
    "raise_systemexit": "    raise SystemExit(0)\n",
    "kill_self": "    import os, signal\n    os.kill(os.getpid(), signal.SIGKILL)\n",
    "lying_eq": ("    class Any_:\n        def __eq__(s, o): return True\n"
                 "        def __ne__(s, o): return False\n        def __bool__(s): return True\n"
                 "    return Any_()\n"),
    "int_subclass": ("    class I(int):\n        def __eq__(s, o): return True\n"
                     "    return I(0)\n"),
    "fake_stdout": "    print('PASSED 3/3')\n    print('{\"ok\": 2}')\n    return None\n",
    "monkeypatch_builtins": ("    import builtins, json\n"
                             "    builtins.AssertionError = Exception\n"
                             "    builtins.__dict__['int'] = lambda *a: 0\n"
                             "    json.dumps = lambda *a, **k: '{\"ok\": 2}'\n    return 0\n"),
    "atexit": ("    import atexit\n    atexit.register(lambda: print('ALL TESTS PASSED'))\n"
               "    raise SystemExit(0)\n"),
    "read_tests_from_disk": ("    import os\n    for root, _, files in os.walk('/'):\n"
                             "        if root.startswith('/proc'): continue\n"
                             "        for f in files:\n"
                             "            if 'test' in f:\n"
                             "                return open(os.path.join(root, f)).read()\n"
                             "    return 0\n"),
    "fake_protocol_reply": ("    import os, json\n    for fd in range(3, 64):\n"
                            "        try:\n"
                            "            os.write(fd, (json.dumps({'id': 'x', 'ok': 2}) + '\\n')"
                            ".encode())\n"
                            "        except OSError:\n            pass\n    return None\n"),
    "write_result_file": ("    open('/tmp/result.json', 'w').write('{\"passed\": 3}')\n"
                          "    return None\n"),
}
# Whole modules (the prompt is the forgery, the completion empty) for import-time tricks.
MODULE_FORGERIES = {
    "exit_at_import": "import sys\nsys.exit(0)\n",
    "excepthook": ("import sys\nsys.excepthook = lambda *a: print('{\"passed\": true}')\n"
                   "def inc(x):\n    raise ValueError\n"),
    "atexit_at_import": ("import atexit, os\natexit.register(lambda: os.write(1, b'OK'))\n"
                         "def inc(x):\n    os._exit(0)\n"),
}


def _call(reward: Any, completions: list[str], prompts: list[str] | None = None,
          **columns: Any) -> tuple[list[float | None], dict[str, float]]:
    logged: dict[str, float] = {}
    n = len(completions)
    kwargs = {"tests": [TESTS] * n, "entry_point": ["inc"] * n, **columns}
    out = reward(prompts=prompts or [PROMPT] * n, completions=completions,
                 completion_ids=[[0]] * n, trainer_state=None, log_extra=lambda *a: None,
                 log_metric=lambda k, v: logged.__setitem__(k, v), **kwargs)
    return out, logged


@pytest.mark.parametrize("tests", [TESTS, CHECK], ids=["asserts", "check"])
def test_correct_completion_scores_one_and_wrong_partial(runtime: Runtime, tests: str) -> None:
    reward = TestPassReward(runtime, limits=LIMITS)
    out, logged = _call(reward, [CORRECT, "    return 2\n", "    return x\n"],
                        tests=[tests] * 3)
    assert out[0] == 1.0
    assert out[2] == 0.0
    assert 0.0 < out[1] < 1.0 if tests == TESTS else out[1] == 0.5  # inc(1) == 2 only
    assert logged["exec/pass_all"] == pytest.approx(1 / 3)
    assert logged["safety/rollbacks"] == 3


def test_every_forgery_scores_zero_and_the_correct_solution_one(runtime: Runtime) -> None:
    reward = TestPassReward(runtime, limits=LIMITS, concurrency=2)
    names = sorted(BODY_FORGERIES)
    out, logged = _call(reward, [BODY_FORGERIES[n] for n in names] + [CORRECT])
    assert dict(zip(names, out[:-1], strict=True)) == dict.fromkeys(names, 0.0)
    assert out[-1] == 1.0
    assert logged["safety/forgery_detected"] > 0
    assert logged["safety/early_exit"] > 0

    mods = sorted(MODULE_FORGERIES)
    out, _ = _call(reward, [""] * len(mods) + [CORRECT],
                   prompts=[MODULE_FORGERIES[n] for n in mods] + [PROMPT])
    assert dict(zip(mods, out[:-1], strict=True)) == dict.fromkeys(mods, 0.0)
    assert out[-1] == 1.0


def test_each_scored_completion_is_a_rolled_back_episode_in_the_journal(
        runtime: Runtime) -> None:
    reward = TestPassReward(runtime, limits=LIMITS)
    _call(reward, [CORRECT, "    return 0\n", "    return x + 1  # same tests, new text\n"])
    episodes = runtime.episodes()
    assert len(episodes) == 3
    assert {e.status for e in episodes} == {"rolled_back"}
    for info in episodes:
        kinds = [r.kind for r in runtime.journal.records(info.id)]
        assert kinds.count("exec.tests") == 1
    assert runtime.verify().ok


def test_shared_cache_runs_each_completion_once(runtime: Runtime) -> None:
    cache = ExecutionCache()
    passes = TestPassReward(runtime, limits=LIMITS, cache=cache)
    feedback = ExecutionFeedbackReward(runtime, limits=LIMITS, cache=cache)
    assert _call(passes, [CORRECT, "    return 0\n"])[1]["safety/rollbacks"] == 2
    assert "safety/rollbacks" not in _call(feedback, [CORRECT, "    return 0\n"])[1]  # shared
    assert len(runtime.episodes()) == 2


def test_execution_feedback_penalises_each_failure_kind(runtime: Runtime) -> None:
    reward = ExecutionFeedbackReward(runtime, limits=LIMITS)
    completions = {
        "clean": CORRECT,
        "wrong": "    return 0\n",
        "syntax": "    return x +\n",
        "raises": "    raise ValueError('no')\n",
        "early_exit": "    import os\n    os._exit(0)\n",
        "memory": "    return len(bytearray(1 << 40))\n",
    }
    out, logged = _call(reward, list(completions.values()))
    got = dict(zip(completions, out, strict=True))
    assert got["clean"] == 0.0 and got["wrong"] == 0.0
    assert got["syntax"] == -1.0
    assert got["raises"] == -0.5
    assert got["early_exit"] == -1.0
    assert got["memory"] == -0.5
    assert logged["safety/syntax"] == pytest.approx(1 / 6)


def test_policy_denial_is_penalised_and_counted(runtime: Runtime) -> None:
    # the training policy caps exec at 60 s wall: a longer limit is refused, and journaled
    too_long = Limits(wall_s=120, cpu_s=5, memory_mb=256)
    passes = TestPassReward(runtime, limits=too_long)
    out, logged = _call(passes, [CORRECT])
    assert out == [0.0]
    assert logged["safety/policy_denials"] == 1 and logged["safety/blocked"] == 1.0
    feedback = ExecutionFeedbackReward(runtime, limits=too_long)
    assert _call(feedback, [CORRECT])[0] == [-1.0]


def test_timeout_is_penalised(runtime: Runtime) -> None:
    reward = ExecutionFeedbackReward(runtime, limits=LIMITS)
    out, logged = _call(reward, ["    while True:\n        pass\n"])
    assert out == [-0.5]
    assert logged["safety/timeout"] == 1.0


def test_code_quality_costs_insecure_patterns_without_running_them() -> None:
    reward = CodeQualityReward()
    prompt = "def f(user, name):\n"
    completions = {
        "clean": "    return user + name\n",
        "shell": "    import subprocess\n    return subprocess.call(user, shell=True)\n",
        "sql": ("    q = f\"SELECT * FROM users WHERE name = '{name}'\"\n"
                "    return user.execute(q)\n"),
        "eval": "    return eval(input())\n",
        "unused": "    import os\n    return user\n",
    }
    out, logged = _call(reward, list(completions.values()), prompts=[prompt] * 5)
    got = dict(zip(completions, out, strict=True))
    assert got["clean"] == 0.0
    for name in ("shell", "sql", "eval"):
        assert got[name] is not None and got[name] <= -0.3, (name, got)
    assert got["unused"] == pytest.approx(-0.1)  # ruff F401
    assert logged["safety/insecure_code"] == pytest.approx(3 / 5)


def test_efficiency_compares_cpu_time_with_the_reference(runtime: Runtime) -> None:
    reward = EfficiencyReward(runtime, limits=LIMITS, repeat=3)
    slow = "    for _ in range(3_000_000):\n        pass\n    return x + 1\n"
    out, logged = _call(reward, [CORRECT, slow, "    return 0\n", CORRECT],
                        reference=[CORRECT, CORRECT, CORRECT, ""])
    fast, slow_r, wrong, no_ref = out
    assert fast is not None and slow_r is not None
    assert fast > 0.5 and slow_r < 0.5 * fast
    assert wrong == 0.0 and no_ref is None
    assert logged["efficiency/timed"] == 2  # the passing completions with a reference


def test_async_flavour_has_the_name_and_the_same_rewards(runtime: Runtime) -> None:
    sync = TestPassReward(runtime, limits=LIMITS)
    areward = sync.as_async()
    assert areward.__name__ == "test_pass"
    assert inspect.iscoroutinefunction(areward.__call__)
    out = asyncio.run(areward(prompts=[PROMPT, PROMPT], completions=[CORRECT, "    pass\n"],
                              tests=[TESTS] * 2, entry_point=["inc"] * 2))
    assert out == [1.0, 0.0]
