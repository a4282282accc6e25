"""Local dataset files (JSONL or Parquet) in the shapes code-RL datasets publish, as problems
with :class:`TestCases`, and pass@k evaluation of samples against them.

Formats (the fields each reads):

* ``apps`` / ``taco``: ``problem_id``/``id``, ``question``, ``input_output`` (JSON text of
  inputs/outputs, ``fn_name`` for call-style), ``solutions`` (JSON list of Python sources);
* ``codecontests``: ``name``, ``description``, ``public_tests``/``private_tests``/
  ``generated_tests`` (``{input: [...], output: [...]}``), ``solutions`` (``{language: [...],
  solution: [...]}``, language 1/3 = Python, 2 = C++, 4 = Java), ``time_limit``
  (``{seconds, nanos}``), ``memory_limit_bytes``;
* ``livecodebench``: ``question_id``, ``question_content``, ``public_test_cases``/
  ``private_test_cases`` (JSON text, the private ones possibly base64+zlib+pickle of JSON
  text: only a pickled *string* is accepted, nothing else is unpickled), ``metadata``
  (``func_name`` for functional tests);
* ``mbpp``: ``task_id``, ``text``, ``test_list``, ``test_setup_code``, ``code``;
* ``humaneval``: ``task_id``, ``prompt``, ``test``, ``entry_point``, ``canonical_solution``
  (a sample's program is ``prompt + completion``);
* ``verl``: ``reward_model.ground_truth`` (JSON text of inputs/outputs), ``prompt``,
  ``extra_info.index``.

Raises :class:`CasesError` naming the file, row and field that is malformed.
"""

from __future__ import annotations

import base64
import io
import json
import math
import pickle
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from revex.judge.cases import CasesError, TestCases
from revex.runtime.sandbox.base import Limits

FORMATS = ("apps", "taco", "codecontests", "livecodebench", "mbpp", "humaneval", "verl")
_CC_LANGUAGES = {1: "python", 2: "cpp", 3: "python", 4: "java"}


@dataclass
class Problem:
    """One problem: its id, prompt, tests, and reference solutions as (language, source)."""

    id: str
    prompt: str
    cases: TestCases
    references: list[tuple[str, str]] = field(default_factory=list)
    #: Prepended to a sample before it runs (HumanEval's prompt holds the signature).
    prefix: str = ""


def read_rows(path: str | Path) -> Iterator[dict[str, Any]]:
    """Rows of a ``.jsonl``/``.json`` (one object per line) or ``.parquet`` file.

    Raises :class:`CasesError` for an unreadable file or a line that is not a JSON object.
    """
    p = Path(path)
    if p.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            table = pq.read_table(p)
        except (ImportError, OSError, ValueError) as exc:
            raise CasesError(f"{p}: cannot read Parquet ({exc})") from exc
        yield from table.to_pylist()
        return
    try:
        lines = p.read_text().splitlines()
    except OSError as exc:
        raise CasesError(f"{p}: cannot read ({exc})") from exc
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise CasesError(f"{p}:{n}: not valid JSON ({exc})") from exc
        if not isinstance(row, dict):
            raise CasesError(f"{p}:{n}: expected a JSON object, got {type(row).__name__}")
        yield row


def _json(v: Any, where: str) -> Any:
    if isinstance(v, str):
        try:
            return json.loads(v)
        except ValueError as exc:
            raise CasesError(f"{where}: not valid JSON ({exc})") from exc
    return v


class _StringsOnly(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise CasesError(f"pickled test cases reference {module}.{name}; only text is accepted")


def _lcb_private(v: Any, where: str) -> Any:
    """LiveCodeBench's private tests: JSON text, or base64(zlib(pickle(JSON text)))."""
    if not isinstance(v, str) or v.lstrip().startswith("["):
        return _json(v, where)
    try:
        text = _StringsOnly(io.BytesIO(zlib.decompress(base64.b64decode(v)))).load()
    except (ValueError, zlib.error, pickle.UnpicklingError, EOFError) as exc:
        raise CasesError(f"{where}: neither JSON nor compressed test cases ({exc})") from exc
    if not isinstance(text, str):
        raise CasesError(f"{where}: compressed test cases are not text")
    return _json(text, where)


def _limits(seconds: float | None, memory_bytes: int | None) -> Limits | None:
    if not seconds and not memory_bytes:
        return None
    wall = float(seconds) if seconds else 10.0
    mem = max(64, int(memory_bytes) >> 20) if memory_bytes else 512
    return Limits(wall_s=wall, cpu_s=wall, memory_mb=mem)


def _row_problem(fmt: str, row: Mapping[str, Any], where: str) -> Problem:
    if fmt in ("apps", "taco"):
        cases = TestCases.from_io(_json(row.get("input_output"), f"{where}.input_output"),
                                  field_name=f"{where}.input_output")
        sols = _json(row.get("solutions") or "[]", f"{where}.solutions") or []
        return Problem(str(row.get("problem_id", row.get("id", where))),
                       str(row.get("question", "")), cases,
                       [("python", s) for s in sols if isinstance(s, str)])
    if fmt == "codecontests":
        ins: list[Any] = []
        outs: list[Any] = []
        for key in ("public_tests", "private_tests", "generated_tests"):
            t = row.get(key) or {}
            ins += list(t.get("input") or [])
            outs += list(t.get("output") or [])
        tl = row.get("time_limit") or {}
        secs = (tl.get("seconds") or 0) + (tl.get("nanos") or 0) / 1e9 if isinstance(
            tl, Mapping) else None
        cases = TestCases.from_io({"inputs": ins, "outputs": outs},
                                  limits=_limits(secs, row.get("memory_limit_bytes")),
                                  field_name=f"{where}.tests")
        sol = row.get("solutions") or {}
        refs = [(_CC_LANGUAGES[lang], src) for lang, src in
                zip(sol.get("language") or [], sol.get("solution") or [], strict=False)
                if lang in _CC_LANGUAGES]
        return Problem(str(row.get("name", where)), str(row.get("description", "")), cases,
                       refs)
    if fmt == "livecodebench":
        tests = list(_json(row.get("public_test_cases") or "[]", f"{where}.public_test_cases"))
        tests += list(_lcb_private(row.get("private_test_cases") or "[]",
                                   f"{where}.private_test_cases"))
        meta = _json(row.get("metadata") or "{}", f"{where}.metadata") or {}
        functional = any(isinstance(t, Mapping) and t.get("testtype") == "functional"
                         for t in tests)
        data: dict[str, Any] = {
            "inputs": [t.get("input") for t in tests],
            "outputs": [_json(t.get("output"), f"{where}.output") if functional
                        else t.get("output") for t in tests]}
        if functional:
            data["fn_name"] = meta.get("func_name")
        return Problem(str(row.get("question_id", where)), str(row.get("question_content", "")),
                       TestCases.from_io(data, field_name=f"{where}.test_cases"))
    if fmt == "mbpp":
        cases = TestCases.from_asserts(row.get("test_list") or [],
                                       setup=str(row.get("test_setup_code") or ""),
                                       field_name=f"{where}.test_list")
        code = row.get("code")
        return Problem(str(row.get("task_id", where)), str(row.get("text", "")), cases,
                       [("python", code)] if isinstance(code, str) else [])
    if fmt == "humaneval":
        cases = TestCases.from_check(str(row.get("test", "")), str(row.get("entry_point", "")))
        prompt = str(row.get("prompt", ""))
        canon = row.get("canonical_solution")
        return Problem(str(row.get("task_id", where)), prompt, cases,
                       [("python", canon)] if isinstance(canon, str) else [], prefix=prompt)
    if fmt == "verl":
        rm = row.get("reward_model") or {}
        if not isinstance(rm, Mapping) or "ground_truth" not in rm:
            raise CasesError(f"{where}.reward_model.ground_truth: missing")
        cases = TestCases.from_io(_json(rm["ground_truth"], f"{where}.ground_truth"),
                                  field_name=f"{where}.reward_model.ground_truth")
        extra = row.get("extra_info") or {}
        pid = extra.get("index", where) if isinstance(extra, Mapping) else where
        return Problem(str(pid), json.dumps(row.get("prompt", "")), cases)
    raise CasesError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def load_problems(path: str | Path, fmt: str) -> list[Problem]:
    """Every problem of a local dataset file in format ``fmt`` (see the module docstring).

    Raises :class:`CasesError` for an unknown format or a malformed row (naming it).
    """
    if fmt not in FORMATS:
        raise CasesError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return [_row_problem(fmt, row, f"{Path(path).name}[{i}]")
            for i, row in enumerate(read_rows(path))]


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimator (Chen et al. 2021) for n samples of which c passed."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def sample_key(row: Mapping[str, Any]) -> str:
    for key in ("task_id", "problem_id", "question_id", "name", "id", "index"):
        if key in row:
            return str(row[key])
    raise CasesError("sample row has no task_id/problem_id/question_id/name/id")


def sample_code(row: Mapping[str, Any]) -> str:
    for key in ("completion", "solution", "code", "response"):
        if isinstance(row.get(key), str):
            return str(row[key])
    raise CasesError("sample row has no completion/solution/code text")


def group_samples(rows: Sequence[Mapping[str, Any]],
                  problems: Sequence[Problem]) -> dict[str, list[Mapping[str, Any]]]:
    """Samples per problem id. Raises :class:`CasesError` for a sample of an unknown id."""
    ids = {p.id for p in problems}
    out: dict[str, list[Mapping[str, Any]]] = {}
    for i, row in enumerate(rows):
        key = sample_key(row)
        if key not in ids:
            raise CasesError(f"samples[{i}]: unknown problem id {key!r}")
        sample_code(row)
        out.setdefault(key, []).append(row)
    return out
