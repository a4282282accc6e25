"""Fixtures for the judge tests: one real warm nsjail backend for the module (Python runs
warm, every other language runs cold inside it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from revex.runtime.sandbox import languages
from revex.runtime.sandbox.warm import WarmPythonBackend


@pytest.fixture(scope="module")
def be() -> Iterator[WarmPythonBackend]:
    with WarmPythonBackend(size=2) as backend:
        yield backend


def lang_param(name: str) -> object:
    """A pytest param for ``name``, skipped with the doctor's reason when its toolchain is
    missing (never silently)."""
    if name in languages.NATIVE:
        return pytest.param(name, id=name)
    tc = languages.toolchain(name)
    return pytest.param(name, id=name, marks=() if tc.ok else pytest.mark.skip(
        reason=f"{name} toolchain missing: {tc.missing}"))
