"""A default POST into a large collection (issue 15, target 6): the first POST reads the
collection (it is sound whatever the answer); once its listing was over LISTING_MAX bytes, later
POSTs read nothing before them, so their cost does not grow with the collection, and what they
did is taken from a 201 Created + Location, checked by one GET of it against the answer (its
strong ETag, else its body). Every answer that does
not say that (a 500 half-way, 200 instead of 201, a Location that names what the answer does not
describe, the request URL itself) is an unknown effect: rollback refuses it, saying why. Real
servers on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from revex.errors import ActionFailed, ConflictError
from revex.runtime.effects.http_forward import LISTING_MAX
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


def intents(rt: Any, episode_id: str) -> list[dict[str, Any]]:
    return [r.undo for r in rt.journal.records(episode_id) if r.status is Status.INTENT]


def last_done(rt: Any, episode_id: str) -> dict[str, Any]:
    return [r.result for r in rt.journal.records(episode_id) if r.status is Status.DONE][-1]


def test_posts_into_10000_or_30000_items_send_one_request_after_the_first(
        app: Any, tmp_path: Path) -> None:
    made, base = app
    for coll, size in (("big", BIG), ("bigger", 3 * BIG)):
        seeded(made, coll, size)
    before = get(f"{base}/_state")
    counts: dict[str, list[int]] = {}
    with runtime(tmp_path) as rt, rt.episode(tmp_path / "ws") as ep:
        for coll in ("big", "bigger"):
            for i in range(4):
                seen = made.state.data.requests
                assert ep.http.post(f"{base}/{coll}", json={"name": f"new{i}"}).status_code == 201
                counts.setdefault(coll, []).append(made.state.data.requests - seen)
        # the first POST into each reads the listing (over LISTING_MAX bytes), then the POST;
        # from then on the POST and a GET of what its Location names: the same count, and the
        # same requests, whatever the size
        assert counts == {"big": [2, 2, 2, 2], "bigger": [2, 2, 2, 2]}
        first, *later = intents(rt, ep.id)[:4]
        assert len(first["listing"]) == BIG and "creates" not in first
        for undo in later:
            assert undo["creates"] == "201" and "listing" not in undo
            assert undo["listing_bytes"] > LISTING_MAX
        assert last_done(rt, ep.id)["targets"][f"{base}/bigger/{3 * BIG + 4}"]["pre"] \
            == {"status": 404}
    assert get(f"{base}/_state") == before


def test_a_small_collection_is_still_listed_before_every_post(app: Any, tmp_path: Path) -> None:
    made, base = app
    seeded(made, "items", 3)
    with runtime(tmp_path) as rt, rt.episode(tmp_path / "ws") as ep:
        for _ in range(3):
            seen = made.state.data.requests
            ep.http.post(f"{base}/items", json={"name": "new"})
            assert made.state.data.requests - seen == 2
        assert all("listing" in undo for undo in intents(rt, ep.id))
    assert sorted(made.state.data.collections["items"]) == [1, 2, 3]


def test_what_a_runtime_learned_holds_for_its_next_episodes(app: Any, tmp_path: Path) -> None:
    made, base = app
    seeded(made, "big", BIG)
    with runtime(tmp_path) as rt:
        with rt.episode(tmp_path / "ws") as ep:
            ep.http.post(f"{base}/big", json={"name": "first"})
        with rt.episode(tmp_path / "ws2") as ep2:
            seen = made.state.data.requests
            ep2.http.post(f"{base}/big", json={"name": "second"})
            assert made.state.data.requests - seen == 2  # the POST, the GET of its Location
    assert len(made.state.data.collections["big"]) == BIG


def learned(rt: Any, base: str, coll: str, tmp_path: Path) -> None:
    """One POST into ``coll`` that lists it (and is rolled back): the runtime learns its size."""
    with rt.episode(tmp_path / "learn") as ep:
        ep.http.post(f"{base}/{coll}", json={"name": "learn"})


def test_a_post_into_a_large_collection_that_fails_half_way_is_a_conflict_naming_why(
        app: Any, tmp_path: Path) -> None:
    made, base = app
    seeded(made, "big", BIG)
    with runtime(tmp_path) as rt:
        learned(rt, base, "big", tmp_path)
        with rt.episode(tmp_path / "ws") as ep:
            assert ep.http.post(f"{base}/big?fail=1", json={"name": "x"}).status_code == 500
            post = last_done(rt, ep.id)
            assert post["effect"] == "unknown"
            assert "HTTP 500" in post["why"] and "large collection" in post["why"]
            with pytest.raises(ConflictError, match=r"could not be determined.*HTTP 500"):
                ep.rollback()
            assert undone(rt, ep.id) == []
            ep.rollback(force=True)
    # what forcing costs: the item the server stored before failing stays
    assert made.state.data.collections["big"][BIG + 2] == {"id": BIG + 2, "name": "x"}


def test_a_post_into_a_large_collection_whose_location_names_another_item_is_not_deleted(
        app: Any, tmp_path: Path) -> None:
    # the server creates an item but answers Location: /big/1 with the new item's ETag: a GET
    # of /big/1 shows item 1's ETag instead, so the effect is unknown and even a forced
    # rollback leaves item 1 alone
    made, base = app
    seeded(made, "big", BIG)
    with runtime(tmp_path) as rt:
        learned(rt, base, "big", tmp_path)
        with rt.episode(tmp_path / "ws") as ep:
            ep.http.post(f"{base}/big?location=/big/1", json={"name": "x"})
            assert "another ETag than the answer's" in last_done(rt, ep.id)["why"]
            with pytest.raises(ConflictError, match=r"big/1.*cannot be believed"):
                ep.rollback()
            assert undone(rt, ep.id) == []
            ep.rollback(force=True)
    assert made.state.data.collections["big"][1] == {"id": 1, "name": "n1"}


def test_a_post_into_a_large_collection_that_replaces_the_item_its_body_names_restores_it(
        app: Any, tmp_path: Path) -> None:
    made, base = app
    seeded(made, "big", BIG)
    before = get(f"{base}/_state")
    with runtime(tmp_path) as rt:
        learned(rt, base, "big", tmp_path)
        with rt.episode(tmp_path / "ws") as ep:
            seen = made.state.data.requests
            ep.http.post(f"{base}/big?upsert=1", json={"id": 7, "name": "replaced"})
            assert made.state.data.requests - seen == 2  # GET /big/7 (named), then the POST
            assert made.state.data.collections["big"][7] == {"id": 7, "name": "replaced"}
    assert get(f"{base}/_state") == before


def lying_app(n: int) -> FastAPI:
    """A large collection with no ETags whose POST answers as its query says: ``status``,
    ``location`` (default the created item's), ``empty=1`` (no body)."""
    made = FastAPI()
    items: dict[int, dict[str, Any]] = {i: {"id": i, "name": f"n{i}"} for i in range(1, n + 1)}
    made.state.items = items

    @made.get("/things")
    def listing() -> Response:
        return JSONResponse([items[i] for i in sorted(items)])

    @made.get("/things/{iid}")
    def one(iid: int) -> Response:
        return JSONResponse(items[iid]) if iid in items else JSONResponse({}, 404)

    @made.delete("/things/{iid}")
    def delete(iid: int) -> Response:
        items.pop(iid, None)
        return Response(status_code=204)

    @made.post("/things")
    async def create(request: Request) -> Response:
        nid = max(items) + 1
        items[nid] = {**(await request.json()), "id": nid}
        query = request.query_params
        headers = {"location": query.get("location", f"/things/{nid}")}
        status = int(query.get("status", 201))
        if query.get("empty"):
            return Response(status_code=status, headers=headers)
        return JSONResponse(items[nid], status, headers)

    return made


@pytest.mark.parametrize(("query", "why"), [
    ("status=200", "HTTP 200, not 201 Created"),
    ("location=/things/1", "does not show the body the answer described (fields changed: id, "
                           "name)"),
    ("empty=1", "neither a strong ETag nor a body"),
    ("location=/things", "names the request URL itself"),
])
def test_a_large_collection_whose_answer_cannot_be_believed_gives_an_unknown_effect(
        tmp_path: Path, query: str, why: str) -> None:
    made = lying_app(BIG)
    with serve(made) as base, runtime(tmp_path) as rt:
        learned(rt, base, "things", tmp_path)
        with rt.episode(tmp_path / "ws") as ep:
            ep.http.post(f"{base}/things?{query}", json={"name": "x"})
            post = last_done(rt, ep.id)
            assert post["effect"] == "unknown" and why in post["why"], post["why"]
            with pytest.raises(ConflictError, match="could not be determined"):
                ep.rollback()
            ep.rollback(force=True)
        assert made.state.items[1] == {"id": 1, "name": "n1"}  # never deleted


def test_a_large_collection_without_etags_is_checked_by_a_get_and_rolled_back(
        tmp_path: Path) -> None:
    made = lying_app(BIG)
    with serve(made) as base, runtime(tmp_path) as rt:
        learned(rt, base, "things", tmp_path)
        with rt.episode(tmp_path / "ws") as ep:
            ep.http.post(f"{base}/things", json={"name": "x"})
            post = last_done(rt, ep.id)
            assert post["effect"] is True and f"{base}/things/{BIG + 1}" in post["targets"]
        assert sorted(made.state.items) == list(range(1, BIG + 1))


def test_json_server_with_10000_items_rolls_back_posts_checked_by_a_get(
        json_server: JsonServer, tmp_path: Path) -> None:
    db = {"items": [{"id": i, "name": f"n{i}"} for i in range(1, BIG + 1)]}
    with json_server(db) as base, runtime(tmp_path) as rt:
        with rt.episode(tmp_path / "ws") as ep:
            for i in range(3):
                ep.http.post(f"{base}/items", json={"name": f"new{i}"})
            first, *later = intents(rt, ep.id)
            assert "listing" in first and all(u["creates"] == "201" for u in later)
            assert len(get(f"{base}/items")) == BIG + 3
        assert get(f"{base}/items") == db["items"]


def test_record_and_replay_list_a_large_collection_as_a_fresh_runtime_would(
        app: Any, tmp_path: Path) -> None:
    # what a runtime learned live must not change what a recording holds or what a replay
    # asks for: both list before every POST, so a cassette replays in any runtime
    made, base = app
    seeded(made, "big", BIG)

    def session(ep: Any) -> list[Any]:
        return [ep.http.post(f"{base}/big", json={"name": f"r{i}"}).json() for i in range(2)]

    with runtime(tmp_path) as rt:
        learned(rt, base, "big", tmp_path)
        with rt.episode(tmp_path / "ws", http_mode="record", http_cassette="big") as ep:
            recorded = session(ep)
            assert all("listing" in undo for undo in intents(rt, ep.id))
        for _ in range(2):  # in the runtime that learned it, and again
            with rt.episode(tmp_path / "ws", http_mode="replay", http_cassette="big") as ep:
                assert session(ep) == recorded
    with runtime(tmp_path) as fresh, \
            fresh.episode(tmp_path / "ws", http_mode="replay", http_cassette="big") as ep:
        assert session(ep) == recorded
    assert len(made.state.data.collections["big"]) == BIG


def test_a_timed_out_post_into_a_large_collection_is_not_reported_undone(
        app: Any, tmp_path: Path) -> None:
    """The server stores the item, then answers too late: the request fails, and what it did
    cannot be determined (no listing, no answer). That is not "failed and was undone": the
    error says so, the action stays open, and rollback refuses it until forced."""
    made, base = app
    seeded(made, "big", BIG)
    with runtime(tmp_path) as rt:
        learned(rt, base, "big", tmp_path)
        with rt.episode(tmp_path / "ws") as ep:
            with pytest.raises(ActionFailed, match=r"could not be determined.*rollback"):
                ep.http.post(f"{base}/big?delay=3", json={"name": "late"}, timeout=0.5)
            assert made.state.data.collections["big"][BIG + 2] == {"id": BIG + 2, "name": "late"}
            with pytest.raises(ConflictError, match=r"could not be determined"):
                ep.rollback()
            assert undone(rt, ep.id) == []
            ep.rollback(force=True)
