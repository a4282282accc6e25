"""Call-style (fn_name), MBPP asserts and HumanEval checks through the judge; batch judging of
N solutions x M cases; the Runtime and Episode entry points."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from revex import ConfigError, Limits, Runtime
from revex.judge import CaseStatus, TestCases, judge, judge_many
from revex.runtime.sandbox import compile_cache, languages
from revex.runtime.sandbox.base import ExecStatus, make_spec
from revex.runtime.sandbox.warm import WarmPythonBackend

CALL = TestCases.from_io({"fn_name": "add", "inputs": [[1, 2], [3, 4], [[1], [2]]],
                          "outputs": [[3], 7, [[1, 2]]]})


def test_call_style_function_and_leetcode_class_pass(be: WarmPythonBackend) -> None:
    plain = judge("def add(a, b):\n    return a + b", CALL, backend=be)
    leet = judge("class Solution:\n    def add(self, a, b):\n        return a + b", CALL,
                 backend=be)
    assert plain.all_passed and leet.all_passed and plain.total == 3
    assert all(c.time_s is not None for c in plain.cases)


def test_call_style_statuses_and_a_crash_costs_one_case(be: WarmPythonBackend) -> None:
    tc = TestCases.from_io({"fn_name": "f", "inputs": [[1], [2], [3], [4], [5]],
                            "outputs": [1, 2, 3, 4, 5]})
    src = ("import os, time\n"
           "def f(x):\n"
           "    if x == 2: return x + 1\n"
           "    if x == 3: raise ValueError('boom')\n"
           "    if x == 4: os._exit(0)\n"
           "    if x == 5: time.sleep(60)\n"
           "    return x\n")
    r = judge(src, tc, backend=be, limits=Limits(wall_s=30, cpu_s=30))
    assert [c.status for c in r.cases] == [
        CaseStatus.PASSED, CaseStatus.WRONG_ANSWER, CaseStatus.RUNTIME_ERROR,
        CaseStatus.RUNTIME_ERROR, CaseStatus.TIMEOUT]
    assert "boom" in r.cases[2].message and r.status is CaseStatus.WRONG_ANSWER


def test_call_style_stop_on_first_failure(be: WarmPythonBackend) -> None:
    r = judge("def add(a, b):\n    return 3", CALL, backend=be, stop_on_first_failure=True)
    assert [c.status for c in r.cases] == [CaseStatus.PASSED, CaseStatus.WRONG_ANSWER,
                                           CaseStatus.SKIPPED]


def test_call_style_forgeries_earn_nothing(be: WarmPythonBackend) -> None:
    # An object that claims to equal anything cannot cross the boundary; printing a verdict
    # or exiting 0 during the call is no answer either.
    liar = ("class Eq:\n    def __eq__(self, o): return True\n"
            "def add(a, b):\n    print('PASSED'); return Eq()")
    quitter = "import sys\ndef add(a, b):\n    print('PASSED'); sys.exit(0)"
    for src in (liar, quitter):
        r = judge(src, CALL, backend=be)
        assert r.passed == 0 and r.status is CaseStatus.RUNTIME_ERROR, r


def test_call_style_needs_python() -> None:
    with pytest.raises(ConfigError, match="call test cases run Python only"):
        judge("int add(int a, int b){return a+b;}", CALL, language="c")


def test_mbpp_asserts_and_humaneval_check(be: WarmPythonBackend) -> None:
    mbpp = TestCases.from_asserts(["assert sq(2) == 4", "assert sq(3) == 9",
                                   "assert sq(-1) == 1"])
    good = judge("def sq(x):\n    return x * x", mbpp, backend=be)
    half = judge("def sq(x):\n    return x * 2", mbpp, backend=be)
    assert good.all_passed and good.total == 3
    assert [c.status for c in half.cases] == [CaseStatus.PASSED, CaseStatus.WRONG_ANSWER,
                                              CaseStatus.WRONG_ANSWER]
    he = TestCases.from_check("def check(candidate):\n    assert candidate(2) == 4\n"
                              "    assert candidate(0) == 0\n", "sq")
    assert judge("def sq(x):\n    return x * x", he, backend=be).all_passed
    forged = judge("print('PASSED')\nimport os\nos._exit(0)", he, backend=be)
    assert forged.passed == 0 and not forged.all_passed


def test_judge_many_n_solutions_by_m_cases_in_order(be: WarmPythonBackend) -> None:
    io = TestCases.from_io({"inputs": [f"{i} {i}\n" for i in range(6)],
                            "outputs": [f"{2 * i}\n" for i in range(6)]})
    tag = secrets.token_hex(4)
    sols = [("a, b = map(int, input().split())\nprint(a + b)", "python"),
            ("print(0)", "python"),
            (f'#include <cstdio>\n// {tag}\nint main(){{long a,b;scanf("%ld %ld",&a,&b);'
             f'printf("%ld\\n",a+b);}}', "cpp"),
            ("read a b; echo $((a * b))", "bash")]
    seen: list[tuple[int, int]] = []
    results = judge_many([s for s, _ in sols], io, language=[lang for _, lang in sols],
                         backend=be, concurrency=3, progress=lambda d, t: seen.append((d, t)))
    assert [r.passed for r in results] == [6, 1, 6, 2]  # bash: a * a == 2a for a = 0, 2
    assert [r.language for r in results] == ["python", "python", "cpp", "bash"]
    assert [c.index for c in results[0].cases] == list(range(6))
    assert results[1].status is CaseStatus.WRONG_ANSWER and results[2].all_passed
    assert seen[-1] == (24, 24) and len(seen) == 24
    lang, tc = languages.require("cpp")
    key = compile_cache.cache_key(sols[2][0], lang, tc, make_spec(sols[2][0], language="cpp"))
    assert os.path.isdir(os.path.join(compile_cache.cache_root(), key))  # compiled once


def test_judge_many_stop_on_first_failure_skips_later_cases(be: WarmPythonBackend) -> None:
    io = TestCases.from_io({"inputs": ["1\n", "2\n", "3\n", "4\n"],
                            "outputs": ["1\n", "2\n", "3\n", "4\n"]})
    [r] = judge_many(["n = int(input())\nprint(n if n != 1 else 0)"], io, backend=be,
                     concurrency=1, stop_on_first_failure=True)
    assert [c.status for c in r.cases] == [CaseStatus.WRONG_ANSWER] + [CaseStatus.SKIPPED] * 3
    assert r.status is CaseStatus.WRONG_ANSWER and r.passed == 0


def test_judge_many_rejects_mismatched_inputs(be: WarmPythonBackend) -> None:
    io = TestCases.from_io({"inputs": ["1"], "outputs": ["1"]})
    with pytest.raises(ConfigError, match="2 sets of test cases for 1 solutions"):
        judge_many(["print(1)"], [io, io], backend=be)
    with pytest.raises(ConfigError, match="unknown language 'cobol'"):
        judge_many(["print(1)"], io, language="cobol", backend=be)
    with pytest.raises(ConfigError, match=r"solutions\[0\] must be source text"):
        judge_many([b"print(1)"], io, backend=be)  # type: ignore[list-item]


@pytest.fixture
def rt(tmp_path: Path) -> Iterator[Runtime]:
    os.chmod(tmp_path, 0o755)
    runtime = Runtime(state_dir=tmp_path / "state", audit=None)
    yield runtime
    runtime.close()


def test_runtime_judge_many_and_episode_run_in_c(rt: Runtime, tmp_path: Path) -> None:
    io = TestCases.from_io({"inputs": ["2 3\n"], "outputs": ["5\n"]})
    [r] = rt.judge_many(['#include <stdio.h>\nint main(){int a,b;scanf("%d %d",&a,&b);'
                         'printf("%d\\n",a+b);}'], io, language="c")
    assert r.all_passed
    ws = tmp_path / "ws"
    ws.mkdir()
    os.chmod(ws, 0o755)
    with rt.episode(workspace=ws) as ep:
        res = ep.run('#include <stdio.h>\nint main(){FILE*f=fopen("out.txt","w");'
                     'fputs("from c",f);fclose(f);puts("done");}', language="c")
        assert res.status is ExecStatus.OK and res.stdout == "done\n"
        assert res.changes_applied and (ws / "out.txt").read_text() == "from c"
        bad = ep.run("int main( {", language="c", compile_limits=Limits(wall_s=20))
        assert bad.status is ExecStatus.COMPILE_ERROR and "error" in bad.stderr
    assert not (ws / "out.txt").exists()  # rolled back like any run
