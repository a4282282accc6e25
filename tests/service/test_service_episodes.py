"""The native episode API of `revex serve`: an agent acting over HTTP goes through the same
pipeline (policy, journal, rollback) as the Python API. Real uvicorn on loopback, real nsjail,
real SQLite."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from revex import Runtime
from revex.service import ServiceConfig, create_app
from revex.testing.rest_app import serve


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[str, Path, object]]:
    root = tmp_path / "episodes"
    db = tmp_path / "app.db"
    config = ServiceConfig(workspace_root=str(root), databases={"app": f"sqlite:///{db}"},
                           idle_timeout_s=3600)
    with Runtime(state_dir=tmp_path / "state", policy="default", audit=None) as rt:
        app = create_app(rt, config, log_stream=io.StringIO())
        try:
            with serve(app) as url:
                yield url, root, app
        finally:
            app.state.episodes.close_all()


def call(method: str, url: str, **kw: object) -> httpx.Response:
    return httpx.request(method, url, timeout=60, **kw)  # type: ignore[arg-type]


def test_an_agent_edits_checkpoints_rolls_back_and_commits(service: tuple) -> None:
    base, root, _ = service
    ep = call("POST", f"{base}/v1/episodes", json={"policy": "default"}).json()
    e = f"{base}/v1/episodes/{ep['id']}"
    ws = root / ep["workspace"]
    assert call("POST", f"{e}/fs", json={"op": "write", "path": "a.txt", "text": "one"}
                ).json() == {"bytes": 3}
    cp = call("POST", f"{e}/checkpoints", json={"name": "after-a"}).json()["checkpoint"]
    call("POST", f"{e}/fs", json={"op": "write", "path": "a.txt", "text": "two"})
    call("POST", f"{e}/fs", json={"op": "mkdir", "path": "d"})
    call("POST", f"{e}/fs", json={"op": "write", "path": "d/b.bin", "data_b64": "AAEC"})
    assert sorted(call("POST", f"{e}/fs", json={"op": "listdir", "path": "."}
                       ).json()["entries"]) == ["a.txt", "d"]
    assert call("POST", f"{e}/rollback", json={"to": cp}).json() == {"undone": 3}
    assert (ws / "a.txt").read_text() == "one" and not (ws / "d").exists()
    assert call("POST", f"{e}/fs", json={"op": "read", "path": "a.txt"}).json() == {"text": "one"}
    assert call("POST", f"{e}/commit").json() == {"status": "committed"}
    assert (ws / "a.txt").read_text() == "one"
    kinds = [r["kind"] for r in call("GET", f"{e}/journal").json()["records"]]
    assert "fs.write" in kinds and "episode.commit" in kinds
    assert call("POST", f"{e}/undo").json() == {"status": "undone"}
    assert not (ws / "a.txt").exists()
    assert call("POST", f"{e}/fs", json={"op": "read", "path": "a.txt"}).status_code == 404


def test_refused_actions_are_403_naming_the_rule_and_change_nothing(service: tuple) -> None:
    base, root, _ = service
    ep = call("POST", f"{base}/v1/episodes", json={}).json()
    e = f"{base}/v1/episodes/{ep['id']}"
    resp = call("POST", f"{e}/fs", json={"op": "write", "path": "../escape.txt", "text": "x"})
    assert resp.status_code == 403, resp.text
    assert resp.json()["rule"] == "path-safety" and "climbs out" in resp.json()["detail"]
    assert not (root / "escape.txt").exists()
    # the sandbox has no network: connecting out fails inside, the run is a `failed` result
    resp = call("POST", f"{e}/run", json={"code": "import socket\nsocket.create_connection("
                                                  "('127.0.0.1', 1), timeout=1)"})
    assert resp.status_code == 200 and resp.json()["status"] == "failed"
    journal = call("GET", f"{e}/journal").json()["records"]
    denied = [(r["kind"], r["rule"]) for r in journal if r["status"] == "DENIED"]
    assert denied == [("fs.write", "path-safety")]


def test_run_changes_are_journaled_and_rolled_back_on_close(service: tuple) -> None:
    base, root, _ = service
    ep = call("POST", f"{base}/v1/episodes", json={}).json()
    e = f"{base}/v1/episodes/{ep['id']}"
    ws = root / ep["workspace"]
    out = call("POST", f"{e}/run", json={"code": "open('made.txt','w').write('hi')\nprint(7)"}
               ).json()
    assert out["status"] == "ok" and out["stdout"] == "7\n" and out["changes_applied"] is True
    assert (ws / "made.txt").read_text() == "hi"
    assert call("DELETE", e).json() == {"status": "rolled_back"}
    assert not (ws / "made.txt").exists()
    assert call("POST", f"{e}/fs", json={"op": "exists", "path": "x"}).status_code == 404


def test_sql_through_a_configured_database_is_journaled_and_undone(service: tuple) -> None:
    base, _, _ = service
    ep = call("POST", f"{base}/v1/episodes", json={"databases": ["app"]}).json()
    e = f"{base}/v1/episodes/{ep['id']}"
    sql = f"{e}/sql"
    assert call("POST", sql, json={"database": "app", "statement":
                                   "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"}
                ).status_code == 200
    assert call("POST", sql, json={"database": "app", "statement":
                                   "INSERT INTO t (v) VALUES (:v)", "params": {"v": "x"}}
                ).json() == {"rowcount": 1}
    rows = call("POST", sql, json={"database": "app", "statement": "SELECT id, v FROM t"}).json()
    assert rows == {"columns": ["id", "v"], "rows": [[1, "x"]]}
    assert call("POST", f"{e}/rollback", json={}).json()["undone"] >= 2
    gone = call("POST", sql, json={"database": "app", "statement":
                                   "SELECT name FROM sqlite_master WHERE name = 't'"}).json()
    assert gone["rows"] == []


def test_bad_requests_name_the_problem(service: tuple) -> None:
    base, _, _ = service
    resp = call("POST", f"{base}/v1/episodes", json={"databases": ["prod"]})
    assert resp.status_code == 422 and "unknown database" in resp.text
    resp = call("POST", f"{base}/v1/episodes", json={"policy": "/etc/my.toml"})
    assert resp.status_code == 422 and "policy must be one of" in resp.text
    assert call("POST", f"{base}/v1/episodes/ep-nope/fs",
                json={"op": "read", "path": "x"}).status_code == 404
    ep = call("POST", f"{base}/v1/episodes", json={}).json()
    e = f"{base}/v1/episodes/{ep['id']}"
    resp = call("POST", f"{e}/fs", json={"op": "write", "path": "x"})
    assert resp.status_code == 422 and "exactly one of" in resp.text
    resp = call("POST", f"{e}/rollback", json={"to": 99})
    assert resp.status_code == 404 and "no checkpoint 99" in resp.text


def test_idle_episodes_are_rolled_back_so_a_vanished_client_leaks_nothing(
        tmp_path: Path) -> None:
    config = ServiceConfig(workspace_root=str(tmp_path / "eps"), idle_timeout_s=0.5)
    with Runtime(state_dir=tmp_path / "state", audit=None) as rt:
        app = create_app(rt, config, log_stream=io.StringIO())
        with serve(app) as base:
            ep = call("POST", f"{base}/v1/episodes", json={}).json()
            call("POST", f"{base}/v1/episodes/{ep['id']}/fs",
                 json={"op": "write", "path": "left.txt", "text": "x"})
            time.sleep(1.0)
            call("POST", f"{base}/v1/episodes", json={})  # a new episode reaps idle ones
            listed = [e["id"] for e in call("GET", f"{base}/v1/episodes").json()["episodes"]]
            assert ep["id"] not in listed
            assert not (tmp_path / "eps" / ep["workspace"] / "left.txt").exists()
            app.state.episodes.close_all()
        assert (rt.journal.episode(ep["id"]) or {}).get("status") == "rolled_back"
