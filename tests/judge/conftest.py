"""Fixtures for the judge tests: one real warm nsjail backend for the module (Python runs
warm, every other language runs cold inside it)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from revex.runtime.sandbox import languages
from revex.runtime.sandbox.warm import WarmPythonBackend


@pytest.fixture(scope="module")
def be() -> Iterator[WarmPythonBackend]:
    with WarmPythonBackend(size=2) as backend:
        yield backend


#: Languages whose missing toolchain fails the tests instead of skipping them (CI sets it).
REQUIRED = {n for n in os.environ.get("REVEX_REQUIRE_LANGUAGES", "").split(",") if n}


def lang_param(name: str) -> object:
    """A pytest param for ``name``, skipped with the doctor's reason when its toolchain is
    missing (never silently), or failing when ``REVEX_REQUIRE_LANGUAGES`` names it."""
    if name in languages.NATIVE:
        return pytest.param(name, id=name)
    tc = languages.toolchain(name)
    if tc.ok:
        return pytest.param(name, id=name)
    reason = f"{name} toolchain missing: {tc.missing}"
    if name in REQUIRED:  # runs and fails ("not available here: ..."): CI needs it
        return pytest.param(name, id=name)
    return pytest.param(name, id=name, marks=pytest.mark.skip(reason=reason))
