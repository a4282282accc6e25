"""Fixtures for the sandbox tests: real backends, real processes, world-traversable temp dirs
(the jailed user 65534 must be able to reach bound paths)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

from revex.runtime.sandbox.nsjail import NsjailBackend
from revex.runtime.sandbox.process import ProcessBackend
from revex.runtime.sandbox.warm import WarmPythonBackend


@pytest.fixture(scope="session")
def nsjail() -> NsjailBackend:
    return NsjailBackend()


@pytest.fixture(scope="session")
def warm() -> Iterator[WarmPythonBackend]:
    with WarmPythonBackend(size=2) as be:
        yield be


@pytest.fixture(scope="session")
def process_backend() -> ProcessBackend:
    return ProcessBackend()


@pytest.fixture
def open_dir() -> Iterator[str]:
    """A fresh directory under /tmp that the sandbox user can traverse."""
    path = tempfile.mkdtemp(prefix="revex-test-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
