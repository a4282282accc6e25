"""The HTTP effect: one journaled action per request, with an inverse or a compensation.

Each request is classified before it is sent:

- ``read`` (GET, HEAD, OPTIONS): journaled, nothing to undo.
- ``irreversible`` (declared; see :mod:`http_compensations`): the policy sees
  ``irreversible = true`` and denies it unless a rule allows that; its undo info is
  ``{"irreversible": true}`` so rollback skips it and reports show it as not undoable.
- ``compensable`` (declared): the compensating request is computed from the actual response
  and journaled in DONE; undo sends it.
- ``reversible`` (POST/PUT/PATCH/DELETE on a plain JSON API): the pre-image of the URL (a GET,
  journaled in INTENT before the request leaves; for POST also the ids of the collection, as
  the target may be a singular resource the POST replaces, unless it is a large collection:
  see :mod:`http_forward`) and of each declared cascade; after the call, the representation it
  left (see :mod:`http_inverse`). Every restore is verified.

Forward and compensating requests carry ``Idempotency-Key: revex-<episode>-<action>`` (``-undo``
for the inverse, ``-<n>-undo`` for the n-th further resource it restores), so a retry or a
re-send after a crash does not apply twice where the server honours keys. Modes (episode
option ``http_mode``): ``live``, ``record``, ``replay`` (no network), ``dry_run`` (compensable
and irreversible calls are not sent; a synthetic 200 comes back).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from revex.errors import ActionFailed, ConflictError
from revex.runtime.effects.base import EffectContext, Plan, UndoItem
from revex.runtime.effects.http_cassette import SAFE_METHODS, Cassette, WireRequest
from revex.runtime.effects.http_compensations import Compensations, Operation
from revex.runtime.effects.http_forward import KIND, Forward, LargeCollections, undo_key
from revex.runtime.effects.http_inverse import (
    Representations,
    Restorer,
    parsed_url,
    resource_key,
)
from revex.runtime.effects.http_secrets import Secrets
from revex.runtime.effects.http_wire import Wire
from revex.runtime.journal import Journal, Record, Status

_NOT_FORWARDED = frozenset({"host", "content-length", "connection", "accept-encoding",
                            "transfer-encoding"})
# headers that belong to one request, not to the caller's identity (kept off probes and undo)
_PER_REQUEST = frozenset({"content-type", "idempotency-key", "if-match", "if-none-match",
                          "if-unmodified-since", "if-modified-since", "content-md5"})


@dataclass(frozen=True)
class HttpOptions:
    """The ``http`` part of an episode's config."""

    mode: str = "live"
    cassette: str | None = None
    timeout: float = 30.0
    retries: int = 2
    id_field: str = "id"
    compensations: str | None = None
    credentials: str | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> HttpOptions:
        return cls(**config.get("http", {}))


class HttpEffect:
    """Plans, undoes and probes HTTP requests for one episode."""

    def __init__(self, ctx: EffectContext, *, secrets: Secrets | None = None,
                 compensations: Compensations | None = None,
                 journal: Journal | None = None,
                 collections: LargeCollections | None = None) -> None:
        """``journal``: where undo notes what its requests create (a re-create by POST
        lands where the server says); without it those notes are not kept. ``collections``:
        the large collections the runtime has seen (shared by its episodes; see
        :mod:`http_forward`); without it, this episode's own."""
        self.episode_id = ctx.episode_id
        self.journal = journal
        self.collections = collections if collections is not None else LargeCollections()
        self.opts = HttpOptions.from_config(ctx.config)
        self.secrets = secrets if secrets is not None else Secrets()
        if self.opts.credentials:
            self.secrets.add_file(self.opts.credentials)
        self.comp = Compensations()
        if compensations is not None:
            self.comp.extend(compensations)
        if self.opts.compensations:
            self.comp.extend(Compensations.load(self.opts.compensations))
        state_dir = ctx.store.root.parent
        cassette = None
        if self.opts.mode in ("record", "replay"):
            cassette = Cassette.named(state_dir, self.opts.cassette or ctx.episode_id, ctx.store)
            if self.opts.mode == "replay":
                cassette.load()
        self.wire = Wire(self.opts.mode, self.secrets, timeout=self.opts.timeout,
                         cassette=cassette)
        self.reps = Representations(ctx.store)
        self.restorer = Restorer(self.reps, self.wire.send, self.opts.id_field, self._note,
                                 self._earlier)
        # identity headers as sent (placeholders, not values) by action, for probes and undo in
        # this process; the journal holds them redacted for other processes
        self._identity: dict[int, dict[str, str]] = {}

    def close(self) -> None:
        self.wire.close()

    def _earlier(self, target: str) -> list[tuple[str, dict[str, Any]]]:
        if self.journal is None:
            return []
        shown = self.secrets.redact(target)
        return [(r.kind, r.params) for r in self.journal.records(self.episode_id)
                if r.kind.startswith("http.undo.") and r.target == shown]

    def _note(self, kind: str, target: str, params: dict[str, Any]) -> None:
        if self.journal is None:
            return
        self.journal.append(
            episode_id=self.episode_id, kind=kind, target=self.secrets.redact(target),
            status=Status.EVENT, params=self.secrets.redact_obj(params))

    # ---- forward -----------------------------------------------------------------------------

    def plan(self, request: WireRequest, action_seq: int, timeout: float | None = None) -> Plan:
        """The plan for one request. Raises ConfigError for a URL that is not absolute."""
        url = parsed_url(request.url)
        method = request.method.upper()
        host = url.host
        port = url.port or (443 if url.scheme == "https" else 80)
        found = self.comp.find(method, host, port, url.path)
        op = found[0] if found else None
        klass = classify(method, op)
        cascades = self.comp.cascades_for(method, host, port, url.path) \
            if klass == "reversible" else []
        dry = self.opts.mode == "dry_run" and klass in ("irreversible", "compensable")
        key = f"revex-{self.episode_id}-{action_seq}"
        headers = {k.lower(): v for k, v in request.headers.items()
                   if k.lower() not in _NOT_FORWARDED}
        if method not in SAFE_METHODS:
            headers.setdefault("idempotency-key", key)
        identity = {k: v for k, v in headers.items() if k not in _PER_REQUEST}
        self._identity[action_seq] = identity
        wire = WireRequest(method, request.url, headers, request.content)
        attrs = {"method": method, "scheme": url.scheme, "host": host, "port": port,
                 "url_path": url.path, "body_bytes": len(request.content),
                 "irreversible": klass == "irreversible" and not dry,
                 "reversibility": klass, "dry_run": dry}
        target = self.secrets.redact(request.url)
        params: dict[str, Any] = {"method": method, "url": target,
                  "headers": self.secrets.redact_headers(headers),
                  "body_bytes": len(request.content), "class": klass, "mode": self.opts.mode,
                  "idempotency_key": headers.get("idempotency-key"),
                  **({"operation": op.name} if op else {}), **({"dry_run": True} if dry else {})}
        forward = Forward(self, wire, op, found[1] if found else {}, klass, dry, key,
                           identity, timeout, cascades)
        return Plan(kind=KIND, target=target, attrs=attrs, params=params,
                    cost={"http_calls": 1}, prepare=forward.prepare, apply=forward.apply,
                    cleanup=forward.cleanup, read_only=klass == "read")

    # ---- backward ----------------------------------------------------------------------------

    def _headers_for(self, intent: Record) -> dict[str, str]:
        live = self._identity.get(intent.action_seq)
        if live is not None:
            return dict(live)
        journaled = intent.undo.get("identity", {})
        # literal credentials were redacted in the journal; a placeholder survives
        return {k: v for k, v in journaled.items() if v != "***"}

    def check_undo(self, items: Sequence[UndoItem]) -> list[str]:
        """Drift lines, checking each resource once (against the newest action that touched
        it); a resource is its scheme, host and path (:func:`resource_key`), not the query."""
        lines: list[str] = []
        seen: set[str] = set()
        for item in items:
            post = item.post
            if post.get("dry_run") or post.get("effect") is False or "compensation" in post:
                continue
            if post.get("effect") == "unknown":
                lines.append(f"{item.describe()}: what it did could not be determined "
                             f"({post.get('why', 'no id, no listing')}); force=True skips it")
                continue
            headers = self._headers_for(item.intent)
            for url, target in post.get("targets", {}).items():
                if resource_key(url) in seen:
                    continue
                seen.add(resource_key(url))
                line = self.restorer.drift(url, target, headers)
                if line:
                    lines.append(f"{item.describe()}: {line}")
        return lines

    def undo(self, item: UndoItem, *, force: bool) -> None:
        """Restore every URL the action touched, each verified by a GET, or send its
        compensation (verified by its declared read-back, if any).

        Raises ConflictError on drift (unless ``force``) or when a re-read does not show the
        pre-image (or the declared read-back), ActionFailed when the server refuses the
        inverse request.
        """
        post = item.post
        if post.get("dry_run") or post.get("effect") is False:
            return
        headers = self._headers_for(item.intent)
        key = f"revex-{self.episode_id}-{item.intent.action_seq}-undo"
        if "compensation" in post:
            self.compensate(item.describe(), post["compensation"], headers, key)
            return
        if post.get("effect") == "unknown":
            if force:
                return
            raise ConflictError(f"{item.describe()}: what it did could not be determined; "
                                "force=True skips it", [item.describe()])
        targets = list(post.get("targets", {}).items())
        for i, (url, target) in reversed(list(enumerate(targets))):
            self.restorer.restore(url, target, headers, undo_key(key, i), force=force,
                                  label=item.describe())

    def compensate(self, label: str, comp: dict[str, Any], headers: dict[str, str],
                   key: str) -> None:
        """Send a journaled compensation and check it: a 2xx, then its declared read-back.

        Raises ActionFailed when the server refuses it, ConflictError when the read-back does
        not show the declared result.
        """
        send_headers = {**headers, **comp.get("headers", {}), "idempotency-key": key}
        content = b""
        if comp.get("json") is not None:
            content = json.dumps(comp["json"]).encode()
            send_headers["content-type"] = "application/json"
        response = self.wire.send(WireRequest(comp["method"], comp["url"], send_headers,
                                              content))
        if not 200 <= response.status < 300:
            raise ActionFailed(f"{label}: compensation {comp['method']} "
                               f"{comp['url']} got HTTP {response.status}")
        if comp.get("read_back"):
            self._read_back(label, comp, headers)

    def _read_back(self, label: str, comp: dict[str, Any], headers: dict[str, str]) -> None:
        """GET the declared read-back of a sent compensation: it must show the expected
        fields. Raises ConflictError naming the URL and the fields that differ."""
        back = comp["read_back"]
        got = self.wire.send(WireRequest("GET", back["url"], dict(headers)))
        missing = _unmet(back["expect"], got.json()) if 200 <= got.status < 300 else ["*"]
        if missing:
            what = (f"GET answered {got.status}" if missing == ["*"]
                    else f"fields not as declared: {', '.join(missing[:20])}")
            raise ConflictError(
                f"{label}: compensation {comp['method']} {comp['url']!r} answered "
                f"success, but its read-back GET {back['url']!r} does not show the declared "
                f"result ({what}); it is not marked undone", [label])

    def resolve_intent(self, intent: Record) -> dict[str, Any] | None:
        """After a crash: probe what the request did. None when it left no trace."""
        undo = intent.undo
        if undo.get("dry_run"):
            return None
        if undo.get("irreversible"):
            return {"effect": "unknown", "why": "irreversible call interrupted"}
        headers = self._headers_for(intent)
        forward = Forward.from_intent(self, intent, headers)
        post = forward.probe(undo, None)
        if post.get("effect") is False:
            return None
        return post


def _unmet(expect: Any, actual: Any, where: str = "") -> list[str]:
    """The paths of ``expect``'s fields that ``actual`` does not show (names, not values)."""
    if isinstance(expect, dict):
        if not isinstance(actual, dict):
            return [where or "*"]
        out: list[str] = []
        for key, value in expect.items():
            path = f"{where}.{key}" if where else str(key)
            out.extend(_unmet(value, actual[key], path) if key in actual else [path])
        return out
    return [] if expect == actual else [where or "*"]


def classify(method: str, op: Operation | None) -> str:
    if method in SAFE_METHODS:
        return "read"
    if op is not None:
        return "irreversible" if op.irreversible else "compensable"
    if method in ("POST", "PUT", "PATCH", "DELETE"):
        return "reversible"
    return "irreversible"


def options(mode: str | None = None, cassette: str | Path | None = None,
            timeout: float | None = None, retries: int | None = None,
            compensations: str | Path | None = None, credentials: str | Path | None = None,
            id_field: str | None = None) -> dict[str, Any]:
    """The JSON-safe ``http`` episode config from episode options (paths, never values)."""
    given = {"mode": mode, "cassette": str(cassette) if cassette else None, "timeout": timeout,
             "retries": retries, "id_field": id_field,
             "compensations": str(compensations) if compensations else None,
             "credentials": str(credentials) if credentials else None}
    return {k: v for k, v in given.items() if v is not None}
