"""``revex demo``: an end-to-end tour on a temporary workspace that proves its own rollback.

Each section acts through one episode, shows what the policy refused, rolls back, and compares
the state with a snapshot taken before: the demo fails (exit 1) if anything differs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from revex.errors import PolicyViolation
from revex.runtime.journal import Status
from revex.runtime.runtime import Runtime


def tree_digest(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root`` (and root itself) with type, mode, mtime and content hash."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            path = os.path.join(dirpath, name) if name != "." else dirpath
            rel = os.path.relpath(path, root)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                content: str = "->" + os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
            else:
                content = ""
            out[rel] = (stat.S_IFMT(st.st_mode), oct(stat.S_IMODE(st.st_mode)), st.st_mtime_ns,
                        content)
    return out


def _seed(ws: Path) -> None:
    (ws / "src").mkdir()
    (ws / "src" / "app.py").write_text("def greet(name):\n    return 'hello ' + name\n")
    (ws / "README.md").write_text("# demo project\n")
    (ws / "data").mkdir()
    (ws / "data" / "users.csv").write_text("id,name\n1,ada\n2,linus\n")
    os.chmod(ws / "data" / "users.csv", 0o640)
    (ws / "scripts").mkdir()
    (ws / "scripts" / "run.sh").write_text("#!/bin/sh\necho run\n")
    os.chmod(ws / "scripts" / "run.sh", 0o755)


def files_section(console: Console, rt: Runtime, base: Path) -> bool:
    ws = base / "workspace"
    ws.mkdir()
    _seed(ws)
    outside = base / "outside-secret.txt"
    outside.write_text("do not touch\n")
    os.symlink(outside, ws / "sneaky-link")  # planted by "code the agent ran"
    before = tree_digest(ws)
    console.rule("[bold]1. files: an agent edits a project, then everything is rolled back")
    with rt.episode(workspace=ws) as ep:
        ep.fs.write_text("src/app.py", "def greet(name):\n    return f'hi {name}!'\n")
        ep.fs.append("README.md", "\nNow with a friendlier greeting.\n")
        ep.fs.mkdir("tests")
        ep.fs.write_text("tests/test_app.py", "from src.app import greet\n")
        ep.fs.rename("data/users.csv", "data/users-old.csv")
        ep.fs.copy("data/users-old.csv", "data/users.csv")
        ep.fs.chmod("scripts/run.sh", 0o700)
        ep.fs.write_bytes("data/blob.bin", os.urandom(2_000_000))
        cp = ep.checkpoint("before cleanup")
        ep.fs.rmdir("scripts", recursive=True)
        ep.fs.delete("README.md")
        ep.fs.symlink("latest.csv", "data/users.csv")
        for attempt, call in [
            ("write ../escape.txt", lambda: ep.fs.write_text("../escape.txt", "x")),
            ("read /etc/passwd", lambda: ep.fs.read_text("/etc/passwd")),
            ("write through sneaky-link", lambda: ep.fs.write_text("sneaky-link", "pwned")),
            ("read via sneaky-link/..", lambda: ep.fs.read_text("sneaky-link/x")),
            ("symlink to /etc", lambda: ep.fs.symlink("etc", "/etc")),
        ]:
            try:
                call()
                console.print(f"[red]NOT refused[/]: {attempt}")
            except PolicyViolation as exc:
                console.print(f"refused  {attempt:<28} [dim]{exc}[/]")
        console.print(f"partial rollback to checkpoint {cp.name!r}: "
                      f"{ep.rollback(to=cp)} actions undone")
        _timeline(console, rt, ep.id)
        episode_id = ep.id
    after = tree_digest(ws)
    same = after == before and outside.read_text() == "do not touch\n"
    denied = sum(1 for r in rt.journal.records(episode_id) if r.status is Status.DENIED)
    console.print(f"episode {episode_id}: rolled back; {denied} escape attempts journaled as "
                  "DENIED")
    _verdict(console, "workspace byte- and metadata-identical to before (content, modes, "
             "mtimes, symlinks)", same)
    return same


EDIT_CODE = """
import os, pathlib
src = pathlib.Path("src/app.py")
src.write_text(src.read_text().replace("hello", "howdy"))
pathlib.Path("build").mkdir()
pathlib.Path("build/out.txt").write_text("built\\n")
os.remove("README.md")
print("edited the project")
"""

ESCAPE_CODE = """
import os, socket
for probe, fn in [
    ("read /etc/shadow", lambda: open("/etc/shadow").read()),
    ("read the host's home", lambda: os.listdir("/root")),
    ("connect to 127.0.0.1:5432", lambda: socket.create_connection(("127.0.0.1", 5432), 1)),
    ("see the host env", lambda: os.environ["REVEX_DEMO_SECRET"]),
]:
    try:
        fn()
        print("ESCAPED:", probe)
    except Exception as exc:
        print("blocked:", probe, "-", type(exc).__name__)
os.symlink("/etc/passwd", "passwd-link")  # lands in the change set; the policy refuses it
"""


def sandbox_section(console: Console, rt: Runtime, base: Path) -> bool:
    ws = base / "sandbox-ws"
    ws.mkdir()
    os.chmod(base, 0o755)
    _seed(ws)
    before = tree_digest(ws)
    console.rule("[bold]2. sandbox: generated code edits the workspace, tries to escape")
    os.environ["REVEX_DEMO_SECRET"] = "host-only"
    try:
        with rt.episode(workspace=ws) as ep:
            result = ep.run(code=EDIT_CODE)
            console.print(f"run 1: {result.status} on {result.backend}; "
                          f"{len(result.changes)} changes applied as journaled file actions: "
                          + ", ".join(f"{c.kind} {c.path}" for c in result.changes))
            edited = (ws / "src" / "app.py").read_text().count("howdy") == 1
            result = ep.run(code=ESCAPE_CODE)
            for line in result.stdout.splitlines():
                console.print(f"  [dim]{line}[/]")
            console.print(f"run 2: {result.status}; change set refused, nothing applied: "
                          f"{'; '.join(result.changes_refused)}")
            escaped = "ESCAPED" in result.stdout or result.changes_applied
    finally:
        os.environ.pop("REVEX_DEMO_SECRET", None)
    same = tree_digest(ws) == before
    _verdict(console, "sandboxed edits applied, escapes blocked, and all rolled back exactly",
             same and edited and not escaped)
    return same and edited and not escaped


def sql_section(console: Console, rt: Runtime, base: Path) -> bool:
    import sqlite3

    from revex.runtime.effects.sql_dump import canonical_dump

    console.rule("[bold]4. SQL: a migration, updates, a destructive statement refused")
    db_path = base / "app.db"
    with sqlite3.connect(db_path) as db:
        db.executescript("""
            CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, tier TEXT);
            CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL
                REFERENCES customers(id) ON DELETE CASCADE, total REAL);
            INSERT INTO customers VALUES (1, 'ada', 'gold'), (2, 'linus', NULL);
            INSERT INTO orders VALUES (10, 1, 99.5), (11, 2, 12.0), (12, 2, 7.25);
        """)
    url = f"sqlite:///{db_path}"
    before = canonical_dump(url)
    with rt.episode(workspace=base / "sql-ws", databases={"app": url}) as ep:
        app = ep.sql("app")
        app.script("ALTER TABLE customers ADD COLUMN email TEXT;"
                   "CREATE INDEX orders_by_customer ON orders(customer_id);")
        app.execute("UPDATE customers SET email = :e WHERE id = :i",
                    {"e": "ada@example.com", "i": 1})
        app.execute("UPDATE orders SET total = total * 1.2 WHERE customer_id = 2")
        app.execute("DELETE FROM customers WHERE id = 2")  # cascades to two orders
        console.print("migrated (column + index), updated, deleted a customer with cascades: "
                      f"{app.query('SELECT count(*) FROM orders')[0][0]} orders left")
        for attempt, sql in [("DELETE without WHERE", "DELETE FROM orders"),
                             ("ATTACH another file", "ATTACH DATABASE '/tmp/x.db' AS x")]:
            try:
                app.execute(sql)
                console.print(f"[red]NOT refused[/]: {attempt}")
            except PolicyViolation as exc:
                console.print(f"refused  {attempt:<22} [dim]{exc}[/]")
        episode_id = ep.id
    same = canonical_dump(url) == before
    shown = [r for r in rt.journal.records(episode_id) if r.kind.startswith("sql.")
             and r.status is Status.DONE]
    console.print(f"{len(shown)} SQL actions journaled with class, tables and row counts "
                  f"(see `revex show {episode_id}`)")
    _verdict(console, "database dump (schema, indexes, every row) after rollback equals the "
             "dump before", same)
    return same


DEMO_HTTP_POLICY = """
[policy]
name = "demo-http"
default = "deny"

[[rules]]
name = "workspace-files"
kind = "fs.*"
decision = "allow"

[[rules]]
name = "no-irreversible-calls"
kind = "http.*"
irreversible = true
decision = "deny"
reason = "declared irreversible (sends an email)"

[[rules]]
name = "local-api"
kind = "http.*"
host = "127.0.0.1"
decision = "allow"
"""


def http_section(console: Console, base: Path) -> bool:
    console.rule("[bold]3. REST: creates, updates, a delete, an irreversible call refused")
    try:
        import httpx

        from revex.testing.rest_app import create_app, serve
    except ImportError as exc:  # the service extra (fastapi, uvicorn) is not installed
        console.print(f"[yellow]skipped[/]: the local REST app needs fastapi and uvicorn ({exc})")
        return True
    from revex.policies.model import Policy

    policy = Policy.from_toml(DEMO_HTTP_POLICY)
    compensations = {"services": {"mail": {"operations": [
        {"match": "POST /emails", "irreversible": True, "reason": "sends an email"}]}}}
    with serve(create_app()) as url:
        with httpx.Client(base_url=url) as plain:
            plain.post("/items", json={"name": "chair", "price": 40})
            plain.post("/items", json={"name": "table", "price": 120})
            plain.post("/users", json={"name": "ada"})

            def server_state() -> dict[str, Any]:
                return {c: plain.get(f"/{c}").json() for c in ("items", "users", "emails")}

            before = server_state()
        with Runtime(state_dir=base / "http-state", policy=policy, audit=None,
                     compensations=compensations) as rt, rt.episode(
                         workspace=base / "http-ws") as ep:
            ep.http.post(f"{url}/items", json={"name": "lamp", "price": 25})
            ep.http.put(f"{url}/items/1", json={"id": 1, "name": "chair", "price": 35})
            ep.http.patch(f"{url}/items/2", json={"price": 99})
            ep.http.delete(f"{url}/users/1")
            console.print("created a lamp, repriced the chair and table, deleted a user")
            try:
                ep.http.post(f"{url}/emails", json={"to": "ada@example.com"})
                console.print("[red]NOT refused[/]: irreversible email")
            except PolicyViolation as exc:
                console.print(f"refused  POST /emails  [dim]{exc}[/]")
            with httpx.Client(base_url=url) as plain:
                during = server_state()
            console.print(f"server during the episode: {len(during['items'])} items, "
                          f"{len(during['users'])} users")
        with httpx.Client(base_url=url) as plain:
            after = server_state()
    same = after == before
    _verdict(console, "server state after rollback equals the state before (every resource "
             "compared by id)", same)
    return same


def _timeline(console: Console, rt: Runtime, episode_id: str) -> None:
    table = Table(title=f"journal of {episode_id} (so far)", show_lines=False)
    for col in ("#", "kind", "target", "status"):
        table.add_column(col)
    for rec in rt.journal.records(episode_id):
        if rec.status in (Status.DONE, Status.DENIED, Status.UNDONE) and rec.kind.startswith(
                ("fs.", "sql.", "http.", "exec.")):
            table.add_row(str(rec.action_seq), rec.kind, rec.target, str(rec.status))
    console.print(table)


def _verdict(console: Console, what: str, ok: bool) -> None:
    console.print(("[bold green]PROOF OK[/] " if ok else "[bold red]MISMATCH[/] ") + what)


def run_demo(console: Console, *, keep: bool = False) -> bool:
    base = Path(tempfile.mkdtemp(prefix="revex-demo-"))
    try:
        rt = Runtime(state_dir=base / "state", policy="default", audit=base / "audit.jsonl")
        with rt:
            results = [files_section(console, rt, base), sandbox_section(console, rt, base),
                       http_section(console, base), sql_section(console, rt, base)]
            report = rt.verify()
            console.rule("[bold]audit")
            console.print(f"journal hash chain + HMAC: {'intact' if report.ok else 'BROKEN'} "
                          f"({report.checked} records); audit events in {base / 'audit.jsonl'}")
            results.append(report.ok)
        ok = all(results)
        console.rule("[bold green]demo passed" if ok else "[bold red]demo FAILED")
        if keep:
            console.print(f"kept {base} (state dir: {base / 'state'})")
        return ok
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
