"""``revex serve``: one FastAPI app over the Python API.

Routes (each a thin translation; no second pipeline, no second judge):

- ``POST /run_code``: SandboxFusion's contract (verl's sandbox reward), see
  :mod:`revex.service.sandboxfusion`.
- ``POST /get_reward``: OpenRLHF's remote reward contract, see :mod:`revex.service.openrlhf`.
- ``POST /v1/run_tests``: function-style tests (``check(candidate)`` or ``assert`` lines) with
  revex's unforgeable verdicts.
- ``POST /v1/judge``: N solutions x test cases in any supported format and language
  (:meth:`revex.Runtime.judge_many`).
- ``GET /v1/ping`` (``"pong"``, as SandboxFusion), ``GET /healthz``, ``GET /readyz``,
  ``GET /metrics`` (Prometheus text).

The service's own safety (see SECURITY.md, "The service"): a bearer token is required on every
route but the health probes when one is configured, and :func:`check_bind` refuses to bind to a
non-loopback address without one; request bodies are capped before they are parsed; runs go
through a bounded pool (``max_concurrency``) and each run is bounded by its wall limit, so a
client that disconnects or times out never holds a sandbox for longer than that; an optional
per-token rate limit answers 429. Every request gets one structlog JSON access-log line.
"""

from __future__ import annotations

import hmac
import ipaddress
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import anyio
import structlog
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from revex.errors import ConfigError, RevexError
from revex.service import console, openrlhf, sandboxfusion
from revex.service.episodes import EpisodeRegistry
from revex.service.episodes import add_routes as add_episode_routes
from revex.service.metrics import Metrics

#: Routes anyone may call, also when a token is configured (load balancers probe them).
OPEN_ROUTES = frozenset({"/v1/ping", "/healthz", "/readyz"})


@dataclass(frozen=True)
class ServiceConfig:
    """How ``revex serve`` runs.

    token: bearer token every request (but the health probes) must carry; required to bind to
        anything but loopback.
    max_body_bytes: largest request body accepted (413 beyond it).
    max_concurrency: sandbox runs in flight at once; more requests wait for a slot.
    rate_per_minute: requests per minute per token (per client address without a token);
        0 means unlimited. Beyond it: 429.
    workspace_root: where the episode API makes each episode's fresh workspace (default: a
        new folder under the system temp dir).
    databases: the database names episodes may use, with their URLs (clients name, never
        give, URLs).
    idle_timeout_s: an episode unused for this long is closed (rolled back by default).
    max_episodes: open episodes at once.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    max_body_bytes: int = 16 * 1024 * 1024
    max_concurrency: int = 16
    rate_per_minute: int = 0
    workspace_root: str | None = None
    databases: Mapping[str, str] = field(default_factory=dict)
    idle_timeout_s: float = 900.0
    max_episodes: int = 64

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_concurrency", "max_episodes"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"ServiceConfig.{name} must be a positive integer, "
                                  f"got {value!r}")
        if not isinstance(self.rate_per_minute, int) or self.rate_per_minute < 0:
            raise ConfigError(f"ServiceConfig.rate_per_minute must be >= 0, "
                              f"got {self.rate_per_minute!r}")
        if self.token is not None and len(self.token) < 16:
            raise ConfigError("the service token must be at least 16 characters; "
                              "generate one with: python -c 'import secrets; "
                              "print(secrets.token_urlsafe(32))'")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(config: ServiceConfig) -> None:
    """Refuse to serve on a non-loopback address without a token. Raises ConfigError."""
    if not is_loopback(config.host) and not config.token:
        raise ConfigError(
            f"refusing to listen on {config.host!r} without a token: anyone who can reach it "
            "could run code. Set --token (or REVEX_SERVICE_TOKEN), or bind to 127.0.0.1")


class _BodyLimit:
    """Pure ASGI middleware: 413 for a body over ``limit`` bytes, checked on Content-Length and
    again while the body streams (a chunked body has no Content-Length); never reads more than
    ``limit`` bytes of it."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = True
                if too_big:
                    await self._reject(send)
                    return
        # read the whole body first (FastAPI buffers it anyway), so an oversized one is refused
        # before any route sees it, whatever the route does with errors while reading
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.limit:
                await self._reject(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send: Send) -> None:
        body = (b'{"detail":"request body too large: at most %d bytes"}' % self.limit)
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _RateLimiter:
    """A token bucket per caller: ``per_minute`` requests, refilled continuously."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, who: str) -> bool:
        if not self.per_minute:
            return True
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(who, (float(self.per_minute), now))
            tokens = min(float(self.per_minute), tokens + (now - last) * self.per_minute / 60)
            if tokens < 1:
                self._buckets[who] = (tokens, now)
                return False
            self._buckets[who] = (tokens - 1, now)
            return True


class JudgeRequest(BaseModel):
    """N solutions x the same test cases (any shape ``revex.judge.load_cases`` accepts)."""

    solutions: list[str] = Field(min_length=1, max_length=256)
    cases: Any
    language: str = "python"
    stop_on_first_failure: bool = False


class RunTestsRequest(BaseModel):
    solution: str = Field(max_length=4 * 1024 * 1024)
    tests: str = Field(max_length=4 * 1024 * 1024)
    entry_point: str = Field(min_length=1, max_length=200)
    timeout: float = Field(default=10, gt=0, le=sandboxfusion.MAX_TIMEOUT_S)


def create_app(runtime: Any, config: ServiceConfig | None = None, *,
               log_stream: TextIO | None = None) -> FastAPI:
    """The service app over ``runtime`` (a :class:`revex.Runtime`, owned by the caller)."""
    from revex import __version__

    config = config or ServiceConfig()
    metrics = Metrics()
    limiter = anyio.CapacityLimiter(config.max_concurrency)
    rates = _RateLimiter(config.rate_per_minute)
    log = structlog.wrap_logger(
        structlog.PrintLogger(log_stream or sys.stderr),
        processors=[structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.JSONRenderer(sort_keys=True)])
    in_flight = [0]
    metrics.gauge("revex_runs_in_flight", lambda: float(in_flight[0]),
                  "Sandbox runs executing now.")
    metrics.gauge("revex_pool_slots", lambda: float(config.max_concurrency),
                  "Sandbox runs the service executes at once.")

    root = Path(config.workspace_root or tempfile.mkdtemp(prefix="revex-serve-episodes-"))
    registry = EpisodeRegistry(runtime, root, dict(config.databases), config.idle_timeout_s,
                               config.max_episodes)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        for failure in await anyio.to_thread.run_sync(registry.close_all):
            log.warning("episode.close_failed", detail=failure)

    app = FastAPI(title="revex", version=__version__, lifespan=lifespan,
                  description="revex: sandboxed execution with SandboxFusion- and "
                              "OpenRLHF-compatible routes, and a native episode API.")
    app.state.episodes = registry

    async def in_pool(fn: Callable[[], Any]) -> Any:
        def counted() -> Any:
            in_flight[0] += 1
            try:
                return fn()
            finally:
                in_flight[0] -= 1
        return await anyio.to_thread.run_sync(counted, limiter=limiter)

    # added before the guard, so the guard (outermost) checks the token before a body is read
    # and logs the 413s this answers
    app.add_middleware(_BodyLimit, limit=config.max_body_bytes)

    @app.middleware("http")
    async def guard(request: Request,
                    call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        path = request.url.path
        who = request.client.host if request.client else "-"
        response: Response
        if config.token and path.startswith("/ui"):
            # the console: a browser carries the token in a cookie (console.py); the login
            # form is open, and undo checks the token itself
            if path != "/ui/login" and not path.endswith("/undo") and not \
                    console.authenticated(request, config.token):
                return _logged(RedirectResponse("/ui/login", status_code=303), request, start,
                               who)
        elif config.token and path not in OPEN_ROUTES:
            given = request.headers.get("authorization", "")
            expected = f"Bearer {config.token}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                response = JSONResponse({"detail": "missing or wrong bearer token"},
                                        status_code=401,
                                        headers={"WWW-Authenticate": "Bearer"})
                return _logged(response, request, start, who)
            who = "token"
        if path not in OPEN_ROUTES and not rates.allow(who):
            response = JSONResponse({"detail": f"rate limit of {config.rate_per_minute} "
                                               "requests per minute exceeded"},
                                    status_code=429, headers={"Retry-After": "1"})
            return _logged(response, request, start, who)
        response = await call_next(request)
        return _logged(response, request, start, who)

    def _logged(response: Response, request: Request, start: float, who: str) -> Response:
        elapsed = time.perf_counter() - start
        # the route's template (``/v1/episodes/{episode_id}/fs``), so ids do not become labels
        matched = request.scope.get("route")
        route = getattr(matched, "path", None) or "other"
        metrics.observe(route, elapsed)
        metrics.inc("revex_requests_total", "HTTP requests by route and status code.",
                    route=route, code=str(response.status_code))
        log.info("request", method=request.method, path=request.url.path,
                 status=response.status_code, ms=round(elapsed * 1000, 2), client=who)
        return response

    @app.exception_handler(ConfigError)
    async def config_error(_: Request, exc: ConfigError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.get("/v1/ping")
    async def ping() -> str:
        return "pong"

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        try:
            backend = await anyio.to_thread.run_sync(lambda: runtime.backend)
        except RevexError as exc:
            return JSONResponse({"status": "not ready", "reason": str(exc)}, status_code=503)
        return JSONResponse({"status": "ready",
                             "backend": type(backend).__name__,
                             "slots": config.max_concurrency})

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics_route() -> str:
        return metrics.render()

    @app.post("/run_code", response_model=sandboxfusion.RunCodeResponse)
    async def run_code(req: sandboxfusion.RunCodeRequest) -> sandboxfusion.RunCodeResponse:
        sandboxfusion.check_language(req.language)  # 422 before waiting for a slot
        resp: sandboxfusion.RunCodeResponse = await in_pool(
            lambda: sandboxfusion.run_code(runtime, req))
        metrics.inc("revex_runs_total", "Sandbox runs by route and outcome.",
                    route="/run_code", status=resp.status)
        return resp

    @app.post("/v1/run_tests")
    async def run_tests(req: RunTestsRequest) -> dict[str, Any]:
        from revex.runtime.sandbox.base import Limits
        from revex.runtime.sandbox.harness import DEFAULT_LIMITS

        limits = Limits(**{**asdict(DEFAULT_LIMITS), "wall_s": req.timeout, "cpu_s": req.timeout})
        report = await in_pool(lambda: runtime.run_tests(req.solution, req.tests,
                                                         req.entry_point, limits=limits))
        metrics.inc("revex_runs_total", "Sandbox runs by route and outcome.",
                    route="/v1/run_tests", status="passed" if report.all_passed else "failed")
        return {"passed": report.passed, "total": report.total, "pass_rate": report.pass_rate,
                "message": report.message, "results": [asdict(r) for r in report.results]}

    @app.post("/v1/judge")
    async def judge(req: JudgeRequest) -> dict[str, Any]:
        results = await in_pool(lambda: runtime.judge_many(
            req.solutions, req.cases, language=req.language,
            stop_on_first_failure=req.stop_on_first_failure))
        for r in results:
            metrics.inc("revex_runs_total", "Sandbox runs by route and outcome.",
                        route="/v1/judge", status=str(r.status))
        return {"results": [asdict(r) for r in results]}

    @app.post("/get_reward", response_model=openrlhf.RewardResponse)
    async def get_reward(req: openrlhf.RewardRequest) -> openrlhf.RewardResponse:
        resp: openrlhf.RewardResponse = await in_pool(lambda: openrlhf.score(runtime, req))
        metrics.inc("revex_runs_total", "Sandbox runs by route and outcome.",
                    route="/get_reward", status="scored", value=float(len(req.query)))
        return resp

    add_episode_routes(app, registry, in_pool)
    console.add_routes(app, runtime, config.token)
    return app


def serve(runtime: Any, config: ServiceConfig) -> None:
    """Run the app with uvicorn until interrupted. Raises ConfigError (see check_bind).

    One process: sandbox runs are child processes already, so the service process only
    supervises them; ``config.max_concurrency`` sets how many run at once."""
    import uvicorn

    check_bind(config)
    app = create_app(runtime, config)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", access_log=False)
