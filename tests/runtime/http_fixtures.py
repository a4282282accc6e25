"""Shared by the REST undo tests: real servers on loopback (json-server 0.17 and revex's own
test app) and small helpers over the journal."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest

from revex.runtime.journal import Status
from revex.runtime.runtime import Runtime
from revex.testing.rest_app import JSON_SERVER_INSTALL, create_app, serve, serve_json_server

ROOT = Path(__file__).resolve().parents[2]
JsonServer = Callable[[dict[str, Any]], AbstractContextManager[str]]


@pytest.fixture
def json_server(tmp_path: Path) -> JsonServer:
    """Starts json-server on a given database (skips when it is not installed)."""
    if not (ROOT / "tests/.node/node_modules/json-server").exists():
        pytest.skip(f"json-server not installed; run `{JSON_SERVER_INSTALL}`")

    def start(db: dict[str, Any]) -> AbstractContextManager[str]:
        return serve_json_server(db, tmp_path, ROOT)
    return start


@pytest.fixture
def app() -> Iterator[tuple[Any, str]]:
    """revex's test REST app and its base URL."""
    made = create_app()
    with serve(made) as base:
        yield made, base


def seeded(app: Any, coll: str, n: int) -> None:
    app.state.data.collections[coll] = {i: {"id": i, "name": f"n{i}"} for i in range(1, n + 1)}


@pytest.fixture
def app_url() -> Iterator[str]:
    with serve(create_app()) as base:
        yield base


def runtime(tmp_path: Path, **kwargs: Any) -> Runtime:
    return Runtime(tmp_path / "state", policy="permissive", audit=None, **kwargs)


def get(url: str) -> Any:
    return httpx.get(url).json()


def undone(rt: Runtime, episode_id: str) -> list[int]:
    return [r.action_seq for r in rt.journal.records(episode_id) if r.status is Status.UNDONE]
