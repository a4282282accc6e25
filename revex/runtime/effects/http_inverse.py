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
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from revex.errors import ActionFailed, ConflictError
from revex.runtime.effects.http_cassette import WireRequest, WireResponse
from revex.runtime.store import ContentStore

ABSENT_STATUSES = (404, 410)
Rep = dict[str, Any]
Send = Callable[[WireRequest], WireResponse]


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

    def of(self, response: WireResponse) -> Rep:
        if response.status in ABSENT_STATUSES:
            return absent()
        return {"status": response.status, "etag": response.header("etag"),
                "ctype": response.header("content-type"),
                "sha": self.store.put_bytes(response.content)}

    def body(self, rep: Rep) -> bytes:
        """The stored body of ``rep``. Raises ActionFailed when the blob is gone."""
        try:
            with self.store.path_of(rep["sha"]).open("rb") as fh:
                return fh.read()
        except OSError as exc:
            raise ActionFailed(f"pre-image body {rep.get('sha')} is missing from the content "
                               f"store: {exc}") from exc

    def same(self, rep: Rep | None, response: WireResponse) -> bool:
        """Does ``response`` show the state ``rep`` describes?"""
        if is_absent(rep) or response.status in ABSENT_STATUSES:
            return is_absent(rep) and response.status in ABSENT_STATUSES
        assert rep is not None
        if rep.get("status") != response.status:
            return False
        return _decoded(self.body(rep)) == _decoded(response.content)


def _decoded(content: bytes) -> Any:
    try:
        return ("json", json.loads(content))
    except (ValueError, UnicodeDecodeError):
        return ("bytes", content)


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

    def __init__(self, reps: Representations, send: Send) -> None:
        self.reps = reps
        self.send = send

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
        """Put ``url`` back to ``target['pre']``; False when it already was.

        Raises ConflictError on drift (unless ``force``) or a 412, ActionFailed when the
        server refuses the restoring request.
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
            self._check(response, "DELETE", url, label, ok_absent=True)
            return True
        body = self.reps.body(pre)
        put_headers = {**base, "content-type": pre.get("ctype") or "application/json"}
        response = self.send(WireRequest("PUT", url, put_headers, body))
        if response.status in (404, 405) and current.status in ABSENT_STATUSES:
            # the server cannot create by PUT: recreate through its collection
            put_headers.pop("if-match", None)
            response = self.send(WireRequest("POST", collection_of(url), put_headers, body))
        elif response.status == 405:
            response = self.send(WireRequest("PATCH", url, put_headers, body))
        self._check(response, "restore", url, label)
        after = self.get(url, headers)
        if not self.reps.same(pre, after):
            shows = describe(self.reps.of(after))
            raise ActionFailed(
                f"{label} {url!r}: restored, but the server now shows {shows}"
                f" instead of the pre-image ({describe(pre)}); it may assign ids or "
                "server-managed fields itself; declare a compensation for this endpoint")
        return True

    def _check(self, response: WireResponse, what: str, url: str, label: str, *,
               ok_absent: bool = False) -> None:
        if response.status == 412:
            raise ConflictError(f"{label} {url!r}: the server refused the undo with 412 "
                                "(If-Match failed: changed since)", [f"{label} {url}"])
        if 200 <= response.status < 300 or (ok_absent and response.status in ABSENT_STATUSES):
            return
        raise ActionFailed(f"{label}: undo {what} of {url!r} got HTTP {response.status}")
