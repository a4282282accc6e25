from __future__ import annotations

import json
from pathlib import Path

import pytest

from revex.errors import ConfigError
from revex.trainer.tasks import (
    Task,
    builtin_tasks,
    load_humaneval,
    load_jsonl,
    load_tasks,
    reference_texts,
    renamed_copies,
    to_dataset,
)


def _run_reference(task: Task) -> None:
    # Our own trusted reference solutions, not model output: checked in-process.
    namespace: dict[str, object] = {}
    exec(task.prompt + (task.reference or ""), namespace)
    exec(task.tests, namespace)


def test_builtin_tasks_are_well_formed_and_references_pass_their_tests() -> None:
    tasks = builtin_tasks()
    assert len(tasks) == 128  # 32 families of 4: the original and three renamed variants
    assert len({t.task_id for t in tasks}) == len(tasks)
    assert len({t.family for t in tasks}) == 32
    for task in tasks:
        assert task.prompt.startswith(f"def {task.entry_point}(")
        assert task.tests.count("assert ") == 3
        _run_reference(task)
        # an empty body (the function returns None) fails every single assert
        namespace: dict[str, object] = {}
        exec(task.prompt, namespace)
        for line in task.tests.splitlines():
            with pytest.raises(AssertionError):
                exec(line, dict(namespace))


def _arg_names(task: Task) -> set[str]:
    head = task.prompt.split("(", 1)[1].split(")", 1)[0]
    return {a.strip() for a in head.split(",")}


def test_renamed_copies_pass_their_tests_and_never_show_a_builtin_argument_name() -> None:
    tasks = builtin_tasks()
    copies = renamed_copies(tasks, 3, seed=7)
    assert len(copies) == 3 * len(tasks)
    assert len({t.task_id for t in copies} | {t.task_id for t in tasks}) == 4 * len(tasks)
    used = set().union(*(_arg_names(t) for t in tasks))
    by_id = {t.task_id: t for t in tasks}
    for copy in copies:
        source = by_id[copy.task_id.rsplit("~", 1)[0]]
        assert (copy.family, copy.entry_point, copy.tests) == (source.family,
                                                               source.entry_point, source.tests)
        fresh = _arg_names(copy)
        assert len(fresh) == len(_arg_names(source)) and not fresh & used
        # the old names are gone from the docstring and body too (quoted strings aside)
        assert copy.reference is not None
        body = copy.prompt.split("\n", 1)[1] + copy.reference
        assert not any(f" {name} " in body.replace("(", " ").replace(")", " ")
                       for name in _arg_names(source) - {"a"})  # "a" is also an article
        _run_reference(copy)
    assert renamed_copies(tasks, 3, seed=7) == copies  # seeded
    assert renamed_copies(tasks, 3, seed=8) != copies
    assert renamed_copies(tasks, 0) == []
    odd = Task("x/1", "def f(a=1):\n    pass\n", "assert f() is None\n", "f")
    assert renamed_copies([odd], 2) == []  # no plain signature: no copies


def test_builtin_reference_failing_body_is_caught_by_tests() -> None:
    task = builtin_tasks()[0]
    broken = Task(task.task_id, task.prompt, task.tests, task.entry_point, "    return 0\n")
    with pytest.raises(AssertionError):
        _run_reference(broken)


def test_load_humaneval_gives_164_problems_offline() -> None:
    tasks = load_humaneval()
    assert len(tasks) == 164
    first = tasks[0]
    assert first.task_id == "HumanEval/0"
    assert first.entry_point == "has_close_elements"
    assert "def check(candidate)" in first.tests
    assert first.reference


def test_load_jsonl_reads_rows_and_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    rows = [{"prompt": "def f():\n", "tests": "assert f() == 1\n", "entry_point": "f"},
            {"prompt": "def g():\n", "tests": "assert g() == 2\n", "entry_point": "g",
             "reference": "    return 2\n", "task_id": "mine/g"}]
    path.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")
    tasks = load_jsonl(path)
    assert [t.task_id for t in tasks] == ["row0", "mine/g"]
    assert tasks[1].reference == "    return 2\n"
    assert load_tasks(str(path)) == tasks


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"prompt": "def f():", "entry_point": "f"}', r"missing field\(s\) tests"),
        ('{"prompt": "def f():", "tests": "assert 1", "entry_point": "not valid"}',
         "not a Python identifier"),
        ('{"prompt": "def f():", "tests": 3, "entry_point": "f"}', "'tests' must be a string"),
        ('{"prompt": "  ", "tests": "assert 1", "entry_point": "f"}', "must not be empty"),
    ],
)
def test_load_jsonl_bad_row_names_file_and_line(tmp_path: Path, line: str,
                                                expected: str) -> None:
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"prompt": "def f():\n", "tests": "assert 1\n", "entry_point": "f"})
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(ConfigError, match=expected) as info:
        load_jsonl(path)
    assert f"{path}:2" in str(info.value)


def test_load_jsonl_missing_or_empty_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read task file"):
        load_jsonl(tmp_path / "absent.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ConfigError, match="no tasks found"):
        load_jsonl(empty)


def test_load_tasks_rejects_unknown_source() -> None:
    with pytest.raises(ConfigError, match="unknown task source"):
        load_tasks("mbpp")


def test_to_dataset_keeps_reward_columns() -> None:
    ds = to_dataset(builtin_tasks()[:3])
    assert ds.column_names == ["prompt", "tests", "entry_point", "task_id", "reference"]
    assert len(ds) == 3
    assert reference_texts(builtin_tasks()[:1]) == ["def add(a, b):\n    \"\"\"Return the sum of "
                                                    "a and b.\"\"\"\n    return a + b\n"]
