"""The native episode API of ``revex serve``: agents in any language act through HTTP on the
same :class:`~revex.runtime.episode.Episode` pipeline as the Python API.

::

    POST   /v1/episodes                      {policy?, databases?, on_exit?} -> {id, workspace}
    GET    /v1/episodes                      the service's open episodes
    POST   /v1/episodes/{id}/fs              {op, path, ...}      file actions (journaled)
    POST   /v1/episodes/{id}/sql             {database, statement, params?}
    POST   /v1/episodes/{id}/http            {method, url, headers?, json?, body?}
    POST   /v1/episodes/{id}/run             {code, language?, stdin?, timeout?, memory_mb?}
    POST   /v1/episodes/{id}/checkpoints     {name?}              -> {checkpoint}
    POST   /v1/episodes/{id}/rollback        {to?, force?}        -> {undone}
    POST   /v1/episodes/{id}/commit
    DELETE /v1/episodes/{id}                 close as on_exit says (rollback by default)
    POST   /v1/episodes/{id}/undo            undo a committed episode
    GET    /v1/episodes/{id}/journal         its journal records

Each episode gets a fresh workspace of its own under the service's workspace root (clients
never name host paths), databases only by the names the operator configured, and policies only
by preset name. A refused action is HTTP 403 naming the rule; drift is 409; a malformed request
422. Episodes idle for longer than ``idle_timeout_s`` are closed (rolled back unless
``on_exit="commit"``), so a client that vanishes leaks nothing; so are all open episodes when the
service stops.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from revex.errors import (
    ConfigError,
    ConflictError,
    EpisodeClosed,
    PolicyViolation,
    RevexError,
)
from revex.runtime.episode import Checkpoint, Episode

PRESETS = ("default", "strict", "training", "permissive")


class NotFound(RevexError):
    """No open episode (or checkpoint) of that id on this service."""


@dataclass
class _Open:
    episode: Episode
    workspace: Path
    last_used: float = field(default_factory=time.monotonic)
    checkpoints: dict[int, Checkpoint] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class EpisodeRegistry:
    """Open episodes of one service, each with its own workspace; reaps idle ones."""

    def __init__(self, runtime: Any, root: Path, databases: dict[str, str],
                 idle_timeout_s: float, max_episodes: int) -> None:
        self.runtime, self.root = runtime, root
        self.databases = databases
        self.idle_timeout_s, self.max_episodes = idle_timeout_s, max_episodes
        self._open: dict[str, _Open] = {}
        self._lock = threading.Lock()
        self._runtimes: dict[str, Any] = {runtime.policy.name: runtime}
        #: episodes that could not be closed when reaped or at shutdown, with the reason
        self.failures: list[str] = []

    def runtime_for(self, policy: str) -> Any:
        """The runtime whose policy is the preset ``policy``: the service's own, or one more on
        the same state dir (same journal, same sandbox backend) opened on first use."""
        from revex.runtime.runtime import Runtime

        with self._lock:
            rt = self._runtimes.get(policy)
            if rt is None:
                rt = Runtime(state_dir=self.runtime.state_dir, policy=policy, audit="file",
                             recover=False, sandbox=self.runtime.backend)
                self._runtimes[policy] = rt
            return rt

    def create(self, policy: str, databases: list[str], on_exit: str) -> _Open:
        if policy not in PRESETS:
            raise ConfigError(f"policy must be one of {', '.join(PRESETS)}, not {policy!r}")
        unknown = [d for d in databases if d not in self.databases]
        if unknown:
            raise ConfigError(f"unknown database name(s) {', '.join(unknown)}; this service "
                              f"has: {', '.join(sorted(self.databases)) or 'none'}")
        self.reap()
        with self._lock:
            if len(self._open) >= self.max_episodes:
                raise ConfigError(f"this service holds {self.max_episodes} open episodes "
                                  "already; close one (DELETE /v1/episodes/{id}) first")
        self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        workspace = Path(_fresh_dir(self.root))
        episode = self.runtime_for(policy).episode(
            workspace, on_exit=on_exit,
            databases={d: self.databases[d] for d in databases} or None)
        entry = _Open(episode, workspace)
        with self._lock:
            self._open[episode.id] = entry
        return entry

    def get(self, episode_id: str) -> _Open:
        with self._lock:
            entry = self._open.get(episode_id)
        if entry is None:
            raise NotFound(f"no open episode {episode_id!r} on this service")
        entry.last_used = time.monotonic()
        return entry

    def close(self, episode_id: str) -> str:
        with self._lock:
            entry = self._open.pop(episode_id, None)
        if entry is None:
            raise NotFound(f"no open episode {episode_id!r} on this service")
        with entry.lock:
            entry.episode.close()
            return str(entry.episode.status)

    def forget(self, episode_id: str) -> None:
        with self._lock:
            self._open.pop(episode_id, None)

    def summary(self) -> list[dict[str, Any]]:
        with self._lock:
            items = list(self._open.values())
        return [{"id": e.episode.id, "status": e.episode.status,
                 "idle_s": round(time.monotonic() - e.last_used, 3)} for e in items]

    def reap(self) -> list[str]:
        """Close the episodes idle for longer than ``idle_timeout_s``; their ids."""
        now = time.monotonic()
        with self._lock:
            idle = [i for i, e in self._open.items()
                    if now - e.last_used > self.idle_timeout_s and not e.lock.locked()]
        failed = []
        for episode_id in idle:
            try:
                self.close(episode_id)
            except NotFound:
                continue
            except RevexError as exc:  # e.g. drift: the episode stays in the journal as is
                failed.append(f"{episode_id}: {exc}")
        self.failures.extend(failed)
        return idle

    def close_all(self) -> list[str]:
        """Close every open episode (at shutdown); the ones that could not be, with why
        (also kept in :attr:`failures`)."""
        with self._lock:
            ids = list(self._open)
        failed = []
        for episode_id in ids:
            try:
                self.close(episode_id)
            except NotFound:
                continue
            except RevexError as exc:
                failed.append(f"{episode_id}: {exc}")
        self.failures.extend(failed)
        with self._lock:
            extra = [rt for rt in self._runtimes.values() if rt is not self.runtime]
            self._runtimes = {self.runtime.policy.name: self.runtime}
        for rt in extra:
            rt.close()
        return failed


def _fresh_dir(root: Path) -> str:
    import tempfile

    path = tempfile.mkdtemp(prefix="ws-", dir=root)
    Path(path).chmod(0o755)
    return path


class CreateEpisode(BaseModel):
    policy: str = "training"
    databases: list[str] = Field(default_factory=list, max_length=16)
    on_exit: Literal["rollback", "commit"] = "rollback"


class FsRequest(BaseModel):
    op: Literal["write", "append", "read", "delete", "mkdir", "rmdir", "rename", "chmod",
                "symlink", "copy", "exists", "listdir", "stat"]
    path: str = Field(max_length=4096)
    text: str | None = None
    data_b64: str | None = None
    to: str | None = Field(default=None, max_length=4096)
    mode: int | None = Field(default=None, ge=0, le=0o7777)
    parents: bool = False
    recursive: bool = False


class SqlRequest(BaseModel):
    database: str
    statement: str = Field(max_length=1_000_000)
    params: dict[str, Any] = Field(default_factory=dict)


class HttpRequest(BaseModel):
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
    url: str = Field(max_length=8192)
    headers: dict[str, str] = Field(default_factory=dict)
    json_body: Any = Field(default=None, alias="json")
    body: str | None = None


class RunRequest(BaseModel):
    code: str = Field(max_length=4 * 1024 * 1024)
    language: str = "python"
    stdin: str = ""
    timeout: float = Field(default=10, gt=0, le=60)
    memory_mb: int = Field(default=512, gt=0, le=4096)


class CheckpointRequest(BaseModel):
    name: str = Field(default="", max_length=200)


class RollbackRequest(BaseModel):
    to: int | None = None
    force: bool = False


def _fs(ep: Episode, req: FsRequest) -> dict[str, Any]:
    fs = ep.fs
    if req.op in ("write", "append"):
        if (req.text is None) == (req.data_b64 is None):
            raise ConfigError(f"fs {req.op} needs exactly one of 'text' and 'data_b64'")
        data = req.text.encode() if req.text is not None else _b64(req.data_b64 or "")
        size = (fs.write_bytes(req.path, data, mode=req.mode) if req.op == "write"
                else fs.append(req.path, data))
        return {"bytes": size}
    if req.op == "read":
        data = fs.read_bytes(req.path)
        try:
            return {"text": data.decode()}
        except UnicodeDecodeError:
            return {"data_b64": base64.b64encode(data).decode()}
    if req.op in ("rename", "copy", "symlink") and not req.to:
        raise ConfigError(f"fs {req.op} needs 'to'")
    simple: dict[str, Callable[[], Any]] = {
        "delete": lambda: fs.delete(req.path),
        "mkdir": lambda: fs.mkdir(req.path, req.mode if req.mode is not None else 0o777,
                                  parents=req.parents),
        "rmdir": lambda: fs.rmdir(req.path, recursive=req.recursive),
        "rename": lambda: fs.rename(req.path, req.to or ""),
        "copy": lambda: fs.copy(req.path, req.to or ""),
        "symlink": lambda: fs.symlink(req.path, req.to or ""),
        "exists": lambda: {"exists": fs.exists(req.path)},
        "listdir": lambda: {"entries": fs.listdir(req.path)},
        "stat": lambda: _stat(fs.stat(req.path)),
    }
    if req.op == "chmod":
        if req.mode is None:
            raise ConfigError("fs chmod needs 'mode'")
        fs.chmod(req.path, req.mode)
        return {}
    return simple[req.op]() or {}


def _stat(st: Any) -> dict[str, Any]:
    if st is None:
        return {"exists": False}
    import stat as stat_mod

    kind = ("dir" if stat_mod.S_ISDIR(st.st_mode) else "symlink"
            if stat_mod.S_ISLNK(st.st_mode) else "file")
    return {"exists": True, "type": kind, "size": st.st_size,
            "mode": stat_mod.S_IMODE(st.st_mode), "mtime_ns": st.st_mtime_ns}


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise ConfigError(f"data_b64 is not valid base64: {exc}") from None


def _sql(ep: Episode, req: SqlRequest) -> dict[str, Any]:
    from sqlalchemy import text

    db = ep.sql(req.database)
    # through the episode's connection, so the statement is classified, checked and journaled
    # like any ep.sql(...).execute; reads come back as rows
    result = db.connection.execute(text(req.statement), req.params or {})
    if result.returns_rows:
        rows = [list(r) for r in result.fetchall()]
        return {"columns": list(result.keys()), "rows": _jsonable(rows)}
    return {"rowcount": int(result.rowcount)}


def _jsonable(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _http(ep: Episode, req: HttpRequest) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"headers": req.headers}
    if req.json_body is not None:
        kwargs["json"] = req.json_body
    elif req.body is not None:
        kwargs["content"] = req.body.encode()
    resp = ep.http.request(req.method, req.url, **kwargs)
    return {"status_code": resp.status_code, "headers": dict(resp.headers),
            "body": resp.text}


def _run(ep: Episode, req: RunRequest) -> dict[str, Any]:
    from revex.runtime.sandbox.base import Limits

    result = ep.run(req.code, language=req.language, stdin=req.stdin,
                    limits=Limits(wall_s=req.timeout, cpu_s=req.timeout,
                                  memory_mb=req.memory_mb))
    return {"status": str(result.status), "exit_code": result.exit_code,
            "stdout": result.stdout, "stderr": result.stderr, "wall_s": result.wall_s,
            "changes": [{"path": c.path, "kind": c.kind} for c in result.changes],
            "changes_applied": result.changes_applied,
            "changes_refused": list(result.changes_refused or [])}


def error_response(exc: RevexError) -> JSONResponse:
    """The HTTP answer for a RevexError from an episode route."""
    if isinstance(exc, PolicyViolation):
        return JSONResponse({"detail": str(exc), "rule": exc.rule, "kind": exc.action_kind,
                             "target": exc.target}, status_code=403)
    if isinstance(exc, ConflictError):
        return JSONResponse({"detail": str(exc)}, status_code=409)
    if isinstance(exc, NotFound):
        return JSONResponse({"detail": str(exc)}, status_code=404)
    if isinstance(exc, EpisodeClosed):
        return JSONResponse({"detail": str(exc)}, status_code=409)
    if isinstance(exc, ConfigError):
        return JSONResponse({"detail": str(exc)}, status_code=422)
    return JSONResponse({"detail": f"{type(exc).__name__}: {exc}"}, status_code=500)


def add_routes(app: FastAPI, registry: EpisodeRegistry,
               in_pool: Callable[[Callable[[], Any]], Awaitable[Any]]) -> None:
    """Register the episode routes on ``app``; blocking work runs in ``in_pool``."""

    async def act(episode_id: str, fn: Callable[[Episode], dict[str, Any]]) -> Any:
        entry = registry.get(episode_id)

        def locked() -> dict[str, Any]:
            with entry.lock:  # one request at a time per episode
                entry.last_used = time.monotonic()
                return fn(entry.episode)

        try:
            return await in_pool(locked)
        except RevexError as exc:
            return error_response(exc)

    @app.exception_handler(NotFound)
    async def not_found(_: Request, exc: NotFound) -> JSONResponse:
        return error_response(exc)

    @app.post("/v1/episodes", status_code=201)
    async def create(req: CreateEpisode) -> Any:
        try:
            entry = await anyio.to_thread.run_sync(
                lambda: registry.create(req.policy, req.databases, req.on_exit))
        except RevexError as exc:
            return error_response(exc)
        return {"id": entry.episode.id, "workspace": entry.workspace.name}

    @app.get("/v1/episodes")
    async def list_episodes() -> Any:
        return {"episodes": registry.summary()}

    @app.post("/v1/episodes/{episode_id}/fs")
    async def fs(episode_id: str, req: FsRequest) -> Any:
        return await act(episode_id, lambda ep: _fs(ep, req))

    @app.post("/v1/episodes/{episode_id}/sql")
    async def sql(episode_id: str, req: SqlRequest) -> Any:
        return await act(episode_id, lambda ep: _sql(ep, req))

    @app.post("/v1/episodes/{episode_id}/http")
    async def http(episode_id: str, req: HttpRequest) -> Any:
        return await act(episode_id, lambda ep: _http(ep, req))

    @app.post("/v1/episodes/{episode_id}/run")
    async def run(episode_id: str, req: RunRequest) -> Any:
        return await act(episode_id, lambda ep: _run(ep, req))

    @app.post("/v1/episodes/{episode_id}/checkpoints")
    async def checkpoint(episode_id: str, req: CheckpointRequest) -> Any:
        entry = registry.get(episode_id)

        def make(ep: Episode) -> dict[str, Any]:
            cp = ep.checkpoint(req.name)
            entry.checkpoints[cp.action_seq] = cp
            return {"checkpoint": cp.action_seq, "name": cp.name}

        return await act(episode_id, make)

    @app.post("/v1/episodes/{episode_id}/rollback")
    async def rollback(episode_id: str, req: RollbackRequest) -> Any:
        entry = registry.get(episode_id)

        def undo(ep: Episode) -> dict[str, Any]:
            to = None
            if req.to is not None:
                to = entry.checkpoints.get(req.to)
                if to is None:
                    raise NotFound(f"episode {episode_id} has no checkpoint {req.to}; known: "
                                   f"{sorted(entry.checkpoints) or 'none'}")
            return {"undone": ep.rollback(to, force=req.force)}

        return await act(episode_id, undo)

    @app.post("/v1/episodes/{episode_id}/commit")
    async def commit(episode_id: str) -> Any:
        def done(ep: Episode) -> dict[str, Any]:
            ep.commit()
            registry.forget(episode_id)
            return {"status": ep.status}

        return await act(episode_id, done)

    @app.delete("/v1/episodes/{episode_id}")
    async def close(episode_id: str) -> Any:
        try:
            status = await in_pool(lambda: registry.close(episode_id))
        except RevexError as exc:
            return error_response(exc)
        return {"status": status}

    @app.post("/v1/episodes/{episode_id}/undo")
    async def undo_committed(episode_id: str, force: bool = False) -> Any:
        try:
            await in_pool(lambda: registry.runtime.undo(episode_id, force=force))
        except RevexError as exc:
            return error_response(exc)
        return {"status": "undone"}

    @app.get("/v1/episodes/{episode_id}/journal")
    async def journal(episode_id: str) -> Any:
        try:
            records = await anyio.to_thread.run_sync(
                lambda: registry.runtime.journal.records(episode_id))
        except RevexError as exc:
            return error_response(exc)
        if not records:
            return error_response(NotFound(f"no episode {episode_id!r} in the journal"))
        return {"records": [_record(r) for r in records]}


def _record(rec: Any) -> dict[str, Any]:
    return {"seq": rec.seq, "action_seq": rec.action_seq, "kind": rec.kind,
            "target": rec.target, "status": str(rec.status), "rule": rec.rule,
            "params": rec.params, "result": rec.result, "error": rec.error,
            "refers_to": rec.refers_to}
