"""Without the docker SDK, the docker backend is a clear SandboxError and `doctor` reports it
instead of crashing (CI without the `docker` extra)."""

from __future__ import annotations

import sys

import pytest

from revex.errors import SandboxError
from revex.runtime.sandbox import doctor, select_backend


def test_missing_sdk_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "docker", None)  # `import docker` now raises ImportError
    with pytest.raises(SandboxError, match=r"pip install 'revex\[docker\]'"):
        select_backend("docker")
    rows = {name: (ok, why) for name, ok, why in doctor()}
    assert rows["backend docker"][0] is False
    assert "docker SDK" in rows["backend docker"][1]
