"""No credit for nothing: only assertions that exercise the solution are tests, and a solution
that never returns a value passes none of them (issue 11, item 1)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from revex import Runtime
from revex.runtime.sandbox import base
from revex.runtime.sandbox.harness import run_tests
from revex.runtime.sandbox.humaneval import humaneval_problems
from revex.runtime.sandbox.warm import WarmPythonBackend
from revex.trainer.rewards import TestPassReward

RAISES = "    raise ValueError('mutant')\n"


def test_a_raising_solution_scores_zero_on_every_humaneval_problem(
        warm: WarmPythonBackend) -> None:
    problems = humaneval_problems()

    def mutant(task_id: str) -> base.TestReport:
        p = problems[task_id]
        return run_tests(p["prompt"] + RAISES, p["test"], p["entry_point"], backend=warm)

    with ThreadPoolExecutor(max_workers=2) as pool:
        reports = dict(zip(problems, pool.map(mutant, problems), strict=True))
    credited = {tid: f"{r.passed}/{r.total}" for tid, r in reports.items() if r.passed}
    assert credited == {}
    assert all(r.pass_rate == 0.0 and r.total >= 1 for r in reports.values())
    # the verdicts are the solution's exception, named once
    messages = {res.message for r in reports.values() for res in r.results}
    assert "ValueError: mutant" in messages
    assert not any("ValueError: ValueError" in m for m in messages)


def test_an_assertion_that_calls_nothing_is_not_a_test(warm: WarmPythonBackend) -> None:
    p = humaneval_problems()["HumanEval/64"]  # its check ends with `assert True, "..."`
    assert "assert True" in p["test"]
    good = run_tests(p["prompt"] + p["canonical_solution"], p["test"], p["entry_point"],
                     backend=warm)
    assert good.all_passed and good.total == 7
    assert all(r.name.split(": ", 1)[1] != "True" for r in good.results)
    bad = run_tests(p["prompt"] + RAISES, p["test"], p["entry_point"], backend=warm)
    assert (bad.passed, bad.total) == (0, 7)


def test_values_computed_before_an_assertion_count_for_it(warm: WarmPythonBackend) -> None:
    tests = ("def check(candidate):\n"
             "    r = candidate(2)\n"
             "    assert r == 3\n"
             "    assert 1 + 1 == 2\n")
    report = run_tests("def inc(x):\n    return x + 1\n", tests, "inc", backend=warm)
    assert [r.status for r in report.results] == ["passed"]
    report = run_tests("def inc(x):\n    return x\n", tests, "inc", backend=warm)
    assert (report.passed, report.total) == (0, 1)


def test_a_failing_assertion_counts_even_when_it_reached_no_call(
        warm: WarmPythonBackend) -> None:
    # `double` is missing from the solution: that assertion fails with a NameError before any
    # call, and leaving it out would raise the pass rate of a solution that lacks a function
    tests = "assert inc(1) == 2\nassert double(2) == 4\nassert 2 + 2 == 5\n"
    report = run_tests("def inc(x):\n    return x + 1\n", tests, "inc", backend=warm)
    assert [r.status for r in report.results] == ["passed", "failed", "failed"]
    assert report.results[1].message.startswith("NameError")


def test_a_solution_that_never_returns_passes_nothing_even_when_its_exceptions_are_caught(
        warm: WarmPythonBackend) -> None:
    tests = ("def check(candidate):\n"
             "    try:\n"
             "        candidate(-1)\n"
             "    except ValueError:\n"
             "        assert True\n"
             "    assert candidate(2) == 3\n")
    only_raises = "def inc(x):\n    raise ValueError('negative')\n"
    report = run_tests(only_raises, tests, "inc", backend=warm)
    assert report.passed == 0 and report.total == 2
    assert report.results[0].message == "no call into the solution returned a value"
    honest = "def inc(x):\n    if x < 0:\n        raise ValueError('negative')\n    return x + 1\n"
    assert run_tests(honest, tests, "inc", backend=warm).all_passed


def test_an_exception_type_that_is_not_built_in_is_named_once(warm: WarmPythonBackend) -> None:
    sol = "class Boom(Exception):\n    pass\n\ndef inc(x):\n    raise Boom('no')\n"
    report = run_tests(sol, "assert inc(1) == 2\n", "inc", backend=warm)
    assert [r.message for r in report.results] == ["Boom: no"]
    odd = "def inc(x):\n    raise UnicodeDecodeError('utf-8', b'x', 0, 1, 'bad')\n"
    report = run_tests(odd, "assert inc(1) == 2\n", "inc", backend=warm)
    assert report.results[0].message.startswith("UnicodeDecodeError: ")
    assert report.results[0].message.count("UnicodeDecodeError") == 1


@pytest.mark.parametrize("mode", ["pass_rate", "all_pass"])
def test_the_training_reward_gives_a_raising_completion_nothing(tmp_path: Path,
                                                                mode: str) -> None:
    problems = humaneval_problems()
    ids = ["HumanEval/64", "HumanEval/66", "HumanEval/118", "HumanEval/156"]
    with Runtime(tmp_path / "state", policy="training", audit=None) as rt:
        assert rt.run_tests(problems["HumanEval/64"]["prompt"] + RAISES,
                            problems["HumanEval/64"]["test"], "vowels_count").passed == 0
        reward = TestPassReward(rt, reward_mode=mode)
        prompts = [problems[t]["prompt"] for t in ids]
        kwargs = {"tests": [problems[t]["test"] for t in ids],
                  "entry_point": [problems[t]["entry_point"] for t in ids]}
        assert reward(prompts, [RAISES] * len(ids), **kwargs) == [0.0] * len(ids)
        canonical = [problems[t]["canonical_solution"] for t in ids]
        assert reward(prompts, canonical, **kwargs) == [1.0] * len(ids)
