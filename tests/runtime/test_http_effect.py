"""The HTTP effect against real servers on loopback: our REST app (uvicorn) and json-server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from revex.errors import ActionFailed, ConflictError, PolicyViolation
from revex.policies.model import Policy
from revex.runtime.effects.http_compensations import (
    CompensationContext,
    CompensationRequest,
    Compensations,
)
from revex.runtime.journal import Status
from revex.runtime.runtime import Runtime
from revex.testing.rest_app import JSON_SERVER_INSTALL, create_app, serve, serve_json_server

ALLOW_LOOPBACK = """
[policy]
name = "loopback"
default = "deny"

[[rules]]
name = "loopback-api"
kind = "http.*"
host = "127.0.0.1"
irreversible = false
decision = "allow"
"""


@pytest.fixture
def app_url() -> Iterator[tuple[Any, str]]:
    app = create_app()
    with serve(app) as base:
        yield app, base


def state(base: str) -> dict[str, Any]:
    return dict(httpx.get(base + "/_state").json())


def seed(base: str, n: int = 3) -> None:
    for i in range(n):
        httpx.post(f"{base}/items", json={"name": f"item{i}", "tags": [i]}).raise_for_status()
    httpx.post(f"{base}/users", json={"name": "ann"}).raise_for_status()


def runtime(tmp_path: Path, policy: Any = "permissive", **kwargs: Any) -> Runtime:
    return Runtime(tmp_path / "state", policy=policy, **kwargs)


def mixed_sequence(http: httpx.Client, base: str) -> None:
    new = http.post(f"{base}/items", json={"name": "new"}).json()
    http.put(f"{base}/items/{new['id']}", json={"name": "new2"})
    http.put(f"{base}/items/1", json={"name": "replaced"})
    http.patch(f"{base}/items/2", json={"extra": True})
    http.delete(f"{base}/items/3")
    http.put(f"{base}/items/3", json={"name": "reborn"})
    http.post(f"{base}/users", json={"name": "bob"})
    http.delete(f"{base}/users/1")


# ---- policy ------------------------------------------------------------------------------------

def test_default_policy_denies_a_host_it_does_not_list(app_url: Any, tmp_path: Path) -> None:
    app, base = app_url
    with runtime(tmp_path, "default") as rt, rt.episode(tmp_path / "ws") as ep:
        before = app.state.data.requests
        with pytest.raises(PolicyViolation) as info:
            ep.http.get(base + "/items")
        assert info.value.rule == "default:default"
        assert app.state.data.requests == before
        assert rt.journal.records(ep.id)[-1].status is Status.DENIED


def test_a_user_policy_allows_a_listed_host(app_url: Any, tmp_path: Path) -> None:
    _, base = app_url
    policy = Policy.from_toml(ALLOW_LOOPBACK)
    with runtime(tmp_path, policy) as rt, rt.episode(tmp_path / "ws") as ep:
        assert ep.http.get(base + "/items").status_code == 200
        done = rt.journal.records(ep.id)[-1]
        assert done.status is Status.DONE and done.rule == "loopback-api"


# ---- inverses from HTTP semantics --------------------------------------------------------------

def test_rollback_of_mixed_create_update_delete_restores_every_resource(
        app_url: Any, tmp_path: Path) -> None:
    _, base = app_url
    seed(base)
    before = state(base)
    with runtime(tmp_path) as rt, rt.episode(tmp_path / "ws") as ep:
        mixed_sequence(ep.http, base)
        assert state(base) != before
    assert state(base) == before


def test_rollback_to_a_checkpoint_keeps_earlier_requests(app_url: Any, tmp_path: Path) -> None:
    _, base = app_url
    seed(base)
    with runtime(tmp_path) as rt, rt.episode(tmp_path / "ws", on_exit="commit") as ep:
        ep.http.put(f"{base}/items/1", json={"name": "kept"})
        middle = state(base)
        cp = ep.checkpoint()
        ep.http.delete(f"{base}/items/2")
        ep.http.post(f"{base}/items", json={"name": "gone"})
        assert ep.rollback(to=cp) == 2
        assert state(base) == middle


def test_undo_after_commit_from_a_new_runtime(app_url: Any, tmp_path: Path) -> None:
    _, base = app_url
    seed(base)
    before = state(base)
    with runtime(tmp_path) as rt, rt.episode(tmp_path / "ws", on_exit="commit") as ep:
        mixed_sequence(ep.http, base)
        episode_id = ep.id
    changed = state(base)
    with runtime(tmp_path) as rt2:
        assert rt2.undo(episode_id) == 8
    assert state(base) == before != changed


def test_drift_raises_conflict_sends_nothing_and_force_overwrites(
        app_url: Any, tmp_path: Path) -> None:
    _, base = app_url
    seed(base)
    before = state(base)
    with runtime(tmp_path) as rt, rt.episode(tmp_path / "ws", on_exit="commit") as ep:
        ep.http.put(f"{base}/items/1", json={"name": "ours"})
        ep.http.post(f"{base}/items", json={"name": "made"})
        episode_id = ep.id
    httpx.put(f"{base}/items/1", json={"name": "someone else"})
    drifted = state(base)
    with runtime(tmp_path) as rt2:
        with pytest.raises(ConflictError) as info:
            rt2.undo(episode_id)
        assert "/items/1" in str(info.value) and len(info.value.conflicts) == 1
        assert state(base) == drifted
        assert rt2.undo(episode_id, force=True) == 2
    assert state(base) == before


def test_undo_sends_if_match_with_the_etag_the_forward_call_left(
        app_url: Any, tmp_path: Path) -> None:
    app, base = app_url
    seed(base)
    with runtime(tmp_path) as rt, rt.episode(tmp_path / "ws") as ep:
        left = ep.http.put(f"{base}/items/1", json={"name": "ours"}).headers["etag"]
        ep.http.delete(f"{base}/items/2")  # recreated without If-Match: nothing to match
    assert app.state.data.if_match == [left]


def test_compensations_can_be_declared_in_the_policy_http_table(
        app_url: Any, tmp_path: Path) -> None:
    _, base = app_url
    policy = Policy.from_toml("""
[policy]
name = "with-services"
default = "allow"

[http.services.counter]
host = "127.0.0.1"

[[http.services.counter.operations]]
match = "POST /counter/increment"
compensate = "POST /counter/decrement"
""")
    with runtime(tmp_path, policy) as rt, rt.episode(tmp_path / "ws") as ep:
        ep.http.post(f"{base}/counter/increment")
        assert state(base)["counter"] == 1
    assert state(base)["counter"] == 0


def test_undo_is_idempotent_when_the_target_already_holds_the_pre_image(
        app_url: Any, tmp_path: Path) -> None:
    _, base = app_url
    seed(base)
    before = state(base)
    with runtime(tmp_path) as rt, rt.episode(tmp_path / "ws", on_exit="commit") as ep:
        ep.http.put(f"{base}/items/1", json={"name": "ours"})
        episode_id = ep.id
    httpx.put(f"{base}/items/1", json={"name": "item0", "tags": [0]})  # someone undid it
    with runtime(tmp_path) as rt2:
        assert rt2.undo(episode_id) == 1
    assert state(base) == before


def test_async_client_goes_through_the_same_pipeline(app_url: Any, tmp_path: Path) -> None:
    _, base = app_url
    seed(base)
    before = state(base)

    async def act(client: httpx.AsyncClient) -> None:
        created = await client.post(f"{base}/items", json={"name": "async"})
        assert created.status_code == 201
        await client.delete(f"{base}/items/1")

    with runtime(tmp_path) as rt, rt.episode(tmp_path / "ws") as ep:
        asyncio.run(act(ep.ahttp))
        kinds = [r.status for r in rt.journal.records(ep.id) if r.kind == "http.request"]
        assert kinds.count(Status.DONE) == 2
    assert state(base) == before


def test_a_half_way_failure_is_probed_and_undone(app_url: Any, tmp_path: Path) -> None:
    _, base = app_url
    seed(base)
    before = state(base)
    with runtime(tmp_path) as rt, rt.episode(tmp_path / "ws") as ep:
        response = ep.http.post(f"{base}/items?fail=1", json={"name": "x"})
        assert response.status_code == 500
        assert len(state(base)["collections"]["items"]) == 4
    assert state(base) == before


# ---- compensations and irreversible operations -------------------------------------------------

def test_a_non_idempotent_call_without_an_id_needs_a_declared_compensation(
        app_url: Any, tmp_path: Path) -> None:
    _, base = app_url
    with runtime(tmp_path) as rt, rt.episode(tmp_path / "ws") as ep:
        ep.http.post(f"{base}/counter/increment")
        with pytest.raises(ConflictError, match="could not be determined"):
            ep.rollback()
        ep.rollback(force=True)
    assert state(base)["counter"] == 1

    comp = Compensations()

    @comp.compensate("POST", "/counter/increment")
    def decrement(ctx: CompensationContext) -> CompensationRequest:
        return CompensationRequest("POST", "/counter/decrement")

    with Runtime(tmp_path / "state2", policy="permissive", compensations=comp) as rt2, \
            rt2.episode(tmp_path / "ws2") as ep2:
        ep2.http.post(f"{base}/counter/increment")
        ep2.http.post(f"{base}/counter/increment")
        assert state(base)["counter"] == 3
    assert state(base)["counter"] == 1


def test_a_payment_is_refunded_by_the_compensation_declared_in_toml(
        app_url: Any, tmp_path: Path) -> None:
    _, base = app_url
    toml = tmp_path / "services.toml"
    toml.write_text("""
[services.payments]
host = "127.0.0.1:*"

[[services.payments.operations]]
match = "POST /payments"
compensate = "POST /payments/{response.id}/refund"
""")
    with runtime(tmp_path) as rt, rt.episode(tmp_path / "ws", compensations=toml,
                                             on_exit="commit") as ep:
        paid = ep.http.post(f"{base}/payments", json={"amount": 10}).json()
        episode_id = ep.id
        done = [r for r in rt.journal.records(episode_id) if r.status is Status.DONE][-1]
    assert state(base)["collections"]["payments"][0]["status"] == "captured"
    assert done.result["compensation"]["url"] == f"{base}/payments/{paid['id']}/refund"
    with runtime(tmp_path) as rt2:  # the compensation is journaled: no registry needed
        assert rt2.undo(episode_id) == 1
    assert state(base)["collections"]["payments"][0]["status"] == "refunded"


IRREVERSIBLE = {"services": {"mail": {"operations": [
    {"match": "POST /emails", "irreversible": True, "reason": "sends an email"}]}}}


def test_an_irreversible_call_is_denied_unless_a_rule_allows_it(
        app_url: Any, tmp_path: Path) -> None:
    _, base = app_url
    policy = Policy.from_toml(ALLOW_LOOPBACK)
    with runtime(tmp_path, policy, compensations=IRREVERSIBLE) as rt, \
            rt.episode(tmp_path / "ws") as ep, pytest.raises(PolicyViolation):
        ep.http.post(f"{base}/emails", json={"to": "a@example.com"})
    assert state(base)["emails"] == []

    allowing = Policy.from_toml(ALLOW_LOOPBACK.replace('[[rules]]', '''[[rules]]
name = "mail-ok"
kind = "http.request"
url_path = "/emails"
irreversible = true
decision = "allow"

[[rules]]''', 1))
    with Runtime(tmp_path / "state2", allowing, compensations=IRREVERSIBLE) as rt2, \
            rt2.episode(tmp_path / "ws") as ep2:
        ep2.http.post(f"{base}/emails", json={"to": "a@example.com"})
        ep2.http.post(f"{base}/items", json={"name": "undone"})
        intent = next(r for r in rt2.journal.records(ep2.id) if r.status is Status.INTENT)
        assert intent.undo["irreversible"] is True and intent.params["class"] == "irreversible"
        assert ep2.rollback() == 1
    assert state(base)["emails"] == [{"to": "a@example.com"}]
    assert state(base)["collections"]["items"] == []


# ---- idempotency, failures, crash ---------------------------------------------------------------

def test_a_timed_out_post_is_retried_with_the_same_idempotency_key(
        app_url: Any, tmp_path: Path) -> None:
    _, base = app_url
    comp = Compensations()
    comp.honours_idempotency_keys("127.0.0.1:*")
    with runtime(tmp_path, compensations=comp) as rt, rt.episode(tmp_path / "ws") as ep:
        response = ep.http.post(f"{base}/items", json={"name": "once"},
                                headers={"X-Delay-Once": "1.0"}, timeout=0.3)
        assert response.status_code == 201
        assert response.headers["idempotent-replayed"] == "true"
        assert len(state(base)["collections"]["items"]) == 1
        params = next(r for r in rt.journal.records(ep.id) if r.status is Status.INTENT).params
        assert params["idempotency_key"] == f"revex-{ep.id}-1"
    assert state(base)["collections"]["items"] == []


def test_a_timeout_gives_a_failed_action_and_a_probed_undo(app_url: Any, tmp_path: Path) -> None:
    _, base = app_url
    seed(base)
    before = state(base)
    with runtime(tmp_path) as rt, rt.episode(tmp_path / "ws", http_retries=0) as ep:
        with pytest.raises(ActionFailed) as info:
            ep.http.put(f"{base}/items/1?delay=1", json={"name": "late"}, timeout=0.3)
        assert isinstance(info.value.__cause__, TimeoutError)
        assert rt.journal.records(ep.id)[-1].status is Status.FAILED
        assert state(base) == before  # the server applied it; the probe put it back


def test_a_connection_error_gives_a_failed_action(tmp_path: Path) -> None:
    from revex.testing.rest_app import free_port

    url = f"http://127.0.0.1:{free_port()}/items"
    with runtime(tmp_path) as rt, rt.episode(tmp_path / "ws", http_retries=0) as ep:
        with pytest.raises(ActionFailed):
            ep.http.put(url + "/1", json={"a": 1})
        with pytest.raises(ActionFailed):
            ep.http.get(url)
        statuses = [r.status for r in rt.journal.records(ep.id) if r.kind == "http.request"]
        assert statuses == [Status.FAILED, Status.FAILED]


CHILD = """
import sys, httpx
from revex.runtime.runtime import Runtime
base, state_dir, ws, marker = sys.argv[1:5]
rt = Runtime(state_dir, policy="permissive", audit=None)
ep = rt.episode(ws)
ep.http.post(base + "/items", json={"name": "child"})
ep.http.delete(base + "/items/2")
ep.http.patch(base + "/items/1", json={"name": "patched"})
open(marker, "w").close()
ep.http.put(base + "/items/3?delay=3", json={"name": "in flight"})
"""


def test_a_killed_process_is_recovered_on_reopen(app_url: Any, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    _, base = app_url
    seed(base)
    before = state(base)
    marker = tmp_path / "marker"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen([sys.executable, "-c", CHILD, base, str(tmp_path / "state"),
                              str(tmp_path / "ws"), str(marker)], env=env)
    try:
        deadline = time.monotonic() + 30
        while not marker.exists() or {"id": 3, "name": "in flight"} not in \
                state(base)["collections"]["items"]:
            assert time.monotonic() < deadline and child.poll() is None
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert state(base) != before
    with runtime(tmp_path) as rt:
        assert len(rt.recover()) == 0  # already recovered when it opened
        [info] = rt.episodes()
        assert info.status == "recovered"
        probed = [r for r in rt.journal.records(info.id) if r.params.get("probed")]
        assert len(probed) == 1
    assert state(base) == before


# ---- modes -------------------------------------------------------------------------------------

def test_replay_serves_a_recording_with_no_server_running(tmp_path: Path) -> None:
    from revex.runtime.effects.http_cassette import ReplayMissing

    def session(ep: Any, base: str) -> list[Any]:
        out = [ep.http.post(f"{base}/items", json={"name": "r"}).json()]
        out.append(ep.http.put(f"{base}/items/1", json={"name": "r2"}).json())
        out.append(ep.http.get(f"{base}/items").json())
        return out

    with serve(create_app()) as base, runtime(tmp_path) as rt, \
            rt.episode(tmp_path / "ws", http_mode="record", http_cassette="demo") as ep:
        recorded = session(ep, base)
    assert (tmp_path / "state" / "cassettes" / "demo.jsonl").exists()
    with runtime(tmp_path) as rt, \
            rt.episode(tmp_path / "ws", http_mode="replay", http_cassette="demo") as ep:
        assert session(ep, base) == recorded
        with pytest.raises(ReplayMissing, match="was not recorded"):
            ep.http.get(f"{base}/users")
    with pytest.raises(httpx.TransportError):
        httpx.get(base + "/items")


def test_dry_run_does_not_send_compensable_or_irreversible_calls(
        app_url: Any, tmp_path: Path) -> None:
    _, base = app_url
    comp = Compensations.load({**IRREVERSIBLE})
    comp.compensate("POST", "/payments")(
        lambda ctx: CompensationRequest("POST", f"/payments/{ctx.response_json['id']}/refund"))
    policy = Policy.from_toml(ALLOW_LOOPBACK)
    with runtime(tmp_path, policy, compensations=comp) as rt, \
            rt.episode(tmp_path / "ws", http_mode="dry_run") as ep:
        mail = ep.http.post(f"{base}/emails", json={"to": "x"})
        pay = ep.http.post(f"{base}/payments", json={"amount": 5})
        assert mail.headers["x-revex-dry-run"] == "1" and pay.json() == {"dry_run": True}
        ep.http.post(f"{base}/items", json={"name": "real"})  # reversible: sent
        assert len(state(base)["collections"]["items"]) == 1
        dry = [r for r in rt.journal.records(ep.id) if r.params.get("dry_run")]
        assert len(dry) == 2
    current = state(base)
    assert current["emails"] == [] and "payments" not in current["collections"]
    assert current["collections"]["items"] == []


# ---- json-server (third party: weak ETags, no idempotency keys, PUT cannot create) -----------

@pytest.fixture
def json_server(tmp_path: Path) -> Iterator[str]:
    db = {"items": [{"id": i, "name": f"item{i}", "tags": [i]} for i in (1, 2, 3)],
          "users": [{"id": 1, "name": "ann"}]}
    try:
        with serve_json_server(db, tmp_path, Path(__file__).resolve().parents[2]) as base:
            yield base
    except FileNotFoundError:
        pytest.skip(f"json-server not installed; run `{JSON_SERVER_INSTALL}`")


def js_state(base: str) -> dict[str, Any]:
    return {name: sorted(httpx.get(f"{base}/{name}").json(), key=lambda r: r["id"])
            for name in ("items", "users")}


def test_json_server_rollback_restores_every_resource(json_server: str, tmp_path: Path) -> None:
    before = js_state(json_server)
    with runtime(tmp_path) as rt, rt.episode(tmp_path / "ws") as ep:
        mixed_sequence(ep.http, json_server)
        assert js_state(json_server) != before
    assert js_state(json_server) == before


def test_json_server_undo_after_commit_and_drift(json_server: str, tmp_path: Path) -> None:
    before = js_state(json_server)
    with runtime(tmp_path) as rt, rt.episode(tmp_path / "ws", on_exit="commit") as ep:
        ep.http.delete(f"{json_server}/items/2")
        ep.http.patch(f"{json_server}/items/1", json={"name": "patched"})
        episode_id = ep.id
    httpx.patch(f"{json_server}/items/1", json={"name": "someone"})
    with runtime(tmp_path) as rt2:
        with pytest.raises(ConflictError):
            rt2.undo(episode_id)
        assert rt2.undo(episode_id, force=True) == 2
    assert js_state(json_server) == before
    assert json.dumps(before)  # plain JSON all the way
