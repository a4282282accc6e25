"""Cassettes: the request/response pairs an episode recorded, for replay without a network.

A cassette is a JSON-lines index under ``<state_dir>/cassettes/<name>.jsonl``; request and
response bodies live in the content store (by sha256). Each line is fsynced as it is written, so
a crash loses at most the exchange in flight. Headers are stored redacted (no secret values).

Replay matches on method, URL (with secret placeholders, never values) and the request body's
hash. Identical requests are served in recorded order, so a replayed episode sees the same
sequence of states as the recorded one; a safe request (GET/HEAD) asked for more often than it
was recorded gets its last recording again. Anything else raises :class:`ReplayMissing`.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from revex.errors import ActionFailed, ConfigError
from revex.runtime.store import ContentStore

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class ReplayMissing(ActionFailed):
    """Replay mode met a request the cassette does not hold; nothing was sent anywhere."""


@dataclass(frozen=True)
class WireRequest:
    """A request as revex sends it: URL and headers may hold ``{secret:name}`` placeholders."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes = b""

    def key(self) -> str:
        body = hashlib.sha256(self.content).hexdigest()
        return f"{self.method.upper()} {self.url} {body}"


@dataclass(frozen=True)
class WireResponse:
    status: int
    headers: dict[str, str]
    content: bytes
    recorded: bool = False

    def json(self) -> Any:
        """The body as JSON, or None when it is empty or not JSON."""
        if not self.content:
            return None
        try:
            return json.loads(self.content)
        except (ValueError, UnicodeDecodeError):
            return None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class Cassette:
    """One recording: an append-only index plus bodies in the content store."""

    def __init__(self, path: Path, store: ContentStore) -> None:
        self.path = path
        self.store = store
        self._lock = threading.Lock()
        self._entries: dict[str, list[dict[str, Any]]] = {}
        self._cursor: dict[str, int] = {}

    @classmethod
    def named(cls, state_dir: Path, name: str, store: ContentStore) -> Cassette:
        """The cassette ``name`` (a bare name, kept under the state dir) or a path."""
        if "/" in name or name.endswith(".jsonl"):
            return cls(Path(name), store)
        if not name or name.startswith("."):
            raise ConfigError(f"bad cassette name {name!r}")
        return cls(state_dir / "cassettes" / f"{name}.jsonl", store)

    def load(self) -> Cassette:
        """Read the index for replay. Raises ConfigError when the cassette does not exist."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise ConfigError(f"no cassette at {self.path}; record one first with "
                              "http_mode='record'") from None
        for line in lines:
            if line.strip():
                entry = json.loads(line)
                self._entries.setdefault(entry["key"], []).append(entry)
        return self

    def record(self, request: WireRequest, response: WireResponse,
               headers: dict[str, str]) -> None:
        """Append one exchange; ``headers`` are the response headers already redacted."""
        entry = {
            "key": request.key(), "method": request.method, "url": request.url,
            "request_sha": self.store.put_bytes(request.content),
            "status": response.status, "headers": headers,
            "body_sha": self.store.put_bytes(response.content),
        }
        line = json.dumps(entry, sort_keys=True) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode())
                os.fsync(fd)
            finally:
                os.close(fd)

    def play(self, request: WireRequest) -> WireResponse:
        """The recorded response to ``request``. Raises ReplayMissing."""
        key = request.key()
        with self._lock:
            entries = self._entries.get(key)
            if not entries:
                raise ReplayMissing(
                    f"replay: {request.method} {request.url} was not recorded in cassette "
                    f"{self.path} (with this body); nothing was sent. Record it with "
                    "http_mode='record', or use http_mode='live'")
            i = self._cursor.get(key, 0)
            if i >= len(entries):
                if request.method.upper() not in SAFE_METHODS:
                    raise ReplayMissing(
                        f"replay: {request.method} {request.url} was recorded {len(entries)} "
                        f"time(s) and is asked for again; nothing was sent")
                i = len(entries) - 1
            self._cursor[key] = i + 1
            entry = entries[i]
        try:
            with self.store.path_of(entry["body_sha"]).open("rb") as fh:
                content = fh.read()
        except OSError as exc:
            raise ReplayMissing(f"replay: the body of {request.method} {request.url} is "
                                f"missing from the content store: {exc}") from exc
        return WireResponse(entry["status"], dict(entry["headers"]), content, recorded=True)
