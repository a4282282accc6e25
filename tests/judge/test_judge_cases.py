"""The TestCases model, its loaders and errors, and the trusted comparisons (no sandbox)."""

from __future__ import annotations

import pytest

from revex.errors import ConfigError
from revex.judge import Compare, TestCases, load_cases
from revex.judge.cases import CasesError
from revex.judge.compare import output_matches, value_matches


def test_apps_codecontests_and_json_shapes_load_as_stdio() -> None:
    apps = TestCases.from_io({"inputs": ["1 2\n"], "outputs": ["3\n"]})
    cc = TestCases.from_io({"input": ["1 2\n"], "output": ["3\n"]})
    text = TestCases.from_io('{"inputs": ["1 2\\n"], "outputs": [["3", "4"]]}')
    assert apps.kind == cc.kind == text.kind == "stdio"
    assert apps.cases[0].input == "1 2\n" and cc.cases[0].expected == "3\n"
    assert text.cases[0].expected == "3\n4"  # APPS' list-of-lines outputs


def test_fn_name_makes_call_cases_with_json_arguments() -> None:
    tc = TestCases.from_io({"fn_name": "f", "inputs": [[1, [2, 3]], "4\n\"x\""],
                            "outputs": [[5], 6]})
    assert tc.kind == "call" and tc.fn_name == "f"
    assert tc.cases[0].input == [1, [2, 3]] and tc.cases[1].input == [4, "x"]


@pytest.mark.parametrize(("data", "field"), [
    ({"inputs": ["1"], "outputs": [3]}, r"test_cases\.outputs\[0\]: expected a string, got int"),
    ({"inputs": ["1", "2"], "outputs": ["3"]}, "2 inputs but 1 outputs"),
    ({"inputs": "1", "outputs": ["3"]}, r"test_cases\.inputs: expected a list, got str"),
    ({"outputs": ["3"]}, r"test_cases\.input: expected a list, got NoneType"),
    ({"inputs": [], "outputs": []}, "at least one case"),
    ({"fn_name": "a b", "inputs": [[1]], "outputs": [1]}, r"fn_name: expected an identifier"),
    ({"fn_name": "f", "inputs": [5], "outputs": [1]},
     r"inputs\[0\]: expected a list of arguments, got int"),
    ("{not json", "not valid JSON"),
])
def test_bad_cases_name_the_field(data: object, field: str) -> None:
    with pytest.raises(CasesError, match=field) as info:
        TestCases.from_io(data)  # type: ignore[arg-type]
    assert isinstance(info.value, ConfigError)


def test_mbpp_asserts_find_their_entry_point() -> None:
    tc = TestCases.from_asserts(["assert len(sq(2)) == 1", "assert sq(3) == [9]"],
                                setup="import math")
    assert tc.kind == "asserts" and tc.entry_point == "sq" and tc.tests is not None
    assert tc.tests.startswith("import math\n")
    with pytest.raises(CasesError, match=r"test_list\[1\]"):
        TestCases.from_asserts(["assert f(1)", ""])
    with pytest.raises(CasesError, match="no function call"):
        TestCases.from_asserts(["assert 1 == 1"])


def test_load_cases_recognises_every_shape() -> None:
    assert load_cases({"inputs": ["1"], "outputs": ["1"]}).kind == "stdio"
    assert load_cases(["assert f(1) == 1"]).kind == "asserts"
    assert load_cases({"test": "def check(candidate):\n    assert candidate(1)\n",
                       "entry_point": "f"}).kind == "check"
    with pytest.raises(CasesError, match="not a known shape"):
        load_cases(42)


def test_compare_modes() -> None:
    exact, lines, tokens = Compare("exact"), Compare("lines"), Compare()
    assert output_matches("3\n", "3\n", exact) and not output_matches("3", "3\n", exact)
    assert output_matches("1 2  \r\n3\n\n", "1 2\n3", lines)
    assert not output_matches("1  2\n3", "1 2\n3", lines)
    assert output_matches("1  2\n\n3 ", "1 2 3", tokens)
    assert not output_matches("1 2", "1 2 3", tokens) and not output_matches("", "0", tokens)
    with pytest.raises(CasesError, match=r"compare\.mode"):
        Compare("fuzzy")
    with pytest.raises(CasesError, match=r"compare\.abs_tol"):
        Compare(abs_tol=-1)
    with pytest.raises(CasesError, match=r"compare\.checker_language"):
        Compare(checker="x", checker_language="cobol")
    with pytest.raises(CasesError, match=r"compare\.checker must"):
        Compare(checker="  ")


def test_float_tolerance_is_absolute_or_relative_and_numbers_only() -> None:
    abs_ = Compare(abs_tol=1e-6)
    rel = Compare(rel_tol=1e-3)
    assert output_matches("0.3333333", "0.33333333", abs_)
    assert not output_matches("0.334", "0.333", abs_)
    assert output_matches("1000.5", "1000", rel) and not output_matches("1002", "1000", rel)
    assert output_matches("0.333", "0.333", Compare())
    assert not output_matches("nan", "0.1", abs_) and not output_matches("1_0", "10", abs_)
    assert not output_matches("abc", "abd", abs_)
    assert not output_matches("0.3333333", "0.33333333", Compare())  # no tolerance: exact


def test_value_matches_like_apps() -> None:
    cmp = Compare()
    assert value_matches((1, 2), [1, 2], cmp)  # tuples come back as lists
    assert value_matches(7, [7], cmp)  # APPS wraps expected values in a list
    assert not value_matches(True, 1, cmp) and not value_matches(1, True, cmp)
    assert not value_matches("1", 1, cmp)
    assert value_matches(0.1 + 0.2, 0.3, Compare(abs_tol=1e-9))
    assert not value_matches(0.1 + 0.2, 0.3, cmp)
    assert value_matches({"a": [1.0]}, {"a": [1]}, cmp)
