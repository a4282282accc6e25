"""The forward half of one HTTP request: prepare (pre-images, durable before it is sent),
apply (send, with retries where a re-send cannot apply twice), probe (what it left, also after a
crash) and cleanup (undo what a failed request may have done).

What a reversible request journals before it leaves: the pre-image of its URL (for POST the
representation of the target, which may be a singular resource the POST replaces, and the ids
of the collection) and of each declared cascade. What its DONE record holds: per resource it
touched, the representation before (``pre``) and after (``post``); for a compensable request
the compensating request and ``undo_check``: ``read_back`` (a declared GET whose JSON must
show declared fields) or ``none`` with ``why_unverified`` (its result cannot be re-read).

The ``post`` comes from the request's own answer where it vouches for it (a strong ETag, or
the body on a service declared ``full_representations``; see
:meth:`Representations.vouched`), so a PUT or PATCH costs one extra round trip (the pre-image
GET); otherwise it is read by a GET after the request. A POST to a service declared
``posts_create`` (see :mod:`http_compensations`) lists nothing: it is trusted to create what its
answer names (``Location`` or the id field), and only the item its body names by id, if any, is
read before it; its cost does not grow with the collection. The request body is kept (in the
content store) only where a probe may re-send it: compensable requests.

A default POST reads its target before it (a singular resource it may replace; for a
collection, the listing that finds a replaced item and what a failed POST made) only while that
target is small. A target whose listing was over :data:`LISTING_MAX` bytes is remembered, for
the runtime, as a *large collection* (:class:`LargeCollections`): a live POST into it (not
record or replay: a cassette replays the same requests in any runtime) reads only the
item its body names by id, and what it did is taken from a ``201 Created`` with a ``Location``
on the request's origin (RFC 9110 15.3.2: a new resource), checked by one GET of the Location,
which must show what the answer says was created (its strong ETag, else its body). Any other
answer (200, 204, no Location, a Location naming the request URL itself or what the answer
does not describe, a 5xx, no answer) leaves an unknown effect: rollback refuses it, naming
why, unless forced. Its cost does not grow with the collection.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import httpx

from revex.errors import ActionFailed, ConfigError, ConflictError, PolicyViolation
from revex.runtime.effects.http_cassette import WireRequest, WireResponse
from revex.runtime.effects.http_compensations import CompensationContext, Operation
from revex.runtime.effects.http_inverse import (
    ABSENT_STATUSES,
    absent,
    is_absent,
    item_url,
    parsed_url,
    resource_key,
    same_body,
    same_origin,
    same_resource,
    strong_etag,
)
from revex.runtime.effects.http_wire import NotSent
from revex.runtime.journal import Record

if TYPE_CHECKING:
    from revex.runtime.effects.http import HttpEffect

KIND = "http.request"
UNVERIFIED_COMPENSATION = (
    "a declared compensation: its undo sends the compensating request and requires a 2xx "
    "answer, but the compensated state cannot be re-read and compared with a pre-image")


# a POST target whose listing is larger than this is a large collection (not listed again):
# the size past which a listing no longer fits in the journal beside its INTENT (INLINE_MAX)
LISTING_MAX = 64 * 1024


class LargeCollections:
    """The POST targets (by :func:`resource_key`) whose listing, read before a POST, was over
    :data:`LISTING_MAX` bytes, with that size: one per runtime, shared by its episodes. A fact
    about what a GET showed, never a guess; if the collection shrinks later, its POSTs stay
    unlisted, which costs what a failed POST made (an unknown effect), never soundness."""

    def __init__(self) -> None:
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()

    def size(self, url: str) -> int | None:
        with self._lock:
            return self._sizes.get(resource_key(url))

    def note(self, url: str, size: int) -> None:
        with self._lock:
            self._sizes[resource_key(url)] = size


def undo_key(key: str, index: int) -> str:
    """The idempotency key restoring the ``index``-th resource of an action: one key per
    resource, so a server that de-duplicates keys does not answer the second restore with the
    first one's response."""
    return key if index == 0 else f"{key.removesuffix('-undo')}-{index}-undo"


class Forward:
    """prepare / apply / cleanup of one request (the halves of its Plan), and the probe of
    what it did, also from its INTENT after a crash (:meth:`from_intent`)."""

    def __init__(self, fx: HttpEffect, request: WireRequest, op: Operation | None,
                 path_params: dict[str, str], klass: str, dry: bool, key: str,
                 identity: dict[str, str], timeout: float | None,
                 cascades: Sequence[str] = ()) -> None:
        self.fx = fx
        self.cascades = list(cascades)
        self.request = request
        self.op = op
        self.path_params = path_params
        self.klass = klass
        self.dry = dry
        self.key = key
        self.identity = identity
        self.timeout = timeout

    @classmethod
    def from_intent(cls, fx: HttpEffect, intent: Record, headers: dict[str, str]) -> Forward:
        undo = intent.undo
        content = b""
        if undo.get("body_sha"):
            with fx.reps.store.path_of(undo["body_sha"]).open("rb") as fh:
                content = fh.read()
        request = WireRequest(undo["method"], undo["url"],
                              {**headers, **undo.get("request_headers", {}),
                               "idempotency-key": undo["key"]}, content)
        url = httpx.URL(undo["url"])
        found = fx.comp.find(undo["method"], url.host, url.port, url.path)
        return cls(fx, request, found[0] if found else None, found[1] if found else {},
                   undo["class"], False, undo["key"], headers, None)

    @functools.cached_property
    def _origin(self) -> tuple[str, int | None]:
        """Host and port of the request, parsed once (the declarations are matched on them)."""
        url = parsed_url(self.request.url)
        return url.host, url.port

    @property
    def keys_honoured(self) -> bool:
        return self.fx.comp.keys_honoured(*self._origin)

    def prepare(self) -> dict[str, Any]:
        """Undo info, durable before the request leaves. Raises PolicyViolation when a
        reversible request's pre-image cannot be read, OSError when the server is down."""
        method, url = self.request.method, self.request.url
        undo: dict[str, Any] = {
            "class": self.klass, "method": method, "url": self.fx.secrets.redact(url),
            "key": self.key, "identity": self.fx.secrets.redact_headers(self.identity),
            "request_headers": {k: v for k, v in self.request.headers.items()
                                if k == "content-type"},
        }
        if self.request.content and self.klass == "compensable":
            undo["body_sha"] = self.fx.reps.store.put_bytes(self.request.content)
        if self.dry:
            return {**undo, "dry_run": True}
        if self.klass == "irreversible":
            return {**undo, "irreversible": True}
        if self.klass == "read":
            return undo
        # live only: a recording must hold what a replay in any runtime asks for, so record
        # and replay list before every POST as a runtime that learned nothing would
        large = self.fx.collections.size(url) \
            if method == "POST" and self.fx.opts.mode in ("live", "dry_run") else None
        if method == "POST" and self.klass == "reversible" and (self.posts_create or large):
            # declared (True), or a large collection: only a checked 201 + Location ("201")
            undo["creates"] = True if self.posts_create else "201"
            if not self.posts_create:
                undo["listing_bytes"] = large
            named = self._named_pre(undo["url"])
            if named:
                undo["named"] = named
        elif method == "POST":
            if not (self.klass == "compensable" and self.keys_honoured):
                target = self.fx.restorer.get(url, self.identity)
                undo["listing"] = self._ids(target)
                if self.klass == "reversible" and (target.status in ABSENT_STATUSES
                                                   or 200 <= target.status < 300):
                    # a POST may replace what is there (a singular resource): keep it
                    undo["target_pre"] = self.fx.reps.of(target)
                if self.klass == "reversible" and undo["listing"] is not None \
                        and len(target.content) > LISTING_MAX:
                    self.fx.collections.note(url, len(target.content))
        elif self.klass == "reversible":
            pre = self.fx.restorer.get(url, self.identity)
            if pre.status not in ABSENT_STATUSES and not 200 <= pre.status < 300:
                raise PolicyViolation(
                    f"{method} {undo['url']} refused: its pre-image GET returned HTTP "
                    f"{pre.status}, so the request could not be undone; declare a compensation "
                    "or mark the operation irreversible", rule="http-preimage",
                    action_kind=KIND, target=undo["url"])
            undo["pre"] = self.fx.reps.of(pre)
        if self.cascades:
            undo["cascades"] = self._capture_cascades(undo["url"])
        return undo

    @property
    def full(self) -> bool:
        """Is the service declared to answer writes with full representations?"""
        return self.fx.comp.full_representations(*self._origin)

    @property
    def posts_create(self) -> bool:
        return self.fx.comp.posts_create(*self._origin)

    def _named_pre(self, shown: str) -> dict[str, Any]:
        """The pre-image of the item a POST's body names by id (it may replace it), keyed by
        its URL; {} when the body names none. Raises PolicyViolation when it cannot be read."""
        body = _json(self.request.content)
        field = self.fx.opts.id_field
        if not isinstance(body, dict) or body.get(field) is None:
            return {}
        one = item_url(self.request.url, body[field])
        got = self.fx.restorer.get(one, self.identity)
        if got.status not in ABSENT_STATUSES and not 200 <= got.status < 300:
            raise PolicyViolation(
                f"POST {shown} refused: its body names {field!r}, and the GET of that item "
                f"returned HTTP {got.status}, so what the POST may replace could not be "
                "restored", rule="http-preimage", action_kind=KIND, target=shown)
        return {one: self.fx.reps.of(got)}

    def _capture_cascades(self, shown: str) -> dict[str, Any]:
        """Pre-images of what the server is declared to change along with this request (a
        DELETE of a user deleting its memberships): each item a declared listing names, or
        the declared URL itself when it is one document. Raises PolicyViolation when one
        cannot be read (then it could not be restored)."""
        captured: dict[str, Any] = {}
        field = self.fx.opts.id_field
        for template in self.cascades:
            url = str(httpx.URL(self.request.url).join(template))
            if not same_origin(url, self.request.url):  # declared as a path: never elsewhere
                raise PolicyViolation(f"{self.request.method} {shown} refused: its declared "
                                      f"cascade {template!r} is not on the request's origin",
                                      rule="http-cascade", action_kind=KIND, target=shown)
            response = self._cascade_get(url, shown)
            if response is None:
                continue
            body = response.json()
            if not isinstance(body, list):
                captured[url] = self.fx.reps.of(response)
                continue
            for entry in body:
                if not isinstance(entry, dict) or field not in entry:
                    raise PolicyViolation(
                        f"{self.request.method} {shown} refused: its declared cascade {url} "
                        f"lists an entry without {field!r}, so it could not be restored",
                        rule="http-cascade", action_kind=KIND, target=shown)
                one = item_url(url, entry[field])
                got = self._cascade_get(one, shown)
                if got is not None:
                    captured[one] = self.fx.reps.of(got)
        return captured

    def _cascade_get(self, url: str, shown: str) -> WireResponse | None:
        response = self.fx.restorer.get(url, self.identity)
        if response.status in ABSENT_STATUSES:
            return None
        if not 200 <= response.status < 300:
            raise PolicyViolation(
                f"{self.request.method} {shown} refused: GET of its declared cascade "
                f"{self.fx.secrets.redact(url)} returned HTTP {response.status}, so what the "
                "server changes with it could not be restored", rule="http-cascade",
                action_kind=KIND, target=shown)
        return response

    def _cascade_targets(self, undo: dict[str, Any]) -> dict[str, Any]:
        """The captured cascade items that changed, as targets (pre, post)."""
        out: dict[str, Any] = {}
        for url, pre in undo.get("cascades", {}).items():
            now = self.fx.restorer.get(url, self.identity)
            if not self.fx.reps.same(pre, now):
                out[url] = {"pre": pre, "post": self.fx.reps.of(now)}
        return out

    def _effect(self, undo: dict[str, Any], targets: dict[str, Any]) -> dict[str, Any]:
        # cascaded items first: undo walks targets backwards, so the resource they depend on
        # is restored before them
        every = {**self._cascade_targets(undo), **targets}
        return {"effect": True, "targets": every} if every else {"effect": False}

    def _listing(self, url: str) -> list[Any] | None:
        """The ids in the collection at ``url`` (to find what a POST created), if it lists."""
        return self._ids(self.fx.restorer.get(url, self.identity))

    def _ids(self, response: WireResponse) -> list[Any] | None:
        body = response.json() if response.status == 200 else None
        if not isinstance(body, list):
            return None
        field = self.fx.opts.id_field
        return [item[field] for item in body if isinstance(item, dict) and field in item]

    def apply(self, undo: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        if self.dry:
            return (WireResponse(200, {"content-type": "application/json",
                                       "x-revex-dry-run": "1"}, b'{"dry_run": true}'),
                    {"status": 200, "dry_run": True})
        response = self._send()
        head = {"status": response.status, "etag": response.header("etag"),
                "location": response.header("location")}
        if self.klass == "read":
            return response, head
        if self.klass == "irreversible":
            return response, head
        return response, {**head, **self.probe(undo, response)}

    def _send(self) -> WireResponse:
        retry_any = self.request.method in ("PUT", "DELETE") or self.keys_honoured
        attempts = 1 + max(0, self.fx.opts.retries)
        for attempt in range(attempts):
            try:
                return self.fx.wire.send(self.request, timeout=self.timeout)
            except NotSent:
                if attempt + 1 >= attempts:
                    raise
            except (TimeoutError, ConnectionError):
                # the request may have arrived: re-send only where that cannot apply twice
                if attempt + 1 >= attempts or not retry_any:
                    raise
        raise AssertionError("unreachable")

    def probe(self, undo: dict[str, Any], response: WireResponse | None) -> dict[str, Any]:
        """What the request left, from its response (None after a crash or failure) and GETs."""
        ok = response is not None and 200 <= response.status < 300
        if self.klass == "compensable":
            return self._compensation(undo, response)
        if response is not None and 400 <= response.status < 500:
            return {"effect": False}
        method, url = self.request.method, self.request.url
        if method != "POST":
            pre = undo["pre"]
            if method == "DELETE" and ok:
                return self._effect(undo, {url: {"pre": pre, "post": absent()}})
            vouched = self.fx.reps.vouched(method, response, full=self.full) \
                if ok and response else None
            if vouched is not None:
                return self._effect(undo, {url: {"pre": pre, "post": vouched}})
            current = self.fx.restorer.get(url, self.identity)
            if not ok and self.fx.reps.same(pre, current):
                return self._effect(undo, {})
            post = self.fx.reps.of(current)
            return self._effect(undo, {url: {"pre": pre, "post": post}})
        if undo.get("creates") == "201":
            return self._created_by_201(undo, response)
        created = self._created(undo, response if ok else None)
        if created is None:
            why = ("POSTs here are declared posts_create, so the collection was not listed "
                   "before it" if undo.get("creates") else "the collection does not list ids")
            return {"effect": "unknown", "why": f"the response named no id or Location and "
                    f"{why}"}
        named = ok and response is not None and self._named_by(response)
        vouched = self.fx.reps.vouched(method, response, full=self.full and named) \
            if ok and response else None
        targets = {}
        for one in created:
            before = self._pre_of(undo, one)
            if before is None:
                return {"effect": "unknown", "why": f"it answered with {one}, which existed "
                        "before, and that resource's pre-image is not known"}
            post = vouched if vouched is not None and len(created) == 1 else \
                self.fx.reps.of(self.fx.restorer.get(one, self.identity))
            targets[one] = {"pre": before, "post": post}
        return self._effect(undo, targets)

    def _created_by_201(self, undo: dict[str, Any], response: WireResponse | None
                        ) -> dict[str, Any]:
        """What a POST into a large collection (not listed before it) did: the resource a 201
        Created names by Location, its pre-state absent (or the body-named item's pre-image),
        its post-state what a GET of it shows, which must match the answer (its strong ETag,
        else its body). Anything else is an unknown effect whose ``why`` says what failed."""
        unlisted = (f"the collection was not listed before it (its listing was "
                    f"{undo.get('listing_bytes')} bytes when revex last read it, over "
                    f"{LISTING_MAX}: a large collection)")

        def unknown(what: str) -> dict[str, Any]:
            return {"effect": "unknown", "why": f"{what}, and {unlisted}"}

        location = response.header("location") if response is not None else None
        if response is None or response.status != 201 or not location:
            answer = "no answer" if response is None else \
                f"HTTP {response.status}" + ("" if location else " without a Location")
            return unknown(f"it got {answer}, not 201 Created with a Location")
        one = str(httpx.URL(self.request.url).join(location))
        if not same_origin(one, self.request.url):
            return unknown(f"its Location {self.fx.secrets.redact(one)!r} is on another "
                           "origin (revex sends nothing there)")
        before = self._pre_of(undo, one)
        if before is None:
            return unknown("its Location names the request URL itself, whose pre-image was "
                           "not read")
        if not is_absent(before):
            # the item its body named, read before the POST: restored whatever it holds now
            post = self.fx.reps.vouched("POST", response) \
                or self.fx.reps.of(self.fx.restorer.get(one, self.identity))
            return self._effect(undo, {one: {"pre": before, "post": post}})
        # believed new: a GET of the Location must show what the answer says was created (its
        # strong ETag, else its body), or the Location may name an item that existed
        got = self.fx.restorer.get(one, self.identity)
        etag = strong_etag(self.fx.reps.vouched("POST", response))
        if not 200 <= got.status < 300:
            what = f"a GET of it answers {got.status}"
        elif etag is not None:
            what = "" if got.header("etag") == etag else \
                "a GET of it shows another ETag than the answer's"
        elif not response.content:
            what = "the answer has neither a strong ETag nor a body to check it against"
        elif not same_body(response.content, got.content):
            what = ("a GET of it does not show the body the answer described "
                    f"({self.fx.reps.difference_of(response.content, got)})")
        else:
            what = ""
        if what:
            return unknown(f"its Location {self.fx.secrets.redact(one)!r} cannot be "
                           f"believed: {what}")
        return self._effect(undo, {one: {"pre": before, "post": self.fx.reps.of(got)}})

    def _pre_of(self, undo: dict[str, Any], one: str) -> dict[str, Any] | None:
        """What ``one``, named by a POST's answer, was before the POST: the POST target's
        pre-image (a singular resource the POST replaced), the entry of the listing taken
        before it (an id that existed), or absent (new). None when it existed but its
        pre-image is not known."""
        if undo.get("creates"):
            # declared to create: the item its body named (read before), else nothing existed;
            # its own URL is a collection, so an answer naming it is not believed
            for named, rep in undo.get("named", {}).items():
                if same_resource(one, named):
                    return dict(rep)
            return None if same_resource(one, self.request.url) else absent()
        target_pre = undo.get("target_pre")
        if same_resource(one, self.request.url):
            return target_pre if target_pre is not None else absent()
        known = {str(i) for i in undo.get("listing") or []}
        collection, _, quoted = resource_key(one).rpartition("/")
        ident = unquote(quoted)
        if ident not in known or collection != resource_key(self.request.url):
            return absent()
        entries = self.fx.reps.json_of(target_pre) if not is_absent(target_pre) else None
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and str(entry.get(self.fx.opts.id_field)) == ident:
                return self.fx.reps.of_json(entry)
        return None

    def _named_by(self, response: WireResponse) -> bool:
        """Does a POST's answer name what it created (Location, or the id field)?"""
        if response.header("location"):
            return True
        body = response.json()
        return isinstance(body, dict) and self.fx.opts.id_field in body

    def _created(self, undo: dict[str, Any], response: WireResponse | None) -> list[str] | None:
        """The URLs a POST created (or replaced); None when that cannot be told, also when
        its Location points to another origin (revex sends no request there)."""
        url = self.request.url
        if response is not None:
            location = response.header("location")
            if location:
                where = str(httpx.URL(self.request.url).join(location))
                return [where] if same_origin(where, url) else None
            body = response.json()
            if isinstance(body, dict) and self.fx.opts.id_field in body:
                return [item_url(url, body[self.fx.opts.id_field])]
        before = undo.get("listing")
        if before is None:
            return None
        now = self._listing(self.request.url)
        if now is None:
            return None
        old = set(map(str, before))
        return [item_url(url, i) for i in now if str(i) not in old]

    def _compensation(self, undo: dict[str, Any], response: WireResponse | None
                      ) -> dict[str, Any]:
        assert self.op is not None and self.op.compensator is not None
        if response is None and self.keys_honoured:
            # after a crash: the server de-duplicates on the key, so this returns the original
            response = self.fx.wire.send(self.request)
        if response is None or not 200 <= response.status < 300:
            if response is not None and response.status < 500:
                return {"effect": False}
            created = self._created(undo, None) if self.request.method == "POST" else None
            if not created:
                return {"effect": "unknown" if created is None else False,
                        "why": "compensable call failed or was interrupted"}
            got = self.fx.restorer.get(created[0], self.identity)
            response = WireResponse(200, got.headers, got.content)
        ctx = CompensationContext(
            self.request.method, self.request.url, self.path_params,
            _json(self.request.content), response.status, response.json(),
            response.headers)
        comp = self.op.compensator(ctx)
        if comp is None:
            return {"effect": False}
        target = str(httpx.URL(self.request.url).join(comp.url))
        out: dict[str, Any] = {
            "effect": True, "operation": self.op.name,
            "compensation": {"method": comp.method.upper(), "url": target, "json": comp.json,
                             "headers": dict(comp.headers)}}
        back = comp.read_back
        if back is None:
            return {**out, "undo_check": "none", "why_unverified": UNVERIFIED_COMPENSATION}
        where = str(httpx.URL(self.request.url).join(back.url))
        if not same_origin(where, self.request.url):
            raise ConfigError(f"compensation {self.op.name!r}: its read-back {back.url!r} is "
                              "not on the request's origin")
        out["compensation"]["read_back"] = {"url": where, "expect": back.expect}
        return {**out, "undo_check": "read_back"}

    def cleanup(self, undo: dict[str, Any]) -> None:
        """The request failed (timeout, connection): probe and undo what it may have done,
        each restore verified as in a rollback.

        Raises ActionFailed when that cannot be established (the probe finds an unknown
        effect, the server is unreachable, a restore conflicts or is refused): the action then
        has no outcome in the journal, so the episode's rollback, close or recovery probes it
        again and undoes it, or reports a conflict; it is never recorded as undone.
        """
        if self.dry or self.klass in ("read", "irreversible"):
            return
        label = f"failed {self.request.method}"
        key = self.key + "-undo"
        why = None
        try:
            post = self.probe(undo, None)
            if post.get("effect") == "unknown":
                why = f"what it did could not be determined ({post.get('why')})"
            elif post.get("effect") is True and "targets" in post:
                targets = list(post["targets"].items())
                for i, (url, target) in reversed(list(enumerate(targets))):
                    self.fx.restorer.restore(url, target, self.identity, undo_key(key, i),
                                             force=False, label=label)
            elif post.get("effect") is True and "compensation" in post:
                self.fx.compensate(label, post["compensation"], self.identity, key)
        except (OSError, ConflictError, ActionFailed) as exc:
            why = f"what it did could not be undone now ({type(exc).__name__}: {exc})"
        if why is not None:
            raise ActionFailed(
                f"{self.request.method} {self.fx.secrets.redact(self.request.url)} failed and "
                f"{why}; it stays open in the journal: the episode's rollback probes it again "
                "and undoes it, or refuses naming it (force=True skips it)")


def _json(content: bytes) -> Any:
    if not content:
        return None
    try:
        return json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return None


