"""``revex mcp``: an MCP server whose tools are revex actions in one episode per client session.

Agents (Claude Code, Cursor, Codex CLI, most agent frameworks) launch it over stdio::

    {"mcpServers": {"revex": {"command": "revex",
                              "args": ["mcp", "--workspace", "/path/to/repo"],
                              "env": {"REVEX_STATE_DIR": "/path/to/.revex-state"}}}}

Every tool goes through the same pipeline as ``ep.*`` in Python: policy check, journal, undo
information. A refused action comes back as a tool error the model can read, naming the rule
(never a crash). ``checkpoint``/``rollback``/``diff``/``commit`` let the agent manage its own
undo; a session that ends without ``commit`` is rolled back (``--on-exit commit`` keeps it).
After a commit the next tool call starts a new episode. ``revex undo EPISODE`` still undoes a
committed session later.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, Field

from revex.errors import PolicyViolation, RevexError

T = TypeVar("T")
# module level: the tools' annotations are strings (PEP 563) that MCP evaluates in these globals
WsPath = Annotated[str, Field(description="Path relative to the workspace.")]


class RunResult(BaseModel):
    status: str
    exit_code: int | None
    stdout: str
    stderr: str
    wall_s: float
    changes: list[str]
    changes_applied: bool | None
    changes_refused: list[str]


class TestsResult(BaseModel):
    passed: int
    total: int
    results: list[dict[str, str]]


class SqlResult(BaseModel):
    columns: list[str] = Field(default_factory=list)
    rows: list[list[Any]] = Field(default_factory=list)
    rowcount: int | None = None


class HttpResult(BaseModel):
    status_code: int
    body: str


class FileChangeOut(BaseModel):
    path: str
    change: str
    diff: str
    binary: bool


class _Session:
    """The episode of one MCP client session (opened on the first tool call)."""

    def __init__(self, runtime: Any, workspace: Path, databases: dict[str, str],
                 on_exit: str) -> None:
        self.runtime, self.workspace = runtime, workspace
        self.databases, self.on_exit = databases, on_exit
        self.episode: Any = None
        self.checkpoints: dict[int, Any] = {}
        self.lock = threading.Lock()

    def act(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(episode)``; revex errors become ToolErrors the model can read."""
        from mcp.server.mcpserver.exceptions import ToolError

        with self.lock:
            try:
                if self.episode is None:
                    self.episode = self.runtime.episode(
                        self.workspace, on_exit=self.on_exit,
                        databases=self.databases or None)
                    self.checkpoints = {}
                return fn(self.episode)
            except PolicyViolation as exc:
                raise ToolError(f"refused by policy (rule {exc.rule or 'policy'}): {exc}"
                                ) from exc
            except RevexError as exc:
                raise ToolError(f"{type(exc).__name__}: {exc}") from exc

    def end(self) -> None:
        with self.lock:
            if self.episode is not None:
                self.episode.close()
                self.episode = None


def build_server(runtime: Any, workspace: str | Path, *, databases: dict[str, str] | None = None,
                 on_exit: Literal["rollback", "commit"] = "rollback") -> Any:
    """The MCP server over ``runtime`` acting in ``workspace``. Raises ConfigError for a bad
    ``on_exit``."""
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    from revex.errors import ConfigError

    if on_exit not in ("rollback", "commit"):
        raise ConfigError(f"--on-exit must be 'rollback' or 'commit', not {on_exit!r}")
    session = _Session(runtime, Path(workspace), dict(databases or {}), on_exit)

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        try:
            yield
        finally:
            session.end()

    server = MCPServer("revex", lifespan=lifespan, instructions=(
        "Every tool acts in one revex episode over the workspace: journaled and undoable. Use "
        "checkpoint before risky steps and rollback(to=...) to undo; commit to keep your work "
        "(otherwise it is rolled back when the session ends)."))
    # tests (whose in-process transport skips the lifespan) close it themselves
    server.session = session  # type: ignore[attr-defined]

    @server.tool()
    def read_file(path: WsPath) -> str:
        """Read a text file of the workspace."""
        return session.act(lambda ep: ep.fs.read_text(path))

    @server.tool()
    def write_file(path: WsPath, content: Annotated[str, Field(description="Full new text.")]
                   ) -> str:
        """Create or overwrite a text file (journaled, undoable)."""
        size = session.act(lambda ep: ep.fs.write_text(path, content))
        return f"wrote {size} bytes to {path}"

    @server.tool()
    def edit_file(path: WsPath,
                  old: Annotated[str, Field(description="Exact text to replace; must occur "
                                                        "exactly once.")],
                  new: Annotated[str, Field(description="Replacement text.")]) -> str:
        """Replace one exact occurrence of ``old`` with ``new`` in a text file."""
        def edit(ep: Any) -> str:
            text = ep.fs.read_text(path)
            count = text.count(old)
            if count != 1:
                raise ToolError(f"'old' occurs {count} times in {path}; it must occur exactly "
                                "once (add surrounding lines to make it unique)")
            ep.fs.write_text(path, text.replace(old, new, 1))
            return f"edited {path}"
        return session.act(edit)

    @server.tool()
    def list_files(path: Annotated[str, Field(description="Directory relative to the "
                                                          "workspace.")] = ".") -> list[str]:
        """List a directory of the workspace (names; directories end with '/')."""
        def ls(ep: Any) -> list[str]:
            import stat as st

            out = []
            for name in sorted(ep.fs.listdir(path)):
                rel = name if path in (".", "") else f"{path.rstrip('/')}/{name}"
                info = ep.fs.stat(rel)
                out.append(name + "/" if info is not None and st.S_ISDIR(info.st_mode)
                           else name)
            return out
        return session.act(ls)

    @server.tool()
    def delete(path: WsPath,
               recursive: Annotated[bool, Field(description="Remove a directory tree.")] = False
               ) -> str:
        """Delete a file, or a directory (with recursive=true for a non-empty one)."""
        def rm(ep: Any) -> str:
            import stat as st

            info = ep.fs.stat(path)
            if info is not None and st.S_ISDIR(info.st_mode):
                ep.fs.rmdir(path, recursive=recursive)
            else:
                ep.fs.delete(path)
            return f"deleted {path}"
        return session.act(rm)

    @server.tool()
    def move(src: WsPath, dst: WsPath) -> str:
        """Rename or move a file or directory inside the workspace."""
        session.act(lambda ep: ep.fs.rename(src, dst))
        return f"moved {src} to {dst}"

    @server.tool()
    def run_code(code: Annotated[str, Field(description="Source code to run.")],
                 language: Annotated[str, Field(description="python or bash (more where "
                                                            "revex doctor lists them).")
                                     ] = "python",
                 stdin: str = "",
                 timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0) -> RunResult:
        """Run code in the sandbox over the workspace (no network); its file changes are
        checked by the policy and applied as undoable actions."""
        from revex.runtime.sandbox.base import Limits

        def run(ep: Any) -> RunResult:
            r = ep.run(code, language=language, stdin=stdin,
                       limits=Limits(wall_s=timeout_s, cpu_s=timeout_s))
            return RunResult(status=str(r.status), exit_code=r.exit_code, stdout=r.stdout,
                             stderr=r.stderr, wall_s=r.wall_s,
                             changes=[f"{c.kind} {c.path}" for c in r.changes],
                             changes_applied=r.changes_applied,
                             changes_refused=list(r.changes_refused or []))
        return session.act(run)

    @server.tool()
    def run_tests(solution: Annotated[str, Field(description="Python source defining the "
                                                             "function.")],
                  tests: Annotated[str, Field(description="check(candidate) or assert lines.")],
                  entry_point: Annotated[str, Field(description="Function under test.")]
                  ) -> TestsResult:
        """Run tests against a solution with verdicts the solution cannot forge."""
        def run(ep: Any) -> TestsResult:
            rep = ep.run_tests(solution, tests, entry_point)
            return TestsResult(passed=rep.passed, total=rep.total,
                               results=[{"name": t.name, "status": t.status,
                                         "message": t.message} for t in rep.results])
        return session.act(run)

    @server.tool()
    def sql(database: Annotated[str, Field(description="A database name given to revex mcp.")],
            statement: str, params: dict[str, Any] | None = None) -> SqlResult:
        """Run one SQL statement (``:name`` placeholders); writes are journaled and undoable."""
        def run(ep: Any) -> SqlResult:
            from sqlalchemy import text

            result = ep.sql(database).connection.execute(text(statement), params or {})
            if result.returns_rows:
                return SqlResult(columns=list(result.keys()),
                                 rows=[[_plain(v) for v in row] for row in result.fetchall()])
            return SqlResult(rowcount=int(result.rowcount))
        return session.act(run)

    @server.tool()
    def http_request(method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"], url: str,
                     json_body: Any = None) -> HttpResult:
        """An HTTP call to a host the policy allows; mutations are journaled with their
        inverse."""
        def call(ep: Any) -> HttpResult:
            resp = ep.http.request(method, url, json=json_body)
            return HttpResult(status_code=resp.status_code, body=resp.text[:100_000])
        return session.act(call)

    @server.tool()
    def checkpoint(name: str = "") -> int:
        """Mark this point; returns its id for rollback(to=id) and diff(since=id)."""
        def mark(ep: Any) -> int:
            cp = ep.checkpoint(name)
            session.checkpoints[cp.action_seq] = cp
            return int(cp.action_seq)
        return session.act(mark)

    @server.tool()
    def rollback(to: Annotated[int | None, Field(description="A checkpoint id; omit to undo "
                                                             "everything.")] = None) -> str:
        """Undo every action after the checkpoint (or all of them)."""
        def undo(ep: Any) -> str:
            cp = None
            if to is not None:
                cp = session.checkpoints.get(to)
                if cp is None:
                    raise ToolError(f"no checkpoint {to}; known: "
                                    f"{sorted(session.checkpoints) or 'none'}")
            return f"undid {ep.rollback(cp)} actions"
        return session.act(undo)

    @server.tool()
    def diff(since: Annotated[int | None, Field(description="A checkpoint id; omit for the "
                                                            "whole session.")] = None
             ) -> list[FileChangeOut]:
        """What changed in the workspace since the checkpoint: per path, a unified diff."""
        from revex.runtime.changes import workspace_changes

        def changes(ep: Any) -> list[FileChangeOut]:
            return [FileChangeOut(path=d.path, change=d.change, diff=d.diff, binary=d.binary)
                    for d in workspace_changes(runtime, ep.id, str(ep.workspace), since or 0)]
        return session.act(changes)

    @server.tool()
    def commit() -> str:
        """Keep everything this session did (``revex undo EPISODE`` can still undo it)."""
        def keep(ep: Any) -> str:
            ep.commit()
            session.episode = None
            return f"committed episode {ep.id}"
        return session.act(keep)

    return server


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes):
        return value.hex()
    return str(value)
