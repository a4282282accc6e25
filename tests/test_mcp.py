"""`revex mcp`: an MCP client drives a full session (edit, run tests, refused escape, diff,
rollback, commit) through the official `mcp` SDK, in-process and over stdio."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from revex import Runtime

mcp = pytest.importorskip("mcp")

SOLUTION = "def inc(x):\n    return x + 1\n"
TESTS = "def check(candidate):\n    assert candidate(1) == 2\n"


def _text(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


async def _session(client: Any, ws: Path) -> None:
    tools = {t.name for t in (await client.list_tools()).tools}
    assert {"read_file", "write_file", "edit_file", "list_files", "delete", "move", "run_code",
            "run_tests", "sql", "http_request", "checkpoint", "rollback", "diff",
            "commit"} <= tools
    r = await client.call_tool("write_file", {"path": "inc.py", "content": SOLUTION})
    assert not r.is_error and "wrote" in _text(r)
    cp = (await client.call_tool("checkpoint", {"name": "written"})).structured_content["result"]
    r = await client.call_tool("edit_file", {"path": "inc.py", "old": "x + 1", "new": "x + 2"})
    assert not r.is_error
    changes = (await client.call_tool("diff", {"since": cp})).structured_content["result"]
    assert [(c["path"], c["change"]) for c in changes] == [("inc.py", "modified")]
    assert "-    return x + 1" in changes[0]["diff"] and "+    return x + 2" in changes[0]["diff"]
    r = await client.call_tool("run_tests", {"solution": (ws / "inc.py").read_text(),
                                             "tests": TESTS, "entry_point": "inc"})
    assert r.structured_content["passed"] == 0
    escape = await client.call_tool("write_file", {"path": "../outside.txt", "content": "x"})
    assert escape.is_error and "refused by policy (rule path-safety)" in _text(escape)
    assert not (ws.parent / "outside.txt").exists()
    r = await client.call_tool("run_code", {"code": "open('made.txt', 'w').write('m')"})
    assert r.structured_content["status"] == "ok" and (ws / "made.txt").exists()
    r = await client.call_tool("rollback", {"to": cp})
    assert _text(r) == "undid 2 actions"
    assert (ws / "inc.py").read_text() == SOLUTION and not (ws / "made.txt").exists()
    r = await client.call_tool("run_tests", {"solution": SOLUTION, "tests": TESTS,
                                             "entry_point": "inc"})
    assert (r.structured_content["passed"], r.structured_content["total"]) == (1, 1)
    bad = await client.call_tool("rollback", {"to": 999})
    assert bad.is_error and "no checkpoint 999" in _text(bad)


def test_in_process_client_session_is_rolled_back_at_the_end(tmp_path: Path) -> None:
    from revex.mcp import build_server

    ws = tmp_path / "ws"
    with Runtime(state_dir=tmp_path / "state", audit=None) as rt:
        server = build_server(rt, ws)

        async def main() -> None:
            async with mcp.Client(server) as client:
                await _session(client, ws)
            server.session.end()  # the in-process transport does not run the lifespan

        asyncio.run(main())
        assert not (ws / "inc.py").exists()
        [info] = rt.episodes()
        assert info.status == "rolled_back"
        kinds = {r.kind for r in rt.journal.records(info.id)}
        assert {"fs.write", "fs.read", "exec.tests", "exec.run"} <= kinds


def test_stdio_server_keeps_committed_work_and_undo_reverts_it(tmp_path: Path) -> None:
    ws, state = tmp_path / "ws", tmp_path / "state"
    params = mcp.StdioServerParameters(
        command=sys.executable,
        args=["-m", "revex.cli", "mcp", "--workspace", str(ws), "--state-dir", str(state)],
        env={**os.environ})

    async def main() -> None:
        async with mcp.Client(params) as client:
            await _session(client, ws)
            r = await client.call_tool("commit", {})
            assert "committed episode" in _text(r)

    asyncio.run(main())
    assert (ws / "inc.py").read_text() == SOLUTION
    with Runtime(state_dir=state, audit=None) as rt:
        [info] = rt.episodes()
        assert info.status == "committed"
        rt.undo(info.id)
    assert not (ws / "inc.py").exists()
    records = json.dumps([r.kind for r in Runtime(state_dir=state, audit=None).journal.records(
        info.id)])
    assert "fs.write" in records
