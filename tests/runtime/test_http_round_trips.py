"""What a journaled REST mutation sends (issue 15, target 6): the pre-image GET and the request,
the post-state taken from the answer's strong ETag instead of another GET, and, for a service
declared ``posts_create``, a POST that reads nothing before it however large the collection.
Also the servers that lie: an answer whose ETag is not what its GET shows, a Location that
names an item that existed, an answer that names nothing. Real servers on loopback."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response

from revex.errors import ConflictError
from revex.runtime.effects.http_compensations import Compensations
from revex.runtime.journal import Status
from revex.testing.rest_app import serve
from tests.runtime.http_fixtures import (
    JsonServer,
    app,
    get,
    json_server,
    runtime,
    seeded,
    undone,
)

__all__ = ["app", "json_server"]  # fixtures, used by name

BIG = 10_000


def trusting() -> Compensations:
    comp = Compensations()
    comp.trust_posts_create("127.0.0.1:*")
    return comp


def done_of(rt: Any, episode_id: str) -> list[dict[str, Any]]:
    return [r.result for r in rt.journal.records(episode_id) if r.status is Status.DONE]


def test_put_and_patch_send_one_pre_image_get_and_take_the_post_state_from_the_etag(
        app: Any, tmp_path: Path) -> None:
    made, base = app
    seeded(made, "items", 2)
    before = get(f"{base}/_state")
    with runtime(tmp_path) as rt, rt.episode(tmp_path / "ws") as ep:
        for send in (lambda: ep.http.put(f"{base}/items/1", json={"name": "put"}),
                     lambda: ep.http.patch(f"{base}/items/2", json={"name": "patched"})):
            seen = made.state.data.requests
            answer = send()
            assert made.state.data.requests - seen == 2  # GET (pre-image), then the request
            post = done_of(rt, ep.id)[-1]["targets"][str(answer.url)]["post"]
            assert post == {"status": 200, "etag": answer.headers["etag"], "by": "etag"}
    assert get(f"{base}/_state") == before


def test_drift_after_an_etag_vouched_put_is_a_conflict_and_the_undo_sends_if_match(
        app: Any, tmp_path: Path) -> None:
    made, base = app
    seeded(made, "items", 1)
    before = get(f"{base}/_state")
    with runtime(tmp_path) as rt, rt.episode(tmp_path / "ws", on_exit="commit") as ep:
        left = ep.http.put(f"{base}/items/1", json={"name": "ours"}).headers["etag"]
        episode_id = ep.id
    httpx.put(f"{base}/items/1", json={"name": "theirs"}).raise_for_status()
    drifted = get(f"{base}/_state")
    with runtime(tmp_path) as rt2:
        with pytest.raises(ConflictError, match="items/1"):
            rt2.undo(episode_id)
        assert get(f"{base}/_state") == drifted
        httpx.put(f"{base}/items/1", json={"name": "ours"}).raise_for_status()  # back
        assert rt2.undo(episode_id) == 1
    assert made.state.data.if_match[-1] == left
    assert get(f"{base}/_state") == before


def lying_app() -> FastAPI:
    """PUT stores what it is sent, but its answer's ETag is not the one GET shows."""
    app = FastAPI()
    notes: dict[int, Any] = {1: {"text": "first"}}
    answers = [0]

    def etag(body: Any) -> str:
        return '"' + hashlib.sha256(json.dumps(body).encode()).hexdigest()[:16] + '"'

    @app.get("/notes/{nid}")
    def read(nid: int) -> Response:
        if nid not in notes:
            return Response(status_code=404)
        return Response(json.dumps(notes[nid]), media_type="application/json",
                        headers={"etag": etag(notes[nid])})

    @app.put("/notes/{nid}")
    async def write(nid: int, request: Request) -> Response:
        notes[nid] = await request.json()
        answers[0] += 1
        return Response(json.dumps(notes[nid]), media_type="application/json",
                        headers={"etag": f'"answer-{answers[0]}"'})

    return app


def test_an_answer_whose_etag_its_get_does_not_show_is_a_conflict_never_an_overwrite(
        tmp_path: Path) -> None:
    with serve(lying_app()) as base:
        with runtime(tmp_path) as rt, rt.episode(tmp_path / "ws") as ep:
            ep.http.put(f"{base}/notes/1", json={"text": "second"})
            with pytest.raises(ConflictError) as info:
                ep.rollback()
            assert f"{base}/notes/1" in str(info.value) and "answer-1" in str(info.value)
            assert get(f"{base}/notes/1") == {"text": "second"}  # nothing was sent
            assert undone(rt, ep.id) == []
            assert ep.rollback(force=True) == 1  # the restore itself is still verified
        assert get(f"{base}/notes/1") == {"text": "first"}


def test_a_declared_post_into_10000_items_reads_nothing_before_it(
        app: Any, tmp_path: Path) -> None:
    made, base = app
    seeded(made, "big", BIG)
    with runtime(tmp_path, compensations=trusting()) as rt, rt.episode(tmp_path / "ws") as ep:
        seen = made.state.data.requests
        answer = ep.http.post(f"{base}/big", json={"name": "new"})
        assert made.state.data.requests - seen == 1  # the POST alone: no listing, no probe
        assert answer.status_code == 201 and len(made.state.data.collections["big"]) == BIG + 1
        intent = [r for r in rt.journal.records(ep.id) if r.status is Status.INTENT][-1]
        assert intent.undo.get("creates") is True and "listing" not in intent.undo
    assert len(made.state.data.collections["big"]) == BIG
    assert made.state.data.collections["big"][BIG] == {"id": BIG, "name": f"n{BIG}"}


def test_the_default_post_still_reads_its_target_once_before_it(
        app: Any, tmp_path: Path) -> None:
    made, base = app
    seeded(made, "items", 3)
    with runtime(tmp_path) as rt, rt.episode(tmp_path / "ws") as ep:
        seen = made.state.data.requests
        ep.http.post(f"{base}/items", json={"name": "new"})
        # the listing (which finds a replaced item and what a crash-interrupted POST made),
        # then the POST; the created item's post-state is its 201's ETag
        assert made.state.data.requests - seen == 2
        assert done_of(rt, ep.id)[-1]["targets"][f"{base}/items/4"]["post"]["by"] == "etag"
    assert sorted(made.state.data.collections["items"]) == [1, 2, 3]


def test_a_declared_post_that_names_an_item_by_id_restores_what_it_replaced(
        app: Any, tmp_path: Path) -> None:
    made, base = app
    seeded(made, "items", 2)
    before = get(f"{base}/_state")
    with runtime(tmp_path, compensations=trusting()) as rt, rt.episode(tmp_path / "ws") as ep:
        seen = made.state.data.requests
        ep.http.post(f"{base}/items?upsert=1", json={"id": 1, "name": "replaced"})
        assert made.state.data.requests - seen == 2  # GET /items/1 (named), then the POST
        assert get(f"{base}/items/1") == {"id": 1, "name": "replaced"}
    assert get(f"{base}/_state") == before


def test_a_declared_post_whose_location_names_an_existing_item_is_not_deleted(
        app: Any, tmp_path: Path) -> None:
    # the server creates item 3 but answers Location: /items/1; the answer's ETag is item 3's,
    # which item 1 does not show, so the undo refuses instead of deleting item 1
    made, base = app
    seeded(made, "items", 2)
    with runtime(tmp_path, compensations=trusting()) as rt, rt.episode(tmp_path / "ws") as ep:
        ep.http.post(f"{base}/items?location=/items/1", json={"name": "x"})
        with pytest.raises(ConflictError, match="items/1"):
            ep.rollback()
        assert undone(rt, ep.id) == []
        ep.rollback(force=True)  # what force does: the trust declared, item 1 is deleted...
    assert 1 not in made.state.data.collections["items"]  # ...which is why it asks first


def test_a_declared_post_whose_answer_names_nothing_has_an_unknown_effect(
        app: Any, tmp_path: Path) -> None:
    made, base = app
    with runtime(tmp_path, compensations=trusting()) as rt, rt.episode(tmp_path / "ws") as ep:
        ep.http.post(f"{base}/counter/increment")  # answers {"value": 1}: no id, no Location
        post = done_of(rt, ep.id)[-1]
        assert post["effect"] == "unknown" and "posts_create" in post["why"]
        with pytest.raises(ConflictError, match="could not be determined"):
            ep.rollback()
        ep.rollback(force=True)
    assert made.state.data.counter == 1


def test_a_declared_post_that_fails_half_way_has_an_unknown_effect(
        app: Any, tmp_path: Path) -> None:
    made, base = app
    with runtime(tmp_path, compensations=trusting()) as rt, rt.episode(tmp_path / "ws") as ep:
        assert ep.http.post(f"{base}/items?fail=1", json={"name": "x"}).status_code == 500
        with pytest.raises(ConflictError, match="posts_create"):
            ep.rollback()
        ep.rollback(force=True)
    assert list(made.state.data.collections["items"].values()) == [{"id": 1, "name": "x"}]


def test_posts_create_is_declared_per_service_in_toml(tmp_path: Path) -> None:
    comp = Compensations.load({"services": {"api": {"host": "api.example.com:8080",
                                                    "posts_create": True}}})
    assert comp.posts_create("api.example.com", 8080)
    assert not comp.posts_create("api.example.com", 9090)
    assert not Compensations().posts_create("api.example.com", 8080)


def etagless_app(answer_lies: bool = False) -> tuple[FastAPI, list[str]]:
    """A JSON store with no ETags; its writes answer with the stored item, or (``answer_lies``)
    with ``{"ok": true}``. Also returns the log of requests it saw."""
    app = FastAPI()
    notes: dict[int, Any] = {1: {"id": 1, "text": "first"}}
    seen: list[str] = []

    def answer(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
        return Response(json.dumps({"ok": True} if answer_lies else body), status_code=status,
                        media_type="application/json", headers=headers or {})

    @app.get("/notes/{nid}")
    def read(nid: int) -> Response:
        seen.append(f"GET /notes/{nid}")
        if nid not in notes:
            return Response(status_code=404)
        return Response(json.dumps(notes[nid]), media_type="application/json")

    @app.put("/notes/{nid}")
    async def write(nid: int, request: Request) -> Response:
        seen.append(f"PUT /notes/{nid}")
        notes[nid] = {**await request.json(), "id": nid}
        return answer(200, notes[nid])

    @app.delete("/notes/{nid}")
    def delete(nid: int) -> Response:
        seen.append(f"DELETE /notes/{nid}")
        notes.pop(nid, None)
        return Response(status_code=204)

    @app.post("/notes")
    async def create(request: Request) -> Response:
        seen.append("POST /notes")
        nid = max(notes, default=0) + 1
        notes[nid] = {**await request.json(), "id": nid}
        return answer(201, notes[nid], {"location": f"/notes/{nid}"})

    return app, seen


def representing() -> Compensations:
    comp = Compensations()
    comp.trust_full_representations("127.0.0.1:*")
    return comp


def test_without_an_etag_the_post_state_is_a_get_unless_full_representations_are_declared(
        tmp_path: Path) -> None:
    for declared, trips in ((False, ["GET /notes/1", "PUT /notes/1", "GET /notes/1"]),
                            (True, ["GET /notes/1", "PUT /notes/1"])):
        app, seen = etagless_app()
        with serve(app) as base:
            comp = representing() if declared else Compensations()
            with runtime(tmp_path / str(declared), compensations=comp) as rt, \
                    rt.episode(tmp_path / "ws") as ep:
                ep.http.put(f"{base}/notes/1", json={"text": "second"})
                assert seen == trips
                post = done_of(rt, ep.id)[-1]["targets"][f"{base}/notes/1"]["post"]
                assert post.get("by") == ("answer" if declared else None)
                ep.http.post(f"{base}/notes", json={"text": "new"})
                # its listing GET (405 here, not logged), the POST, then the created item's
                # state: the answer (declared) or a GET
                assert seen[len(trips):] == ["POST /notes"] + ([] if declared else
                                                               ["GET /notes/2"])
            assert get(f"{base}/notes/1") == {"id": 1, "text": "first"}
            assert httpx.get(f"{base}/notes/2").status_code == 404


def test_declared_full_representations_from_a_server_whose_answer_is_not_its_get(
        tmp_path: Path) -> None:
    app, _ = etagless_app(answer_lies=True)
    with serve(app) as base:
        with runtime(tmp_path, compensations=representing()) as rt, \
                rt.episode(tmp_path / "ws") as ep:
            ep.http.put(f"{base}/notes/1", json={"text": "second"})
            with pytest.raises(ConflictError, match="notes/1"):
                ep.rollback()
            assert get(f"{base}/notes/1") == {"id": 1, "text": "second"}  # nothing was sent
            assert undone(rt, ep.id) == []
            assert ep.rollback(force=True) == 1
        assert get(f"{base}/notes/1") == {"id": 1, "text": "first"}


def test_declared_full_representations_roll_back_json_server_exactly(
        json_server: JsonServer, tmp_path: Path) -> None:
    db = {"items": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    comp = Compensations.load({"services": {"js": {"host": "127.0.0.1",
                                                   "full_representations": True}}})
    with json_server(db) as base:
        with runtime(tmp_path, compensations=comp) as rt, rt.episode(tmp_path / "ws") as ep:
            ep.http.put(f"{base}/items/1", json={"name": "put"})
            ep.http.patch(f"{base}/items/2", json={"name": "patched"})
            ep.http.post(f"{base}/items", json={"name": "new"})
            posts = [t["post"] for r in done_of(rt, ep.id) for t in r["targets"].values()]
            assert [p.get("by") for p in posts] == ["answer"] * 3
        assert get(f"{base}/items") == db["items"]
