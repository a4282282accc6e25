"""Re-creating a deleted resource through its collection (POST), where PUT cannot create.

A POST creates where the server decides, so each re-create is journaled: before the POST leaves,
the collection's ids and an ``http.undo.recreate`` event; after it, where it landed
(``http.undo.created``). A copy under another id (json-server will not reuse id 0) is deleted
again (``http.undo.stray``) and named in a ConflictError. A re-create that a crash interrupted
(a ``recreate`` event with no ``created`` after it) may have left such a copy: before trying
again, the items that appeared in the collection since then and hold the pre-image (the id
aside) are deleted the same way.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpx

from revex.errors import ConflictError
from revex.runtime.effects.http_cassette import WireRequest, WireResponse
from revex.runtime.effects.http_inverse import (
    ABSENT_STATUSES,
    Earlier,
    Note,
    Rep,
    collection_of,
    item_url,
    same_origin,
    same_resource,
    variant,
)

if TYPE_CHECKING:
    from revex.runtime.effects.http_inverse import Restorer


class Recreator:
    """Re-creates by POST for one :class:`Restorer`, journaling what each POST creates."""

    def __init__(self, restorer: Restorer, id_field: str, note: Note | None,
                 earlier: Earlier | None) -> None:
        self.r = restorer
        self.id_field = id_field
        self.note: Note = note or (lambda kind, target, params: None)
        self.earlier: Earlier = earlier or (lambda target: [])

    def recreate(self, url: str, pre: Rep, body: bytes, post_headers: dict[str, str],
                 headers: dict[str, str], *, label: str) -> WireResponse:
        """POST ``body`` to the collection of ``url``; the answer when it landed at ``url``.

        Raises ConflictError (it landed elsewhere: that copy is deleted again and named; or a
        copy an interrupted attempt made cannot be deleted), ActionFailed (refused).
        """
        collection = collection_of(url)
        key = post_headers["idempotency-key"]
        self._clean_interrupted(url, pre, collection, headers, key, label)
        self.note("http.undo.recreate", url, {"collection": collection, "by": label,
                                              "idempotency_key": key,
                                              "ids_before": self._ids(collection, headers)})
        response = self.r.send(WireRequest("POST", collection, post_headers, body))
        landed = self._landed(collection, response) if response.status < 300 else None
        self.note("http.undo.created", url, {"collection": collection,
                                             "status": response.status, "landed": landed})
        self.r.check_answer(response, "POST", collection, label)
        if landed is not None and not same_resource(landed, url):
            self._stray(url, collection, landed, headers, key, label)
        return response

    def _stray(self, url: str, collection: str, landed: str, headers: dict[str, str],
               key: str, label: str) -> None:
        """Delete the copy a re-create put under ``landed`` and raise, naming both."""
        if not same_origin(landed, url):
            raise ConflictError(
                f"{label}: undo POST {collection!r} to re-create {url!r} answered with a "
                f"Location on another origin ({landed!r}); revex sends nothing there: check "
                "it by hand", [f"{label} {url}", landed])
        removed, status = self._delete(landed, url, headers, key, interrupted=False)
        what = (f"revex deleted it again, so {url!r} stays absent" if removed else
                f"deleting it again got HTTP {status} and it is still there: delete "
                f"{landed!r} by hand")
        raise ConflictError(
            f"{label}: undo POST {collection!r} to re-create {url!r} created {landed!r} "
            f"instead (the server assigned its own id); {what}; re-create it by hand or "
            "declare a compensation for this endpoint", [f"{label} {url}", landed])

    def _delete(self, one: str, url: str, headers: dict[str, str], key: str, *,
                interrupted: bool) -> tuple[bool, int]:
        gone = self.r.send(WireRequest("DELETE", one, {
            **headers, "idempotency-key": variant(key, "stray")}))
        removed = self.r.get(one, headers).status in ABSENT_STATUSES
        self.note("http.undo.stray", one, {"for": url, "delete_status": gone.status,
                                           "removed": removed, "interrupted": interrupted})
        return removed, gone.status

    def _clean_interrupted(self, url: str, pre: Rep, collection: str,
                           headers: dict[str, str], key: str, label: str) -> None:
        """Delete the copies earlier, interrupted re-creates of ``url`` left in the collection.

        Raises ConflictError when one cannot be deleted.
        """
        for note in self._interrupted(url):
            before = note.get("ids_before")
            now = self._ids(collection, headers) if before is not None else None
            if before is None or now is None:
                self.note("http.undo.unchecked", url, {
                    "collection": collection, "why": "an earlier re-create was interrupted "
                    "and the collection does not list ids: a copy it made may remain"})
                continue
            old = {str(i) for i in before}
            for ident in now:
                one = item_url(collection, ident)
                if str(ident) in old or same_resource(one, url):
                    continue
                if not self._holds_pre_image(pre, self.r.get(one, headers)):
                    continue  # someone else's item
                removed, status = self._delete(one, url, headers, key, interrupted=True)
                if not removed:
                    raise ConflictError(
                        f"{label}: an interrupted undo POST {collection!r} left a copy of "
                        f"{url!r} at {one!r}; deleting it got HTTP {status}: delete it by hand",
                        [f"{label} {url}", one])

    def _interrupted(self, url: str) -> list[dict[str, Any]]:
        """The params of each ``recreate`` event of ``url`` that no ``created`` followed."""
        out: list[dict[str, Any]] = []
        pending: dict[str, Any] | None = None
        for kind, params in self.earlier(url):
            if kind == "http.undo.recreate":
                if pending is not None:
                    out.append(pending)
                pending = params
            elif kind == "http.undo.created":
                pending = None
        return out + ([pending] if pending is not None else [])

    def _holds_pre_image(self, pre: Rep, response: WireResponse) -> bool:
        if not 200 <= response.status < 300:
            return False
        want, got = _json(self.r.reps.body(pre)), _json(response.content)
        if not isinstance(want, dict) or not isinstance(got, dict):
            return False
        want.pop(self.id_field, None)
        got.pop(self.id_field, None)
        return bool(want == got)

    def _ids(self, collection: str, headers: dict[str, str]) -> list[Any] | None:
        response = self.r.get(collection, headers)
        body = _json(response.content) if response.status == 200 else None
        if not isinstance(body, list):
            return None
        return [item[self.id_field] for item in body
                if isinstance(item, dict) and self.id_field in item]

    def _landed(self, collection: str, response: WireResponse) -> str | None:
        location = response.header("location")
        if location:
            return str(httpx.URL(collection).join(location))
        body = response.json()
        if isinstance(body, dict) and self.id_field in body:
            return item_url(collection, body[self.id_field])
        return None


def _json(content: bytes) -> Any:
    try:
        return json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return None
