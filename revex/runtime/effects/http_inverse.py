"""Inverses from HTTP semantics: representations, drift checks and restores of one URL.

A *representation* is what a GET of a URL returned, kept small for the journal: status, ETag,
content type and the sha256 of the body (the bytes go to the content store). An absent resource
is ``{"status": 404}``. An action's DONE record lists, per URL it touched, the representation
before (``pre``) and after (``post``) it. Undo of one URL is compare-and-set:

- the URL already holds ``pre`` → nothing to do (undo is idempotent);
- it holds something other than ``post`` → drift: ConflictError unless forced;
- otherwise restore ``pre``: DELETE what was created; PUT the pre-image back over a change
  (``If-Match`` with the ETag the forward call left, when the server gave a strong one); recreate
  what was deleted with PUT to the same URL, or POST to the collection where PUT cannot create
  (404/405). A 412 from the server is drift detected by the server.

Servers that ignore ETags are covered by comparing bodies as JSON (bytes when not JSON).

The ``post`` of a mutation is read by a GET after it, unless its own answer vouches for the state
it left (:meth:`Representations.vouched`): a 200, 201 or 204 to PUT or PATCH, or a 201 with a
``Location`` to POST, carrying a strong ETag. RFC 9110 9.3.4 lets a PUT answer carry a validator
only when it reflects the new representation, a PATCH answer's ETag is the patched resource's
(RFC 5789 2.1) and a 201's is the created resource's (RFC 7231 7.2). Such a ``post`` holds no
body (``{"status", "etag", "by": "etag"}``): drift is a GET whose ETag differs, and the restore
is sent with ``If-Match`` on it. A server whose GET shows another ETag than its answer did gives
a conflict (never a silent overwrite); one that keeps an ETag across a change would hide drift
from the check, but the restore is still verified by a GET against the full pre-image. On a
service declared ``full_representations``, an answer without a strong ETag is kept whole instead
(``"by": "answer"``, compared as a body like any GET).

Every restore is verified: the URL is read again and must show ``pre`` (absent for a created
resource). A server that answers 2xx and keeps, rewrites or moves the resource (a soft delete, a
server-managed field, a re-create under a new id) gives a ConflictError naming the request, the
URL and the fields that differ; a copy that a re-create put under another URL is deleted again
and named. A resource is identified by :func:`resource_key`: scheme, host and path, not the query.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx

from revex.errors import ActionFailed, ConflictError, StateError
from revex.runtime.effects.http_cassette import WireRequest, WireResponse
from revex.runtime.store import ContentStore

ABSENT_STATUSES = (404, 410)
Rep = dict[str, Any]
Send = Callable[[WireRequest], WireResponse]
# journals an event (kind, target, params) before and after an undo request that creates
Note = Callable[[str, str, dict[str, Any]], None]
# (kind, params) of the ``http.undo.*`` events journaled for a URL earlier in this episode
Earlier = Callable[[str], list[tuple[str, dict[str, Any]]]]


_UNRESERVED = re.compile(r"%(4[1-9A-F]|5[0-9A]|6[1-9A-F]|7[0-9A]|3[0-9]|2D|2E|5F|7E)",
                         re.IGNORECASE)


@functools.lru_cache(maxsize=1024)
def parsed_url(url: str) -> httpx.URL:
    """``httpx.URL(url)``, parsed once per distinct text (a journaled request parses its URL
    five times otherwise: plan, pre-image GET, request, declarations, resource key). Only for
    URLs as the journal holds them, with secret placeholders, never resolved values.
    Raises httpx.InvalidURL."""
    return httpx.URL(url)


@functools.lru_cache(maxsize=1024)
def resource_key(url: str) -> str:
    """The identity of the resource at ``url``: lowercase scheme and host, no default port,
    the path without query or fragment, percent-escapes of unreserved characters decoded and
    the others upper-cased, one trailing slash dropped (``/`` stays)."""
    parsed = parsed_url(url)
    port = f":{parsed.port}" if parsed.port is not None else ""
    path = parsed.raw_path.decode("ascii").split("?", 1)[0] or "/"
    # RFC 3986 6.2.2: %7E and ~ are the same; %2F and / are not (only unreserved are decoded)
    path = _UNRESERVED.sub(lambda m: chr(int(m.group(1), 16)), path)
    path = re.sub(r"%[0-9a-fA-F]{2}", lambda m: m.group(0).upper(), path)
    if len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    return f"{parsed.scheme.lower()}://{parsed.host.lower()}{port}{path}"


def same_resource(a: str, b: str) -> bool:
    return resource_key(a) == resource_key(b)


def same_origin(a: str, b: str) -> bool:
    """Same scheme, host and port: revex sends its own requests (probes, undo) only to the
    origin a policy allowed, never where a server's answer points."""
    return resource_key(a).split("/", 3)[:3] == resource_key(b).split("/", 3)[:3]


def item_url(collection: str, ident: Any) -> str:
    """The URL of the item ``ident`` (from a server's answer) in ``collection``: one path
    segment, so an id such as ``../admin`` cannot name another resource."""
    segment = quote(str(ident), safe=":@!$&'()*+,;=-._~")
    if segment in ("", ".", ".."):
        segment = quote(segment, safe="").replace(".", "%2E")
    return f"{collection.split('?', 1)[0].rstrip('/')}/{segment}"


def absent() -> Rep:
    return {"status": 404}


def is_absent(rep: Rep | None) -> bool:
    return rep is None or rep.get("status") in ABSENT_STATUSES


def strong_etag(rep: Rep | None) -> str | None:
    etag = (rep or {}).get("etag")
    return etag if isinstance(etag, str) and not etag.startswith("W/") else None


class Representations:
    """Makes, loads and compares representations (bodies in the content store)."""

    def __init__(self, store: ContentStore) -> None:
        self.store = store

    def vouched(self, method: str, response: WireResponse, *, full: bool = False
                ) -> Rep | None:
        """The post-state a mutation's own answer vouches for (see the module doc), or None
        when a GET must read it. ``full``: the service is declared to answer with full
        representations (for POST: and this answer named what it created), so a 2xx body
        without a strong ETag is kept as the state a GET would show (status 200)."""
        etag = response.header("etag")
        strong = isinstance(etag, str) and len(etag) > 2 and etag[0] == etag[-1] == '"'
        if method in ("PUT", "PATCH"):  # not 202: accepted is not yet applied
            vouches = response.status in (200, 201, 204)
        else:  # POST: only an answer naming what it created speaks for it
            vouches = method == "POST" and response.status == 201 \
                and bool(response.header("location"))
        if vouches and strong:
            return {"status": response.status, "etag": etag, "by": "etag"}
        if full and response.status in (200, 201) and response.content \
                and method in ("PUT", "PATCH", "POST"):
            return {"status": 200, "etag": etag, "ctype": response.header("content-type"),
                    "sha": self.keep(response.content), "by": "answer"}
        return None

    def keep(self, body: bytes) -> str:
        """Store a body, durable by the time the journal's next durable commit returns (the
        INTENT's, for a pre-image); its sha256. Through ``put_fd``: a store that keeps small
        pre-images in the journal's transaction (no blob file, no fsyncs of its own) keeps
        these there too; bodies never enter journal records either way."""
        inline = self.store.inline
        if inline is not None and len(body) <= inline.max_bytes:
            # what put_fd does with a small rest, without the anonymous file around it
            digest = hashlib.sha256(body).hexdigest()
            inline.stage_blob(digest, body)
            return digest
        memfd_create = getattr(os, "memfd_create", None)
        if memfd_create is None:
            return self.store.put_bytes(body)
        fd = memfd_create("revex-http-body", os.MFD_CLOEXEC)
        try:
            _write_all(fd, body)
            os.lseek(fd, 0, os.SEEK_SET)
            return self.store.put_fd(fd)[0]
        finally:
            os.close(fd)

    def of(self, response: WireResponse) -> Rep:
        if response.status in ABSENT_STATUSES:
            return absent()
        return {"status": response.status, "etag": response.header("etag"),
                "ctype": response.header("content-type"),
                "sha": self.keep(response.content)}

    def body(self, rep: Rep) -> bytes:
        """The stored body of ``rep``. Raises ActionFailed when the blob is gone."""
        try:
            return self.store.read_bytes(rep["sha"])
        except (OSError, StateError) as exc:
            raise ActionFailed(f"pre-image body {rep.get('sha')} is missing from the content "
                               f"store: {exc}") from exc

    def of_json(self, value: Any) -> Rep:
        """A representation of a JSON value read from elsewhere (an entry of a listing)."""
        return {"status": 200, "etag": None, "ctype": "application/json",
                "sha": self.keep(json.dumps(value).encode())}

    def json_of(self, rep: Rep | None) -> Any:
        """The decoded JSON body of ``rep``; None when absent or not JSON."""
        if is_absent(rep):
            return None
        assert rep is not None
        kind, value = _decoded(self.body(rep))
        return value if kind == "json" else None

    def difference(self, rep: Rep | None, response: WireResponse) -> str:
        """What differs between ``rep`` and ``response``, naming fields, never values (a body
        may hold what the journal must not)."""
        if is_absent(rep):
            fields = _fields(_decoded(response.content))
            return (f"it should be absent, but GET still answers {response.status}"
                    + (f" (fields: {fields})" if fields else ""))
        assert rep is not None
        if response.status in ABSENT_STATUSES:
            return f"it should be {describe(rep)}, but GET answers {response.status} (absent)"
        if rep.get("status") != response.status:
            return f"status {rep.get('status')} before, {response.status} now"
        return _body_difference(_decoded(self.body(rep)), _decoded(response.content))

    def difference_of(self, content: bytes, response: WireResponse) -> str:
        """What differs between a body and ``response``'s (field names, never values)."""
        return _body_difference(_decoded(content), _decoded(response.content))

    def same(self, rep: Rep | None, response: WireResponse) -> bool:
        """Does ``response`` show the state ``rep`` describes?"""
        if is_absent(rep) or response.status in ABSENT_STATUSES:
            return is_absent(rep) and response.status in ABSENT_STATUSES
        assert rep is not None
        if rep.get("by") == "etag":  # vouched for by the mutation's answer: no body kept
            return 200 <= response.status < 300 and response.header("etag") == rep["etag"]
        if rep.get("status") != response.status:
            return False
        return _decoded(self.body(rep)) == _decoded(response.content)


def same_body(a: bytes, b: bytes) -> bool:
    """Do two bodies hold the same document (equal as JSON, else as bytes)?"""
    return _decoded(a) == _decoded(b)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _decoded(content: bytes) -> Any:
    try:
        return ("json", json.loads(content))
    except (ValueError, UnicodeDecodeError):
        return ("bytes", content)


def _fields(decoded: tuple[str, Any]) -> str:
    kind, value = decoded
    if kind == "json" and isinstance(value, dict):
        return ", ".join(sorted(map(str, value))[:20])
    return ""


def _body_difference(before: tuple[str, Any], now: tuple[str, Any]) -> str:
    (kind_b, b), (kind_n, n) = before, now
    if kind_b == kind_n == "json" and isinstance(b, dict) and isinstance(n, dict):
        changed = sorted(str(k) for k in b.keys() & n.keys() if b[k] != n[k])
        added = sorted(str(k) for k in n.keys() - b.keys())
        removed = sorted(str(k) for k in b.keys() - n.keys())
        parts = [f"{label}: {', '.join(keys[:20])}" for label, keys in
                 (("fields changed", changed), ("fields added", added),
                  ("fields removed", removed)) if keys]
        return "; ".join(parts) or "the bodies differ"
    if kind_b == kind_n == "json" and isinstance(b, list) and isinstance(n, list):
        return f"the list differs ({len(b)} entries before, {len(n)} now)"
    size_b = len(b) if kind_b == "bytes" else len(json.dumps(b))
    size_n = len(n) if kind_n == "bytes" else len(json.dumps(n))
    return f"the body differs ({size_b} bytes before, {size_n} now)"


def variant(key: str, what: str) -> str:
    """The idempotency key of a fallback request of one undo step (``-undo`` stays last)."""
    return f"{key.removesuffix('-undo')}-{what}-undo" if key.endswith("-undo") \
        else f"{key}-{what}"


def collection_of(url: str) -> str:
    base = url.partition("?")[0]
    return base.rstrip("/").rsplit("/", 1)[0]


def describe(rep: Rep | None) -> str:
    if is_absent(rep):
        return "absent"
    assert rep is not None
    tag = f" etag {rep['etag']}" if rep.get("etag") else ""
    return f"status {rep['status']}{tag}"


class Restorer:
    """Compare-and-set checks and restores of single URLs."""

    def __init__(self, reps: Representations, send: Send, id_field: str = "id",
                 note: Note | None = None, earlier: Earlier | None = None) -> None:
        from revex.runtime.effects.http_recreate import Recreator

        self.reps = reps
        self.send = send
        self.recreator = Recreator(self, id_field, note, earlier)

    def get(self, url: str, headers: dict[str, str]) -> WireResponse:
        return self.send(WireRequest("GET", url, dict(headers)))

    def drift(self, url: str, target: dict[str, Any], headers: dict[str, str]) -> str | None:
        """A line naming the drift of ``url``, or None when it holds ``post`` or ``pre``."""
        current = self.get(url, headers)
        if self.reps.same(target["post"], current) or self.reps.same(target["pre"], current):
            return None
        now = self.reps.of(current) if current.status not in ABSENT_STATUSES else absent()
        return (f"{url}: the episode left it {describe(target['post'])}, now it is "
                f"{describe(now)}")

    def restore(self, url: str, target: dict[str, Any], headers: dict[str, str], key: str,
                *, force: bool, label: str) -> bool:
        """Put ``url`` back to ``target['pre']`` and verify it by a GET; False when it
        already was.

        Raises ConflictError on drift (unless ``force``), a 412, or when the re-read does not
        show the pre-image; ActionFailed when the server refuses the restoring request.
        """
        pre, post = target["pre"], target["post"]
        current = self.get(url, headers)
        if self.reps.same(pre, current):
            return False
        if not self.reps.same(post, current) and not force:
            now = self.reps.of(current)
            raise ConflictError(
                f"{label} {url!r}: changed since the episode touched it (left "
                f"{describe(post)}, now {describe(now)}); nothing was sent (force=True "
                f"overwrites)", [f"{label} {url}"])
        base = {**headers, "idempotency-key": key}
        etag = strong_etag(post) if self.reps.same(post, current) else None
        if etag and not force:
            base["if-match"] = etag
        if is_absent(pre):
            response = self.send(WireRequest("DELETE", url, base))
            self.check_answer(response, "DELETE", url, label, ok_absent=True)
            self.verify(url, pre, headers, "DELETE", label)
            return True
        body = self.reps.body(pre)
        put_headers = {**base, "content-type": pre.get("ctype") or "application/json"}
        method = "PUT"
        response = self.send(WireRequest("PUT", url, put_headers, body))
        if response.status in (404, 405) and current.status in ABSENT_STATUSES:
            # the server cannot create by PUT: recreate through its collection (another
            # request, so another key: a server that honours keys would replay the PUT's 404)
            put_headers.pop("if-match", None)
            put_headers["idempotency-key"] = variant(key, "post")
            method = "POST"
            response = self.recreator.recreate(url, pre, body, put_headers, headers,
                                               label=label)
        elif response.status == 405:
            method = "PATCH"
            put_headers["idempotency-key"] = variant(key, "patch")
            response = self.send(WireRequest("PATCH", url, put_headers, body))
        self.check_answer(response, method, url, label)
        self.verify(url, pre, headers, method, label)
        return True

    def verify(self, url: str, pre: Rep, headers: dict[str, str], method: str,
               label: str) -> None:
        """Re-read ``url`` after an undo request: it must show ``pre``.

        Raises ConflictError naming the request, the URL and what differs.
        """
        after = self.get(url, headers)
        if self.reps.same(pre, after):
            return
        raise ConflictError(
            f"{label}: undo {method} {url!r} answered success, but a GET shows it does not "
            f"hold its pre-image: {self.reps.difference(pre, after)}; it is not marked undone "
            "(the server may keep, rewrite or move what it is sent: declare a compensation "
            "for this endpoint)", [f"{label} {url}"])

    def check_answer(self, response: WireResponse, what: str, url: str, label: str, *,
                     ok_absent: bool = False) -> None:
        """Raises ConflictError on a 412, ActionFailed on any other non-2xx answer."""
        if response.status == 412:
            raise ConflictError(f"{label} {url!r}: the server refused the undo with 412 "
                                "(If-Match failed: changed since)", [f"{label} {url}"])
        if 200 <= response.status < 300 or (ok_absent and response.status in ABSENT_STATUSES):
            return
        raise ActionFailed(f"{label}: undo {what} of {url!r} got HTTP {response.status}")
