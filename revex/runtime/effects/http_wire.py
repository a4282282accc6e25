"""The wire: how the HTTP effect sends a request in each mode.

Every request the effect makes (the forward call, the pre-image GET, the probes and the
compensating calls of undo) goes through :meth:`Wire.send`, so a mode holds for all of them:

- ``live``: sent through an httpx transport (a connection pool, no client around it: the
  caller's ``ep.http`` client already did redirects, auth and cookies, and the effect's own
  probes must not pick up cookies a server sets); secret placeholders are resolved here and
  nowhere earlier.
- ``record``: as live, and every exchange is appended to the cassette.
- ``replay``: nothing is sent; the cassette answers or :class:`ReplayMissing` is raised.
- ``dry_run``: as live (the effect decides which calls are not sent at all).

Transport failures leave as ``TimeoutError`` / ``ConnectionError`` (OSError, which the pipeline
journals as FAILED) with secret values redacted from the message and the httpx error not
chained (its message can hold a resolved URL).
"""

from __future__ import annotations

import httpx

from revex.errors import ConfigError
from revex.runtime.effects.http_cassette import Cassette, WireRequest, WireResponse
from revex.runtime.effects.http_inverse import parsed_url
from revex.runtime.effects.http_secrets import Secrets

MODES = ("live", "record", "replay", "dry_run")
# hop-by-hop or describing the encoded body; the content we hand back is already decoded
_DROP = frozenset({"content-encoding", "content-length", "transfer-encoding", "connection",
                   "keep-alive"})


class NotSent(ConnectionError):
    """The connection could not be made: the request never left (safe to retry)."""


class Wire:
    """Sends requests for one episode in one mode."""

    def __init__(self, mode: str, secrets: Secrets, *, timeout: float = 30.0,
                 cassette: Cassette | None = None) -> None:
        if mode not in MODES:
            raise ConfigError(f"http_mode must be one of {', '.join(MODES)}, not {mode!r}")
        if mode in ("record", "replay") and cassette is None:
            raise ConfigError(f"http_mode={mode!r} needs a cassette")
        self.mode = mode
        self.secrets = secrets
        self.timeout = timeout
        self.cassette = cassette
        self._transport: httpx.HTTPTransport | None = None

    @property
    def transport(self) -> httpx.HTTPTransport:
        if self._transport is None:
            # as the client was: no proxy or CA settings from the environment, no redirects
            self._transport = httpx.HTTPTransport(trust_env=False)
        return self._transport

    def send(self, request: WireRequest, *, timeout: float | None = None) -> WireResponse:
        """Send (or replay) one request and read its whole body.

        Raises ReplayMissing (replay), ConfigError (an unknown secret), NotSent (no
        connection), TimeoutError or ConnectionError (the request may or may not have
        arrived).
        """
        if self.mode == "replay":
            assert self.cassette is not None
            return self.cassette.play(request)
        url: str | httpx.URL = self.secrets.resolve(request.url)
        if url == request.url:  # no secret in it: the parse is cached (never a resolved value)
            url = parsed_url(request.url)
        headers = {k: self.secrets.resolve(v) for k, v in request.headers.items()}
        limit = httpx.Timeout(self.timeout if timeout is None else timeout)
        try:
            sent = httpx.Request(request.method, url, headers=headers,
                                 content=request.content or None,
                                 extensions={"timeout": limit.as_dict()})
            raw = self.transport.handle_request(sent)
            try:
                raw.read()
            finally:
                raw.close()
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise NotSent(self._describe(request, exc, "could not connect")) from None
        except httpx.TimeoutException as exc:
            raise TimeoutError(self._describe(request, exc, "timed out")) from None
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            raise ConnectionError(self._describe(request, exc, "failed")) from None
        response = WireResponse(
            raw.status_code,
            {k.lower(): v for k, v in raw.headers.items() if k.lower() not in _DROP},
            raw.content)
        if self.mode == "record":
            assert self.cassette is not None
            self.cassette.record(request, response,
                                 self.secrets.redact_headers(response.headers))
        return response

    def _describe(self, request: WireRequest, exc: Exception, what: str) -> str:
        return self.secrets.redact(
            f"{request.method} {request.url} {what}: {type(exc).__name__}: {exc}")

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
