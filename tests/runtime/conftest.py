"""Fixtures for the runtime tests: a Runtime in a temp state dir, and real databases.

Each database test gets a database of its own (random name) on the servers named by
``REVEX_TEST_PG_URL`` and ``REVEX_TEST_MYSQL_URL`` (defaults: the local test servers). A server
that cannot be reached skips its tests with a message naming the variable; with
``REVEX_REQUIRE_DBS=1`` that skip is a failure instead.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

PG_URL = os.environ.get("REVEX_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MYSQL_URL = os.environ.get("REVEX_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
BACKENDS = ["sqlite", "postgres", "mariadb"]


def _unavailable(what: str, var: str, exc: Exception) -> None:
    message = f"{what} not reachable ({exc.__class__.__name__}); set {var} to a server URL"
    if os.environ.get("REVEX_REQUIRE_DBS") == "1":
        pytest.fail(message + " (REVEX_REQUIRE_DBS=1 makes this a failure)")
    pytest.skip(message)


def _server_db(server: str, var: str, quote: str) -> Iterator[str]:
    name = f"revex_t_{secrets.token_hex(5)}"
    admin = create_engine(server, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {quote}{name}{quote}"))
    except OperationalError as exc:
        admin.dispose()
        _unavailable(make_url(server).get_backend_name(), var, exc)
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            extra = " WITH (FORCE)" if quote == '"' else ""
            conn.execute(text(f"DROP DATABASE IF EXISTS {quote}{name}{quote}{extra}"))
        admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from _server_db(PG_URL, "REVEX_TEST_PG_URL", '"')


@pytest.fixture
def mysql_url() -> Iterator[str]:
    yield from _server_db(MYSQL_URL, "REVEX_TEST_MYSQL_URL", "`")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ws' / 'app.db'}"


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh, empty database on each backend."""
    fixture = {"sqlite": "sqlite_url", "postgres": "pg_url", "mariadb": "mysql_url"}
    url: str = request.getfixturevalue(fixture[request.param])
    return url


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    return ws


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The SQL crash loops marked ``slow`` run only when asked for (``-m slow``)."""
    if "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow; run with -m slow")
    for item in items:
        if item.get_closest_marker("slow") and item.path.name.startswith("test_sql"):
            item.add_marker(skip)
