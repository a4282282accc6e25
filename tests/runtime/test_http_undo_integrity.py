"""An HTTP undo is UNDONE only when a re-GET shows the pre-image again (issue 10: the rule,
items 6 and 7). Real servers on loopback: our FastAPI test app and json-server 0.17."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from revex.errors import ConfigError, ConflictError
from revex.runtime.effects.http_compensations import Compensations
from revex.runtime.journal import Status
from revex.testing.rest_app import create_app, serve
from tests.runtime.http_fixtures import ROOT, JsonServer, app_url, get, json_server, runtime, undone

__all__ = ["app_url", "json_server"]  # fixtures, used by name

# ---- the rule: verify after undo ---------------------------------------------------------------

def test_a_delete_that_leaves_the_resource_readable_is_a_conflict_not_undone(
        app_url: str, tmp_path: Path) -> None:
    # /tickets soft-deletes: DELETE answers 204 and the ticket is still there
    with runtime(tmp_path) as rt, rt.episode(tmp_path / "ws", on_exit="commit") as ep:
        made = ep.http.post(f"{app_url}/tickets", json={"title": "t"}).json()
        with pytest.raises(ConflictError) as info:
            ep.rollback()
        message = str(info.value)
        assert "DELETE" in message and f"{app_url}/tickets/{made['id']}" in message
        assert "still" in message and "deleted" in message  # what differs
        assert undone(rt, ep.id) == []
        failed = [r for r in rt.journal.records(ep.id) if r.kind == "episode.rollback.failed"]
        assert failed and "ConflictError" in (failed[-1].error or "")


def test_a_restore_the_server_rewrites_is_a_conflict_naming_the_field(
        app_url: str, tmp_path: Path) -> None:
    # /docs sets a server-managed revision on every write: the PUT of the pre-image never
    # reads back as the pre-image
    httpx.post(f"{app_url}/docs", json={"title": "draft"}).raise_for_status()
    with runtime(tmp_path) as rt, rt.episode(tmp_path / "ws", on_exit="commit") as ep:
        ep.http.patch(f"{app_url}/docs/1", json={"title": "final"})
        with pytest.raises(ConflictError) as info:
            ep.rollback()
        message = str(info.value)
        assert "PUT" in message and f"{app_url}/docs/1" in message and "revision" in message
        assert undone(rt, ep.id) == []


def test_a_declared_compensation_is_journaled_as_not_verifiable(
        app_url: str, tmp_path: Path) -> None:
    comp = Compensations.load({"services": {"counter": {"operations": [
        {"match": "POST /counter/increment", "compensate": "POST /counter/decrement"}]}}})
    with runtime(tmp_path, compensations=comp) as rt, rt.episode(tmp_path / "ws") as ep:
        ep.http.post(f"{app_url}/counter/increment")
        done = [r for r in rt.journal.records(ep.id) if r.status is Status.DONE][-1]
        assert done.result["undo_check"] == "none"
        assert "cannot be re-read" in done.result["why_unverified"]
    assert get(f"{app_url}/counter") == {"value": 0}


def payments(compensate: str) -> dict[str, Any]:
    return {"services": {"pay": {"operations": [
        {"match": "POST /payments", "compensate": compensate,
         "verify": "GET /payments/{response.id}", "verify_json": {"status": "refunded"}}]}}}


def test_a_compensation_with_a_declared_read_back_is_verified(
        app_url: str, tmp_path: Path) -> None:
    comp = Compensations.load(payments("POST /payments/{response.id}/refund"))
    with runtime(tmp_path, compensations=comp) as rt, rt.episode(tmp_path / "ws") as ep:
        paid = ep.http.post(f"{app_url}/payments", json={"amount": 5}).json()
        done = [r for r in rt.journal.records(ep.id) if r.status is Status.DONE][-1]
        assert done.result["undo_check"] == "read_back"
        assert done.result["compensation"]["read_back"] == {
            "url": f"{app_url}/payments/{paid['id']}", "expect": {"status": "refunded"}}
        assert ep.rollback() == 1
        assert undone(rt, ep.id) == [1]
    assert get(f"{app_url}/payments/{paid['id']}")["status"] == "refunded"


def test_a_compensation_whose_read_back_disagrees_is_a_conflict(
        app_url: str, tmp_path: Path) -> None:
    # a compensation that answers 200 and changes nothing the payment shows
    comp = Compensations.load(payments("POST /counter/decrement"))
    with runtime(tmp_path, compensations=comp) as rt, \
            rt.episode(tmp_path / "ws", on_exit="commit") as ep:
        paid = ep.http.post(f"{app_url}/payments", json={"amount": 5}).json()
        with pytest.raises(ConflictError) as info:
            ep.rollback()
        message = str(info.value)
        assert f"{app_url}/payments/{paid['id']}" in message and "status" in message
        assert "captured" not in message  # field names, never values
        assert undone(rt, ep.id) == []
    with pytest.raises(ConfigError, match="verify"):
        Compensations.load({"services": {"pay": {"operations": [
            {"match": "POST /payments", "compensate": "POST /x",
             "verify": "GET //elsewhere.example/p", "verify_json": {}}]}}})


# ---- 10.6: POST onto an existing resource ------------------------------------------------------

def test_post_onto_an_existing_singular_resource_restores_its_pre_image(
        json_server: JsonServer, tmp_path: Path) -> None:
    before = {"room": 1, "guest": "ann"}
    with json_server({"reservation": before, "items": []}) as base:
        with runtime(tmp_path) as rt, rt.episode(tmp_path / "ws") as ep:
            response = ep.http.post(f"{base}/reservation", json={"room": 2})
            assert response.status_code == 201 and response.headers["location"].endswith(
                "/reservation")
            assert get(f"{base}/reservation") == {"room": 2}
            done = [r for r in rt.journal.records(ep.id) if r.status is Status.DONE][-1]
            assert done.result["targets"][f"{base}/reservation"]["pre"]["status"] == 200
        assert get(f"{base}/reservation") == before


def test_undo_of_a_post_onto_an_existing_resource_after_commit(
        json_server: JsonServer, tmp_path: Path) -> None:
    before = {"room": 1, "guest": "ann"}
    with json_server({"reservation": before}) as base:
        with runtime(tmp_path) as rt, rt.episode(tmp_path / "ws", on_exit="commit") as ep:
            ep.http.post(f"{base}/reservation", json={"room": 2})
            ep.http.post(f"{base}/reservation", json={"room": 3})
            episode_id = ep.id
        with runtime(tmp_path) as rt2:
            assert rt2.undo(episode_id) == 2
        assert get(f"{base}/reservation") == before


def test_a_post_whose_location_names_an_existing_item_restores_that_item(
        app_url: str, tmp_path: Path) -> None:
    for name in ("one", "two"):
        httpx.post(f"{app_url}/items", json={"name": name}).raise_for_status()
    before = get(f"{app_url}/_state")
    with runtime(tmp_path) as rt, rt.episode(tmp_path / "ws") as ep:
        made = ep.http.post(f"{app_url}/items?upsert=1", json={"id": 1, "name": "replaced"})
        assert made.headers["location"] == "/items/1"
        ep.http.post(f"{app_url}/items", json={"name": "new"})
    assert get(f"{app_url}/_state") == before


def test_a_location_on_another_origin_is_never_probed_nor_deleted(
        app_url: str, tmp_path: Path) -> None:
    with serve(create_app()) as other:
        httpx.post(f"{other}/items", json={"name": "not ours"}).raise_for_status()
        elsewhere = get(f"{other}/_state")
        with runtime(tmp_path) as rt, rt.episode(tmp_path / "ws") as ep:
            ep.http.post(f"{app_url}/items?location={other}/items/1", json={"name": "x"})
            with pytest.raises(ConflictError, match="could not be determined"):
                ep.rollback()
            ep.rollback(force=True)
        assert get(f"{other}/_state") == elsewhere


# ---- 10.7: a re-create the server puts elsewhere -----------------------------------------------

def test_recreating_an_item_whose_id_the_server_will_not_reuse_leaves_no_stray_copy(
        json_server: JsonServer, tmp_path: Path) -> None:
    # json-server treats id 0 as "no id": re-creating item 0 lands at a new id
    db = {"items": [{"id": 0, "name": "zero"}, {"id": 1, "name": "one"}]}
    with json_server(db) as base:
        with runtime(tmp_path) as rt, rt.episode(tmp_path / "ws", on_exit="commit") as ep:
            ep.http.delete(f"{base}/items/0")
            with pytest.raises(ConflictError) as info:
                ep.rollback()
            message = str(info.value)
            assert f"{base}/items/0" in message and f"{base}/items/2" in message
            assert "deleted it again" in message
            assert undone(rt, ep.id) == []
            records = rt.journal.records(ep.id)
            failed = [r for r in records if r.kind == "episode.rollback.failed"]
            assert f"{base}/items/2" in (failed[-1].error or "")
            # what the undo created was journaled: before the POST left, where it landed, and
            # that it was removed again
            notes = [(r.kind, r.target, r.params) for r in records
                     if r.kind.startswith("http.undo.")]
            assert [n[:2] for n in notes] == [
                ("http.undo.recreate", f"{base}/items/0"),
                ("http.undo.created", f"{base}/items/0"),
                ("http.undo.stray", f"{base}/items/2")]
            assert notes[1][2]["landed"] == f"{base}/items/2"
            assert notes[2][2]["removed"] is True
        assert get(f"{base}/items") == [{"id": 1, "name": "one"}]  # no stray copy


def test_a_re_create_by_post_on_a_server_that_honours_keys_is_not_answered_by_the_put(
        app_url: str, tmp_path: Path) -> None:
    # our app replays an Idempotency-Key it has seen: the fallback POST needs its own key
    httpx.post(f"{app_url}/registry", json={"name": "entry"}).raise_for_status()
    before = get(f"{app_url}/_state")
    with runtime(tmp_path) as rt, rt.episode(tmp_path / "ws") as ep:
        ep.http.delete(f"{app_url}/registry/1")
    assert get(f"{app_url}/_state") == before


UNDOING_CHILD = """
import sys
from revex.runtime.runtime import Runtime
base, state_dir, ws, marker = sys.argv[1:5]
ep = Runtime(state_dir, policy="permissive", audit=None).episode(ws)
ep.http.delete(base + "/ledger/1", headers={"X-Slow-Create": "3"})
open(marker, "w").close()
ep.rollback()
"""


def test_a_copy_left_by_a_re_create_a_crash_interrupted_is_removed_on_recovery(
        app_url: str, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    # /ledger: PUT cannot create, POST never reuses an id, keys are ignored, and the
    # X-Slow-Create header (carried to undo requests) answers a POST late, after storing
    for entry in ("a", "b"):
        httpx.post(f"{app_url}/ledger", json={"entry": entry}).raise_for_status()
    marker = tmp_path / "marker"
    child = subprocess.Popen([sys.executable, "-c", UNDOING_CHILD, app_url,
                              str(tmp_path / "state"), str(tmp_path / "ws"), str(marker)],
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 30
        while not marker.exists() or len(get(f"{app_url}/ledger")) < 2:
            assert time.monotonic() < deadline and child.poll() is None
            time.sleep(0.05)
    finally:  # killed while the re-create POST's answer is on its way
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert get(f"{app_url}/ledger") == [{"entry": "b", "id": 2}, {"entry": "a", "id": 3}]
    with pytest.warns(UserWarning, match="recovery"):
        rt = runtime(tmp_path)
    with rt:
        [info] = rt.episodes()
        assert info.status == "conflict"  # /ledger/1 cannot come back: said, not hidden
        strays = [r for r in rt.journal.records(info.id) if r.kind == "http.undo.stray"]
        assert [(r.target, r.params["interrupted"], r.params["removed"]) for r in strays] == [
            (f"{app_url}/ledger/3", True, True), (f"{app_url}/ledger/4", False, True)]
    assert get(f"{app_url}/ledger") == [{"entry": "b", "id": 2}]  # no copy left behind
