"""The audit console in a real headless browser (Debian's chromium driven by Playwright): load
the episode list, filter it, click through to an episode, read its timeline and diff, log in,
see the drift preview, trigger an undo. Screenshots go to tests/output/console/."""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from revex import Runtime
from revex.service import ServiceConfig, create_app
from revex.testing.rest_app import create_app as rest_app
from revex.testing.rest_app import serve
from tests.service.test_console_report import TOKEN, make_episode

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = Path(__file__).resolve().parents[1] / "output" / "console"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser() -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        if os.environ.get("REVEX_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is missing (apt-get install chromium); "
                        "REVEX_REQUIRE_BROWSER=1 makes that a failure")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def test_click_through_an_episode_and_undo_it(browser: object, tmp_path: Path) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with serve(rest_app()) as rest, Runtime(state_dir=tmp_path / "state", policy="permissive",
                                            audit=None) as rt:
        ep_id = make_episode(rt, tmp_path, rest)
        app = create_app(rt, ServiceConfig(token=TOKEN), log_stream=io.StringIO())
        with serve(app) as base:
            page = browser.new_page()  # type: ignore[attr-defined]
            page.goto(f"{base}/ui")
            assert page.url.endswith("/ui/login")
            page.fill("#token", TOKEN)
            page.click("#login")
            page.wait_for_selector("#episodes")
            assert page.inner_text("#verify").startswith("intact")
            page.screenshot(path=str(SHOTS / "01-episodes.png"), full_page=True)
            page.select_option("#status-filter", "active")
            page.wait_for_url("**status=active")
            assert ep_id not in page.inner_text("#episodes")
            page.select_option("#status-filter", "committed")
            page.wait_for_url("**status=committed")
            page.click(f"text={ep_id}")
            page.wait_for_selector("#timeline")
            timeline = page.inner_text("#timeline")
            assert "fs.write" in timeline and "DENIED" in timeline and "path-safety" in timeline
            assert "sql.execute" in timeline and "http.request" in timeline
            assert "+line 2" in page.inner_text("details.file-diff >> nth=1")
            assert "nothing changed since" in page.inner_text("#drift-preview")
            page.screenshot(path=str(SHOTS / "02-episode.png"), full_page=True)
            page.click("#undo-button")
            page.wait_for_selector("#undo-message")
            assert page.inner_text("#undo-message").startswith("undone:")
            assert page.inner_text("#status") == "undone"
            page.screenshot(path=str(SHOTS / "03-undone.png"), full_page=True)
    assert not (tmp_path / "ws" / "notes.txt").exists()
    assert all((SHOTS / f).stat().st_size > 1000 for f in
               ("01-episodes.png", "02-episode.png", "03-undone.png"))
