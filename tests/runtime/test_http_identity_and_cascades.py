"""Which resource an HTTP action touched: identity without the query (issue 10.8), declared
server-side cascades (10.9), and what a restored item keeps (11.8). Real servers on loopback:
our FastAPI test app and json-server 0.17."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from revex.errors import ConfigError, ConflictError
from revex.runtime.effects.http_compensations import Compensations
from tests.runtime.http_fixtures import ROOT, JsonServer, app_url, get, json_server, runtime, undone

__all__ = ["app_url", "json_server"]  # fixtures, used by name

# ---- 10.8: the query string is not part of the resource ---------------------------------------

def test_resource_identity_ignores_query_fragment_default_port_and_case() -> None:
    from revex.runtime.effects.http_inverse import resource_key

    same = ["http://API.example.com:80/items/1?source=ui", "http://api.example.com/items/1#x",
            "HTTP://api.example.com/items/1/", "http://api.example.com/items/%31"]
    assert {resource_key(u) for u in same} == {"http://api.example.com/items/1"}
    assert resource_key("https://a.example:443/") == "https://a.example/"
    assert resource_key("https://a.example") == "https://a.example/"
    assert resource_key("https://a.example:8443/x") == "https://a.example:8443/x"
    assert resource_key("http://a.example/items/1") != resource_key("http://a.example/items/10")
    assert resource_key("http://a.example/a%2Fb") != resource_key("http://a.example/a/b")


def test_patches_with_and_without_a_query_roll_back_without_a_false_conflict(
        json_server: JsonServer, tmp_path: Path) -> None:
    db = {"items": [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}]}
    with json_server(db) as base:
        with runtime(tmp_path) as rt:
            with rt.episode(tmp_path / "ws") as ep:
                ep.http.patch(f"{base}/items/1?source=ui", json={"name": "ui"})
                ep.http.patch(f"{base}/items/1", json={"name": "api"})
                ep.http.patch(f"{base}/items/2/", json={"name": "slash"})
                ep.http.patch(f"{base}/items/2", json={"name": "plain"})
            assert rt.episodes()[0].status == "rolled_back"
            assert get(f"{base}/items") == db["items"]
            with rt.episode(tmp_path / "ws", on_exit="commit") as ep2:
                ep2.http.patch(f"{base}/items/1?source=ui", json={"name": "ui"})
                ep2.http.patch(f"{base}/items/1", json={"name": "api"})
            assert rt.undo(ep2.id) == 2
        assert get(f"{base}/items") == db["items"]


CRASHING_CHILD = """
import sys
from revex.runtime.runtime import Runtime
base, state_dir, ws, marker = sys.argv[1:5]
ep = Runtime(state_dir, policy="permissive", audit=None).episode(ws)
ep.http.patch(base + "/items/1?source=ui", json={"name": "ui"})
ep.http.patch(base + "/items/1", json={"name": "api"})
open(marker, "w").close()
ep.http.patch(base + "/items/1?delay=3", json={"name": "in flight"})
"""


def test_recovery_after_a_crash_between_query_variants_of_one_resource(
        app_url: str, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    httpx.post(f"{app_url}/items", json={"name": "one"}).raise_for_status()
    before = get(f"{app_url}/_state")
    marker = tmp_path / "marker"
    child = subprocess.Popen([sys.executable, "-c", CRASHING_CHILD, app_url,
                              str(tmp_path / "state"), str(tmp_path / "ws"), str(marker)],
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 30
        while not marker.exists() or get(f"{app_url}/items/1")["name"] != "in flight":
            assert time.monotonic() < deadline and child.poll() is None
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    with runtime(tmp_path) as rt:  # recovers on open
        [info] = rt.episodes()
        assert info.status == "recovered"
        assert sorted(undone(rt, info.id)) == [1, 2, 3]
    assert get(f"{app_url}/_state") == before


# ---- 10.9: declared server-side cascades -------------------------------------------------------

CASCADE_TOML = """
[services.api]
host = "127.0.0.1:*"

[[services.api.operations]]
match = "DELETE /users/{id}"
cascades = ["/memberships?userId={id}"]
"""


def cascade_db() -> dict[str, Any]:
    return {"users": [{"id": 1, "name": "ann"}, {"id": 2, "name": "bob"}],
            "memberships": [{"id": 1, "userId": 1, "group": "a"},
                            {"id": 2, "userId": 2, "group": "b"},
                            {"id": 3, "userId": 1, "group": "c"}]}


def by_id(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(items, key=lambda item: item["id"])


def test_a_declared_cascade_is_captured_and_restored_on_json_server(
        json_server: JsonServer, tmp_path: Path) -> None:
    toml = tmp_path / "services.toml"
    toml.write_text(CASCADE_TOML)
    db = cascade_db()
    with json_server(db) as base:
        with runtime(tmp_path) as rt, \
                rt.episode(tmp_path / "ws", compensations=toml, on_exit="commit") as ep:
            ep.http.delete(f"{base}/users/1")
            assert get(f"{base}/memberships") == [db["memberships"][1]]  # the server cascaded
            episode_id = ep.id
        with runtime(tmp_path) as rt2:  # the captured items are journaled: no registry needed
            assert rt2.undo(episode_id) == 1
        assert by_id(get(f"{base}/users")) == db["users"]
        assert by_id(get(f"{base}/memberships")) == db["memberships"]


def test_a_declared_cascade_on_our_app_in_code_rolls_back_and_checks_drift(
        app_url: str, tmp_path: Path) -> None:
    httpx.post(f"{app_url}/users", json={"name": "ann"}).raise_for_status()
    for group in ("a", "b"):
        httpx.post(f"{app_url}/memberships", json={"userId": 1, "group": group})
    before = get(f"{app_url}/_state")
    comp = Compensations()
    comp.cascade("DELETE", "/users/{id}", "/memberships?userId={id}")
    with runtime(tmp_path, compensations=comp) as rt, \
            rt.episode(tmp_path / "ws", on_exit="commit") as ep:
        ep.http.delete(f"{app_url}/users/1")
        assert get(f"{app_url}/memberships") == []
        # someone re-creates one of the cascaded memberships differently: drift, nothing sent
        httpx.put(f"{app_url}/memberships/2", json={"userId": 9, "group": "x"})
        drifted = get(f"{app_url}/_state")
        with pytest.raises(ConflictError, match="/memberships/2"):
            ep.rollback()
        assert get(f"{app_url}/_state") == drifted
        httpx.delete(f"{app_url}/memberships/2")
        assert ep.rollback() == 1
    assert get(f"{app_url}/_state") == before


def test_an_undeclared_cascade_is_not_seen(json_server: JsonServer, tmp_path: Path) -> None:
    # what the README says: without a declaration, what the server deleted on its own is lost
    db = cascade_db()
    with json_server(db) as base:
        with runtime(tmp_path) as rt, rt.episode(tmp_path / "ws") as ep:
            ep.http.delete(f"{base}/users/1")
        assert by_id(get(f"{base}/users")) == db["users"]
        assert get(f"{base}/memberships") == [db["memberships"][1]]


def test_cascades_need_a_reversible_operation() -> None:
    with pytest.raises(ConfigError, match="cascades"):
        Compensations.load({"services": {"s": {"operations": [
            {"match": "DELETE /users/{id}", "cascades": "/memberships?userId={id}"}]}}})
    for bad in ("/m?userId={nope}", "//elsewhere.example/m?userId={id}", "m?userId={id}"):
        with pytest.raises(ConfigError, match="cascades"):
            Compensations.load({"services": {"s": {"operations": [
                {"match": "DELETE /users/{id}", "cascades": [bad]}]}}})
    with pytest.raises(ConfigError, match="cascades"):
        Compensations().cascade("DELETE", "/users/{id}", "/m?userId={nope}")
    with pytest.raises(ConfigError, match="cascades"):
        Compensations.load({"services": {"s": {"operations": [
            {"match": "DELETE /users/{id}", "cascades": ["/m?userId={id}"],
             "irreversible": True}]}}})
    comp = Compensations()
    comp.cascade("DELETE", "/users/{id}", "/memberships?userId={id}")
    # a path value is quoted whole: it cannot add a query field to the cascade's GET
    assert comp.cascades_for("DELETE", "h", 80, "/users/1&all=1") == [
        "/memberships?userId=1%26all%3D1"]


# ---- 11.8: what a restored item keeps and what it does not -------------------------------------

def test_a_recreated_item_is_exact_but_json_server_appends_it(
        json_server: JsonServer, tmp_path: Path) -> None:
    db = {"users": [{"id": 1, "name": "ann"}, {"id": 2, "name": "bob"}]}
    with json_server(db) as base:
        with runtime(tmp_path) as rt, rt.episode(tmp_path / "ws") as ep:
            ep.http.delete(f"{base}/users/1")
        listing = get(f"{base}/users")
        assert by_id(listing) == db["users"]  # content exact
        assert [u["id"] for u in listing] == [2, 1]  # position not (documented in README)
