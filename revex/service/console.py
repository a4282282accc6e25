"""The web audit console of ``revex serve`` (``/ui``) and the HTML of ``revex report``.

Server-rendered HTML (Jinja2, autoescaped; everything shown came from the journal, and journal
text can carry whatever an agent or sandboxed code wrote, so nothing is trusted as markup), a
few lines of CSS, no build step and no external fetch.

Access: when the service has a token, every console page needs it (the ``Authorization``
header, or a cookie set by ``/ui/login``: HttpOnly, SameSite=Strict, so another site cannot
make a browser post an undo). Without a token (loopback only) the console is read-only: undo
needs an authenticated user, as the service's other mutating routes do.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from revex.errors import ConflictError, RevexError
from revex.service.audit_view import episode_view, episodes_list

COOKIE = "revex_token"
STATUSES = ("active", "committed", "rolled_back", "undone", "conflict", "rolling_back",
            "recovered")


def templates() -> Environment:
    return Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                       autoescape=select_autoescape(["html"]), trim_blocks=True,
                       lstrip_blocks=True)


def verify_status(runtime: Any) -> dict[str, Any]:
    try:
        report = runtime.verify()
    except RevexError as exc:
        return {"ok": False, "text": f"cannot verify: {exc}"}
    if report.ok:
        return {"ok": True, "text": f"intact: {report.checked} records verified"}
    return {"ok": False, "text": f"DAMAGED at record {report.first_bad_seq}: {report.reason}"}


def render_report(runtime: Any, episode_id: str) -> str:
    """One self-contained HTML page for an episode (``revex report``). Raises ConfigError for
    an unknown episode."""
    from revex import __version__
    from revex.errors import ConfigError

    view = episode_view(runtime, episode_id)
    if view is None:
        raise ConfigError(f"no episode {episode_id!r}; `revex episodes` lists them")
    return templates().get_template("episode.html").render(
        ep=view, standalone=True, undo=None, verify=verify_status(runtime), prefix="",
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"), version=__version__)


def authenticated(request: Request, token: str | None) -> bool:
    if not token:
        return False
    header = request.headers.get("authorization", "")
    cookie = request.cookies.get(COOKIE, "")
    return (hmac.compare_digest(header.encode(), f"Bearer {token}".encode())
            or hmac.compare_digest(cookie.encode(), token.encode()))


def add_routes(app: FastAPI, runtime: Any, token: str | None) -> None:
    env = templates()

    def page(name: str, **values: Any) -> HTMLResponse:
        return HTMLResponse(env.get_template(name).render(prefix="", **values))

    @app.get("/ui", response_class=HTMLResponse)
    async def episodes(status: str = "") -> HTMLResponse:
        rows, verify = await anyio.to_thread.run_sync(
            lambda: (episodes_list(runtime, status or None)[-500:], verify_status(runtime)))
        return page("episodes.html", episodes=list(reversed(rows)), status=status,
                    statuses=STATUSES, verify=verify, state_dir=str(runtime.state_dir))

    def episode_page(request: Request, episode_id: str, message: str = "",
                     ok: bool = True) -> HTMLResponse:
        from revex.runtime.changes import undo_preview

        view = episode_view(runtime, episode_id)
        if view is None:
            return HTMLResponse(f"no episode {episode_id!r}", status_code=404)
        undo: dict[str, Any] = {"message": message, "ok": ok,
                                "writable": authenticated(request, token)}
        if view.status in ("committed", "conflict"):
            undo["possible"] = True
            try:
                undo["preview"] = undo_preview(runtime, episode_id)
            except RevexError as exc:
                undo["preview"] = [f"cannot check: {exc}"]
        else:
            undo["possible"] = False
            undo["why_not"] = {
                "active": "The episode is running in its own process: it rolls back there.",
                "undone": "Already undone.", "rolled_back": "Rolled back: nothing to undo.",
            }.get(view.status, f"Nothing to undo in status {view.status}.")
        return HTMLResponse(env.get_template("episode.html").render(
            prefix="", ep=view, undo=undo, verify=None, standalone=False))

    @app.get("/ui/episodes/{episode_id}", response_class=HTMLResponse)
    async def episode(request: Request, episode_id: str) -> HTMLResponse:
        resp: HTMLResponse = await anyio.to_thread.run_sync(
            lambda: episode_page(request, episode_id))
        return resp

    @app.post("/ui/episodes/{episode_id}/undo", response_class=HTMLResponse)
    async def undo(request: Request, episode_id: str, token_field: str = Form("", alias="token"),
                   force: str = Form("")) -> HTMLResponse:
        if not (authenticated(request, token) or (
                token and hmac.compare_digest(token_field.encode(), token.encode()))):
            return HTMLResponse("undo needs the service token", status_code=403)

        def run() -> HTMLResponse:
            try:
                n = runtime.undo(episode_id, force=bool(force))
            except ConflictError as exc:
                return episode_page(request, episode_id, f"undo refused: {exc}", ok=False)
            except RevexError as exc:
                return episode_page(request, episode_id, f"undo failed: {exc}", ok=False)
            return episode_page(request, episode_id, f"undone: {n} actions", ok=True)

        resp: HTMLResponse = await anyio.to_thread.run_sync(run)
        return resp

    @app.get("/ui/login", response_class=HTMLResponse)
    async def login_form() -> HTMLResponse:
        return HTMLResponse(
            '<!doctype html><title>revex login</title><form method="post" action="/ui/login">'
            '<label>token <input type="password" name="token" id="token"></label>'
            '<button id="login">log in</button></form>')

    @app.post("/ui/login")
    async def login(token_field: str = Form("", alias="token")) -> Response:
        if not token or not hmac.compare_digest(token_field.encode(), token.encode()):
            return HTMLResponse("wrong token", status_code=403)
        resp = RedirectResponse("/ui", status_code=303)
        resp.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return resp
