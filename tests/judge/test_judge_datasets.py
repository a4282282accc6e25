"""Dataset files in each published shape (small fixtures built here, JSONL and Parquet),
pass@k evaluation through the judge, and `revex eval file` as a user runs it."""

from __future__ import annotations

import base64
import json
import os
import pickle
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

from revex.judge.cases import CasesError
from revex.judge.datasets import load_problems, pass_at_k
from revex.judge.evaluate import evaluate_file
from revex.runtime.sandbox.warm import WarmPythonBackend

ADD_PY = "a, b = map(int, input().split())\nprint(a + b)"
ADD_CPP = '#include <iostream>\nint main(){long long a,b;std::cin>>a>>b;std::cout<<a+b<<"\\n";}'
IO = {"inputs": ["1 2\n", "5 5\n"], "outputs": ["3\n", "10\n"]}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def lcb_compress(tests: list[dict[str, str]]) -> str:
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()


ROWS: dict[str, list[dict[str, Any]]] = {
    "apps": [{"problem_id": 1, "question": "add", "input_output": json.dumps(IO),
              "solutions": json.dumps([ADD_PY])},
             {"problem_id": 2, "question": "call", "solutions": json.dumps(
                 ["def add(a, b):\n    return a + b"]),
              "input_output": json.dumps({"fn_name": "add", "inputs": [[1, 2]],
                                          "outputs": [[3]]})}],
    "taco": [{"id": "t1", "question": "add", "input_output": json.dumps(IO),
              "solutions": json.dumps(["print(0)"])}],
    "codecontests": [{"name": "cc1", "description": "add",
                      "public_tests": {"input": ["1 2\n"], "output": ["3\n"]},
                      "private_tests": {"input": ["5 5\n"], "output": ["10\n"]},
                      "generated_tests": {"input": [], "output": []},
                      "solutions": {"language": [2, 3], "solution": [ADD_CPP, ADD_PY]},
                      "time_limit": {"seconds": 2, "nanos": 0},
                      "memory_limit_bytes": 256 << 20}],
    "livecodebench": [
        {"question_id": "lcb1", "question_content": "add",
         "public_test_cases": json.dumps([{"input": "1 2\n", "output": "3\n",
                                           "testtype": "stdin"}]),
         "private_test_cases": lcb_compress([{"input": "5 5\n", "output": "10\n",
                                              "testtype": "stdin"}]),
         "metadata": "{}"},
        {"question_id": "lcb2", "question_content": "call",
         "public_test_cases": json.dumps([{"input": "1\n2", "output": "3",
                                           "testtype": "functional"}]),
         "private_test_cases": "[]", "metadata": json.dumps({"func_name": "add"})}],
    "mbpp": [{"task_id": 11, "text": "square", "code": "def sq(x):\n    return x * x",
              "test_list": ["assert sq(2) == 4", "assert sq(3) == 9"], "test_setup_code": ""}],
    "humaneval": [{"task_id": "HumanEval/0", "prompt": "def sq(x):\n",
                   "canonical_solution": "    return x * x\n", "entry_point": "sq",
                   "test": "def check(candidate):\n    assert candidate(3) == 9\n"}],
    "verl": [{"data_source": "code", "prompt": [{"role": "user", "content": "add"}],
              "reward_model": {"style": "rule", "ground_truth": json.dumps(IO)},
              "extra_info": {"index": 7}}],
}


@pytest.mark.parametrize("fmt", sorted(ROWS))
def test_every_shape_loads_and_its_references_are_judged(
        fmt: str, tmp_path: Path, be: WarmPythonBackend) -> None:
    path = write_jsonl(tmp_path / f"{fmt}.jsonl", ROWS[fmt])
    problems = load_problems(path, fmt)
    assert len(problems) == len(ROWS[fmt])
    if fmt == "verl":  # verl and LiveCodeBench rows carry no reference: judge samples
        samples = write_jsonl(tmp_path / "s.jsonl", [{"index": 7, "completion": ADD_PY}])
        ev = evaluate_file(path, fmt, samples=samples, backend=be)
    elif fmt == "livecodebench":
        samples = write_jsonl(tmp_path / "s.jsonl", [
            {"question_id": "lcb1", "completion": ADD_PY},
            {"question_id": "lcb2", "completion": "class Solution:\n    def add(self, a, b):"
                                                  "\n        return a + b"}])
        ev = evaluate_file(path, fmt, samples=samples, backend=be)
        assert [r["c"] for r in ev.rows] == [1, 1]
        assert problems[0].cases.kind == "stdio" and len(problems[0].cases) == 2
    else:
        ev = evaluate_file(path, fmt, backend=be)
    expected = 0.0 if fmt == "taco" else 1.0  # the taco fixture's reference is wrong
    assert ev.pass_at[1] == expected, ev.rows
    if fmt == "codecontests":
        assert problems[0].references[0] == ("cpp", ADD_CPP)
        assert problems[0].cases.limits is not None
        assert problems[0].cases.limits.memory_mb == 256
        assert ev.rows[0]["samples"][0]["language"] == "cpp"


def test_parquet_files_load_like_jsonl(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "mbpp.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS["mbpp"]), path)
    [p] = load_problems(path, "mbpp")
    assert p.id == "11" and p.cases.kind == "asserts" and p.cases.entry_point == "sq"


def test_pass_at_k_over_several_samples(tmp_path: Path, be: WarmPythonBackend) -> None:
    path = write_jsonl(tmp_path / "apps.jsonl", ROWS["apps"][:1])
    samples = write_jsonl(tmp_path / "s.jsonl", [
        {"problem_id": 1, "completion": ADD_PY}, {"problem_id": 1, "completion": "print(3)"},
        {"problem_id": 1, "completion": ADD_CPP, "language": "cpp"},
        {"problem_id": 1, "completion": "print('PASSED')"}])
    ev = evaluate_file(path, "apps", samples=samples, ks=(1, 2), backend=be)
    assert ev.rows[0]["n"] == 4 and ev.rows[0]["c"] == 2
    assert ev.pass_at[1] == pytest.approx(0.5)
    assert ev.pass_at[2] == pytest.approx(pass_at_k(4, 2, 2)) == pytest.approx(5 / 6)


def test_malformed_rows_name_the_file_row_and_field(tmp_path: Path) -> None:
    bad = write_jsonl(tmp_path / "apps.jsonl", [
        ROWS["apps"][0], {"problem_id": 3, "input_output": json.dumps(
            {"inputs": ["1"], "outputs": [1]})}])
    with pytest.raises(CasesError, match=r"apps\.jsonl\[1\]\.input_output\.outputs\[0\]"):
        load_problems(bad, "apps")
    with pytest.raises(CasesError, match="unknown format 'kattis'"):
        load_problems(bad, "kattis")
    (tmp_path / "broken.jsonl").write_text(json.dumps(ROWS["mbpp"][0]) + "\nnot json\n")
    with pytest.raises(CasesError, match=r"broken\.jsonl:2: not valid JSON"):
        load_problems(tmp_path / "broken.jsonl", "mbpp")


def test_compressed_test_cases_never_unpickle_objects(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = base64.b64encode(zlib.compress(pickle.dumps(_Evil(str(marker))))).decode()
    row = dict(ROWS["livecodebench"][0], private_test_cases=evil)
    path = write_jsonl(tmp_path / "lcb.jsonl", [row])
    with pytest.raises(CasesError, match="only text is accepted"):
        load_problems(path, "livecodebench")
    assert not marker.exists()


class _Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.path}",))


def test_revex_eval_file_prints_pass_at_1_and_writes_results(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "cc.jsonl", ROWS["codecontests"])
    out = tmp_path / "res.jsonl"
    proc = subprocess.run([sys.executable, "-m", "revex.cli", "eval", "file", str(path),
                           "--format", "codecontests", "--language", "python", "--out",
                           str(out), "-k", "1", "-k", "1"], capture_output=True, text=True,
                          timeout=300,
                          env={**os.environ, "COLUMNS": "200"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "pass@1 = 1.0000" in proc.stdout
    [row] = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["id"] == "cc1" and row["samples"][0]["language"] == "python"
    bad = subprocess.run([sys.executable, "-m", "revex.cli", "eval", "file", str(path),
                          "--format", "nope"], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert bad.returncode == 2 and "unknown format 'nope'" in bad.stderr
