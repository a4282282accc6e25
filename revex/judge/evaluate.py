"""``revex eval file``: judge samples (or a dataset's reference solutions) against a local
dataset file and report pass@k, with one JSONL row of results per problem."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from revex.judge.cases import CasesError
from revex.judge.datasets import (
    Problem,
    group_samples,
    load_problems,
    pass_at_k,
    read_rows,
    sample_code,
)
from revex.judge.judge import judge_many
from revex.runtime.sandbox.base import Limits, SandboxBackend


@dataclass
class Evaluation:
    """Per-problem rows (id, n, c, pass@k and per-sample statuses) and the mean pass@k over
    problems; ``skipped`` counts problems with nothing to judge (no sample, no reference)."""

    rows: list[dict[str, Any]]
    pass_at: dict[int, float]
    skipped: int = 0
    samples: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def write_jsonl(self, path: str | Path) -> None:
        """Write one JSON line per problem. Raises ``OSError`` if it cannot be written."""
        with open(path, "w") as f:
            for row in self.rows:
                f.write(json.dumps(row) + "\n")


def evaluate_problems(problems: Sequence[Problem],
                      samples: Sequence[Mapping[str, Any]] | None = None, *,
                      language: str | None = None, ks: Sequence[int] = (1,),
                      backend: SandboxBackend | None = None, concurrency: int = 0,
                      limits: Limits | None = None, stop_on_first_failure: bool = True,
                      progress: Callable[[int, int], None] | None = None) -> Evaluation:
    """Judge each problem's samples (rows with an id and ``completion``/``solution``/``code``,
    optionally ``language``), or, without samples, its first reference solution (in
    ``language`` when given). Raises ``CasesError`` for a sample of an unknown problem and
    what :func:`judge_many` raises."""
    by_id = {p.id: p for p in problems}
    jobs: list[tuple[str, str, str]] = []  # (problem id, language, program)
    if samples is not None:
        for pid, given in group_samples(samples, problems).items():
            for sample in given:
                lang = str(sample.get("language") or language or "python")
                jobs.append((pid, lang, by_id[pid].prefix + sample_code(sample)))
    else:
        for p in problems:
            ref = next(((lang, src) for lang, src in p.references
                        if language is None or lang == language), None)
            if ref is not None:
                jobs.append((p.id, ref[0], p.prefix + ref[1]))
    results = judge_many([j[2] for j in jobs], [by_id[j[0]].cases for j in jobs],
                         language=[j[1] for j in jobs], backend=backend,
                         concurrency=concurrency, limits=limits,
                         stop_on_first_failure=stop_on_first_failure,
                         progress=progress) if jobs else []
    per: dict[str, list[dict[str, Any]]] = {}
    for (pid, lang, _), res in zip(jobs, results, strict=True):
        per.setdefault(pid, []).append({
            "language": lang, "status": str(res.status), "passed": res.all_passed,
            "cases_passed": res.passed, "cases": res.total,
            "statuses": [str(c.status) for c in res.cases], "message": res.message[:500]})
    rows = []
    for p in problems:
        got = per.get(p.id)
        if not got:
            continue
        n, c = len(got), sum(r["passed"] for r in got)
        row: dict[str, Any] = {"id": p.id, "n": n, "c": c}
        for k in ks:
            if k <= n:
                row[f"pass@{k}"] = pass_at_k(n, c, k)
        row["samples"] = got
        rows.append(row)
    pass_at = {k: sum(r[f"pass@{k}"] for r in rows if f"pass@{k}" in r)
               / max(1, sum(f"pass@{k}" in r for r in rows)) for k in ks}
    return Evaluation(rows, pass_at, skipped=len(problems) - len(rows), samples=len(jobs))


def evaluate_file(path: str | Path, fmt: str, *, samples: str | Path | None = None,
                  **options: Any) -> Evaluation:
    """:func:`evaluate_problems` on a local dataset file (JSONL or Parquet) in ``fmt`` and an
    optional JSONL of samples. Raises ``CasesError`` naming a malformed file, row or field."""
    problems = load_problems(path, fmt)
    if not problems:
        raise CasesError(f"{path}: no problems in the file")
    rows = list(read_rows(samples)) if samples is not None else None
    return evaluate_problems(problems, rows, **options)
