"""A small JSON REST app for testing code written against revex (and revex itself).

Collections (``/items``, ``/users``, any name) with integer ids, strong content ETags, ``If-Match``
(412 on mismatch), ``Idempotency-Key`` de-duplication, ``Location`` on create, upsert by PUT. Plus
endpoints with the awkward shapes real services have:

- ``POST /counter/increment``: not idempotent, returns no id (only a declared compensation,
  ``POST /counter/decrement``, can undo it);
- ``POST /payments`` (compensated by ``POST /payments/{id}/refund``) and ``POST /emails``
  (irreversible);
- ``POST /{collection}?fail=1``: creates the item, then answers 500 (failed half-way);
  ``POST /{collection}?upsert=1`` with an existing ``id`` replaces that item (201, Location);
  ``POST /{collection}?location=URL`` answers with that Location instead of the item's;
  ``POST /batch/{collection}?fail_after=n`` creates items one by one and fails with 500
  half-way (no generic inverse: the listing is under another URL);
- ``?delay=s`` on a mutation: sleeps *after* applying it (a slow or timed-out response); not
  on reads nor on requests whose Idempotency-Key ends in ``-undo`` (revex's compensations);
  ``X-Delay-Once: s`` sleeps only the first time a given Idempotency-Key is seen;
- ``GET /fail?status=503``: a failing response;
- ``/tickets``: DELETE is a soft delete (204, but the ticket stays readable with
  ``"deleted": true``), so an undo that trusts the status code alone would be wrong;
- ``/registry``: PUT cannot create (404), so a deleted entry is re-created by POST;
- ``/ledger``: PUT cannot create, POST always assigns a new id, Idempotency-Key is ignored, and
  ``X-Slow-Create: s`` answers a POST ``s`` seconds after storing the item;
- ``/docs``: every write sets a server-managed ``revision`` (old + 1), so a restored pre-image
  never reads back exactly;
- ``DELETE /users/{id}`` cascades: the server also deletes every ``/memberships`` item whose
  ``userId`` is that id (invisible in the DELETE's response).

``create_app(token="t")`` requires ``Authorization: Bearer t`` everywhere. :func:`serve` runs an
app with uvicorn in a thread on a free loopback port::

    with serve(create_app()) as base_url:
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse


def etag_of(body: Any) -> str:
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:20]
    return f'"{digest}"'


class State:
    def __init__(self) -> None:
        self.collections: dict[str, dict[int, dict[str, Any]]] = {}
        self.next_id: dict[str, int] = {}
        self.keys: dict[str, tuple[int, Any, dict[str, str]]] = {}
        self.delayed_keys: set[str] = set()
        self.counter = 0
        self.emails: list[dict[str, Any]] = []
        self.requests = 0
        self.if_match: list[str] = []
        self.lock = threading.Lock()

    def new_id(self, coll: str) -> int:
        items = self.collections.setdefault(coll, {})
        nid = max([self.next_id.get(coll, 0), *items]) + 1
        self.next_id[coll] = nid
        return nid


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    if status == 204:
        return Response(status_code=204, headers=headers or {})
    return JSONResponse(body, status_code=status, headers=headers or {})


def create_app(token: str | None = None) -> FastAPI:
    """A fresh app with its own in-memory state (``app.state.data``)."""
    app = FastAPI()
    state = State()
    app.state.data = state

    @app.middleware("http")
    async def wrap(request: Request, call_next: Any) -> Response:
        state.requests += 1
        if token is not None and request.headers.get("authorization") != f"Bearer {token}":
            return JSONResponse({"error": "unauthorized"}, status_code=401)
        # /ledger is a server that ignores idempotency keys
        key = None if request.url.path.startswith("/ledger") else \
            request.headers.get("idempotency-key")
        mutating = request.method in ("POST", "PUT", "PATCH", "DELETE")
        if mutating and key and key in state.keys:
            status, body, headers = state.keys[key]
            return _json(status, body, {**headers, "idempotent-replayed": "true"})
        response: Response = await call_next(request)
        if mutating and key and response.status_code < 500:
            raw = b"".join([chunk async for chunk in response.body_iterator])  # type: ignore[attr-defined]
            body = json.loads(raw) if raw else None
            headers = {k: v for k, v in response.headers.items()
                       if k.lower() in ("location", "etag")}
            state.keys[key] = (response.status_code, body, headers)
            response = Response(raw, status_code=response.status_code,
                                headers=dict(response.headers))
        # slow forward mutations only: reads and revex's own undo requests stay fast
        undoing = (key or "").endswith("-undo")
        delay = float(request.query_params.get("delay", 0) or 0) if mutating and not undoing \
            else 0.0
        once = request.headers.get("x-delay-once")
        if once and key and key not in state.delayed_keys:
            state.delayed_keys.add(key)
            delay = max(delay, float(once))
        if delay:
            await asyncio.sleep(delay)
        return response

    def precondition(request: Request, current: dict[str, Any] | None) -> Response | None:
        want = request.headers.get("if-match")
        if want is None:
            return None
        state.if_match.append(want)
        if current is None or (want != "*" and want != etag_of(current)):
            return _json(412, {"error": "precondition failed"})
        return None

    @app.get("/_state")
    def dump() -> dict[str, Any]:
        return {"collections": {c: [items[i] for i in sorted(items)]
                                for c, items in state.collections.items()},
                "counter": state.counter, "emails": state.emails}

    @app.get("/fail")
    def fail(status: int = 503) -> Response:
        return _json(status, {"error": "failing on purpose"})

    @app.get("/counter")
    def counter() -> dict[str, int]:
        return {"value": state.counter}

    @app.post("/counter/increment")
    def increment() -> dict[str, int]:
        state.counter += 1
        return {"value": state.counter}

    @app.post("/counter/decrement")
    def decrement() -> dict[str, int]:
        state.counter -= 1
        return {"value": state.counter}

    @app.post("/emails")
    async def send_email(request: Request) -> Response:
        state.emails.append(await request.json())
        return _json(202, {"queued": len(state.emails)})

    @app.post("/payments/{pid}/refund")
    def refund(pid: int) -> Response:
        item = state.collections.get("payments", {}).get(pid)
        if item is None:
            return _json(404, {"error": "no such payment"})
        item["status"] = "refunded"
        return _json(200, item)

    @app.post("/batch/{coll}")
    async def batch(coll: str, request: Request, fail_after: int | None = None) -> Response:
        created: list[Any] = []
        for i, body in enumerate(await request.json()):
            if fail_after is not None and i >= fail_after:
                return _json(500, {"error": "failed half-way", "created": created})
            nid = state.new_id(coll)
            state.collections[coll][nid] = {**body, "id": nid}
            created.append(nid)
        return _json(200, {"created": created})

    @app.get("/{coll}")
    def list_items(coll: str) -> Response:
        items = state.collections.get(coll, {})
        return _json(200, [items[i] for i in sorted(items)])

    @app.get("/{coll}/{iid}")
    def get_item(coll: str, iid: int) -> Response:
        item = state.collections.get(coll, {}).get(iid)
        if item is None:
            return _json(404, {"error": "not found"})
        return _json(200, item, {"etag": etag_of(item)})

    @app.post("/{coll}")
    async def create(coll: str, request: Request) -> Response:
        body = await request.json()
        with state.lock:
            items = state.collections.setdefault(coll, {})
            given = body.get("id") if isinstance(body, dict) else None
            # ?upsert=1: a POST naming an existing id replaces that item (Location names it)
            upsert = bool(request.query_params.get("upsert"))
            free = isinstance(given, int) and (given not in items or upsert) \
                and coll != "ledger"
            nid = int(given) if free and given is not None else state.new_id(coll)
            item = {**body, "id": nid}
            if coll == "payments":
                item["status"] = "captured"
            item = _server_managed(coll, None, item)
            items[nid] = item
        if request.query_params.get("fail"):
            return _json(500, {"error": "stored, then failed"})
        slow = float(request.headers.get("x-slow-create", 0) or 0) if coll == "ledger" else 0
        if slow:
            await asyncio.sleep(slow)  # stored; the answer is late
        # ?location=URL: a server whose answer points somewhere else
        location = request.query_params.get("location") or f"/{coll}/{nid}"
        return _json(201, item, {"location": location, "etag": etag_of(item)})

    @app.put("/{coll}/{iid}")
    async def replace(coll: str, iid: int, request: Request) -> Response:
        body = await request.json()
        items = state.collections.setdefault(coll, {})
        refused = precondition(request, items.get(iid))
        if refused is not None:
            return refused
        if coll in ("registry", "ledger") and iid not in items:
            return _json(404, {"error": "PUT cannot create here; POST to /registry"})
        status = 200 if iid in items else 201
        item = _server_managed(coll, items.get(iid), {**body, "id": iid})
        items[iid] = item
        return _json(status, item, {"etag": etag_of(item)})

    @app.patch("/{coll}/{iid}")
    async def patch(coll: str, iid: int, request: Request) -> Response:
        items = state.collections.get(coll, {})
        if iid not in items:
            return _json(404, {"error": "not found"})
        refused = precondition(request, items[iid])
        if refused is not None:
            return refused
        item = _server_managed(coll, items[iid], {**items[iid], **(await request.json()),
                                                  "id": iid})
        items[iid] = item
        return _json(200, item, {"etag": etag_of(item)})

    @app.delete("/{coll}/{iid}")
    def delete(coll: str, iid: int, request: Request) -> Response:
        items = state.collections.get(coll, {})
        if iid not in items:
            return _json(404, {"error": "not found"})
        refused = precondition(request, items[iid])
        if refused is not None:
            return refused
        if coll == "tickets":
            items[iid] = {**items[iid], "deleted": True}
            return _json(204, None)
        del items[iid]
        if coll == "users":
            members = state.collections.get("memberships", {})
            for mid in [m for m, item in members.items() if item.get("userId") == iid]:
                del members[mid]
        return _json(204, None)

    return app


def _server_managed(coll: str, old: dict[str, Any] | None, item: dict[str, Any]
                    ) -> dict[str, Any]:
    """Fields the server sets itself, whatever the client sent."""
    if coll == "docs":
        return {**item, "revision": int((old or {}).get("revision", 0)) + 1}
    return item


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve(app: Any, port: int | None = None) -> Iterator[str]:
    """Serve ``app`` with uvicorn on loopback in a thread; yields the base URL."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted sockets inherit it: without it, a response written in two parts waits out
    # the client's delayed ACK (~40 ms per request on loopback)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", port or 0))
    # A keep-alive connection the server drops after uvicorn's default 5 s idle can race a
    # client that reuses it at that moment (httpx then sees ReadError); loaded test runs
    # leave pooled connections idle that long, so they are kept longer here.
    config = uvicorn.Config(app, log_level="error", lifespan="off", timeout_graceful_shutdown=1,
                            timeout_keep_alive=120)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test REST app did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()


JSON_SERVER_BIN = "tests/.node/node_modules/json-server/lib/cli/bin.js"
JSON_SERVER_INSTALL = "npm install --prefix tests/.node json-server@0.17.4"


@contextlib.contextmanager
def serve_json_server(db: dict[str, Any], workdir: Any, root: Any = ".") -> Iterator[str]:
    """Run json-server 0.17 (a common third-party mock backend) on a free loopback port.

    Raises FileNotFoundError when node or json-server is missing (install it with
    ``JSON_SERVER_INSTALL`` from the repository root).
    """
    import os
    import shutil
    import subprocess
    from pathlib import Path

    import httpx

    node = shutil.which("node")
    script = Path(root) / JSON_SERVER_BIN
    if node is None or not script.exists():
        raise FileNotFoundError(f"json-server needs node and `{JSON_SERVER_INSTALL}`")
    path = Path(workdir) / "db.json"
    path.write_text(json.dumps(db))
    port = free_port()
    proc = subprocess.Popen([node, str(script), "--host", "127.0.0.1", "--port", str(port),
                             "--quiet", str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            env={**os.environ, "NO_UPDATE_NOTIFIER": "1"})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(base + "/db", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("json-server did not start") from None
                time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
