"""`revex report` and the audit console's pages, over a real episode with file, SQL, HTTP and
denied actions: what they show, that hostile journal text is escaped, that the report fetches
nothing from the network, and who may undo."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from revex import Runtime
from revex.errors import PolicyViolation
from revex.service import ServiceConfig, create_app
from revex.service.console import render_report
from revex.testing.rest_app import create_app as rest_app
from revex.testing.rest_app import serve

TOKEN = "console-token-0123456789abcdef"
HOSTILE = "<script>alert('x')</script>"


def make_episode(rt: Runtime, tmp: Path, base: str) -> str:
    with rt.episode(tmp / "ws", on_exit="commit",
                    databases={"app": f"sqlite:///{tmp}/app.db"}) as ep:
        ep.fs.write_text("notes.txt", "line one\nline two\n")
        ep.fs.write_text("notes.txt", "line one\nline 2\n" + HOSTILE + "\n")
        with pytest.raises(PolicyViolation):
            ep.fs.write_text("../escape.txt", "x")
        db = ep.sql("app")
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        db.execute("INSERT INTO t (v) VALUES ('before')")
        db.execute("UPDATE t SET v = 'after' WHERE id = 1")
        ep.http.post(f"{base}/items", json={"name": "widget"})
        return ep.id


@pytest.fixture
def episode(tmp_path: Path) -> Iterator[tuple[Runtime, str]]:
    with serve(rest_app()) as base, Runtime(state_dir=tmp_path / "state", policy="permissive",
                                            audit=None) as rt:
        yield rt, make_episode(rt, tmp_path, base)  # the REST app lives on for undo


def test_report_is_self_contained_and_shows_everything(episode: tuple[Runtime, str],
                                                       tmp_path: Path) -> None:
    rt, ep_id = episode
    html = render_report(rt, ep_id)
    assert ep_id in html and "committed" in html and "intact" in html
    assert "-line two" in html and "+line 2" in html  # the second write's text diff
    assert "fs.write" in html and "DENIED" in html and "path-safety" in html
    assert "before" in html and "after" in html and "sql.execute" in html
    assert "http.request" in html and "/items" in html
    assert HOSTILE not in html and "&lt;script&gt;" in html
    # nothing to fetch: no external scripts, styles, images or links
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert "<script" not in html.lower()
    out = tmp_path / "report.html"
    proc = subprocess.run([sys.executable, "-m", "revex.cli", "report", ep_id[:12], "--html",
                           str(out), "--state-dir", str(rt.state_dir)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert ep_id in out.read_text()
    missing = subprocess.run([sys.executable, "-m", "revex.cli", "report", "ep-nope", "--html",
                              str(out), "--state-dir", str(rt.state_dir)],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "no episode" in missing.stderr


def test_console_pages_and_who_may_undo(episode: tuple[Runtime, str]) -> None:
    rt, ep_id = episode
    with serve(create_app(rt, ServiceConfig(), log_stream=io.StringIO())) as base:
        listing = httpx.get(f"{base}/ui").text
        assert ep_id in listing and "intact" in listing
        assert ep_id not in httpx.get(f"{base}/ui", params={"status": "active"}).text
        page = httpx.get(f"{base}/ui/episodes/{ep_id}").text
        assert "nothing changed since" in page and "Read-only" in page
        # no token configured: the console cannot undo
        assert httpx.post(f"{base}/ui/episodes/{ep_id}/undo",
                          data={"token": ""}).status_code == 403
    with serve(create_app(rt, ServiceConfig(token=TOKEN), log_stream=io.StringIO())) as base:
        resp = httpx.get(f"{base}/ui", follow_redirects=False)
        assert resp.status_code == 303 and resp.headers["location"] == "/ui/login"
        assert httpx.post(f"{base}/ui/login", data={"token": "wrong"}).status_code == 403
        with httpx.Client(base_url=base) as client:
            assert client.post("/ui/login", data={"token": TOKEN}).status_code == 303
            (Path(rt.episodes()[0].config["workspace"]) / "notes.txt").write_text("drifted\n")
            page = client.get(f"/ui/episodes/{ep_id}").text
            assert "would stop before changing anything" in page and "notes.txt" in page
            refused = client.post(f"/ui/episodes/{ep_id}/undo", data={}).text
            assert "undo refused" in refused
            done = client.post(f"/ui/episodes/{ep_id}/undo", data={"force": "1"}).text
            assert "undone:" in done
    assert rt.journal.episode(ep_id)["status"] == "undone"  # type: ignore[index]
