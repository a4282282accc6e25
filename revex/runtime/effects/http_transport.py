"""``ep.http`` and ``ep.ahttp``: httpx clients whose transport is the episode pipeline.

The client keeps what httpx does well (URL building, auth flows, cookies, redirects, hooks,
timeouts); the transport turns each request it is handed into one journaled action. The async
transport is a thin layer: it reads the body, then runs the same synchronous pipeline in a worker
thread (actions of one episode are serialized by the episode's lock either way).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio.to_thread
import httpx

from revex.runtime.effects.http import KIND, HttpEffect
from revex.runtime.effects.http_cassette import WireRequest, WireResponse

if TYPE_CHECKING:
    from revex.runtime.episode import Episode


def _timeout(request: httpx.Request) -> float | None:
    timeouts = request.extensions.get("timeout") or {}
    read = timeouts.get("read")
    return float(read) if read is not None else None


class EpisodeTransport(httpx.BaseTransport):
    """Sends every request through ``episode``'s pipeline (policy, journal, undo)."""

    def __init__(self, episode: Episode) -> None:
        self._ep = episode

    def send(self, request: httpx.Request, content: bytes) -> httpx.Response:
        """One action. Raises PolicyViolation (refused), ActionFailed (the request failed;
        the cause is chained), ReplayMissing, ConfigError (unknown secret)."""
        # items(), not dict(headers): that looks each name up again, scanning them all
        wire = WireRequest(request.method, str(request.url), dict(request.headers.items()),
                           content)
        ep = self._ep

        def build() -> Any:
            effect = ep._effect("http")
            assert isinstance(effect, HttpEffect)
            return effect.plan(wire, ep._action_seq, _timeout(request))

        got: WireResponse = ep._act(build, KIND, wire.url)
        return httpx.Response(got.status, headers=list(got.headers.items()),
                              content=got.content, request=request)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.send(request, request.read())


class AsyncEpisodeTransport(httpx.AsyncBaseTransport):
    """The async flavour of :class:`EpisodeTransport`."""

    def __init__(self, episode: Episode) -> None:
        self._sync = EpisodeTransport(episode)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        content = await request.aread()
        return await anyio.to_thread.run_sync(self._sync.send, request, content)


def client(episode: Episode, **kwargs: Any) -> httpx.Client:
    """An httpx.Client bound to ``episode``; ``kwargs`` go to httpx.Client (headers, auth…)."""
    return httpx.Client(transport=EpisodeTransport(episode), trust_env=False, **kwargs)


def async_client(episode: Episode, **kwargs: Any) -> httpx.AsyncClient:
    """An httpx.AsyncClient bound to ``episode``."""
    return httpx.AsyncClient(transport=AsyncEpisodeTransport(episode), trust_env=False,
                             **kwargs)
