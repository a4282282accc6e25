"""The ``revex`` command: a thin layer over the public API that formats results."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from revex.errors import ConflictError, RevexError
from revex.runtime.journal import Record, Status
from revex.runtime.runtime import Runtime

app = typer.Typer(
    name="revex",
    help="A secure code-execution sandbox with a reversible-action runtime.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err = Console(stderr=True)

StateDir = Annotated[
    Path | None,
    typer.Option("--state-dir", envvar="REVEX_STATE_DIR",
                 help="State directory (journal, pre-image store). Default: the XDG state dir."),
]


def _runtime(state_dir: Path | None, *, recover: bool = True) -> Runtime:
    return Runtime(state_dir=state_dir, audit="file", recover=recover)


def _ts(value: float) -> str:
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S")


@app.command()
def episodes(state_dir: StateDir = None,
             status: Annotated[str | None, typer.Option(help="Only this status.")] = None
             ) -> None:
    """List episodes with their status and workspace."""
    with _runtime(state_dir) as rt:
        table = Table(title=f"episodes in {rt.state_dir}")
        for col in ("id", "status", "created (UTC)", "policy", "workspace"):
            table.add_column(col)
        for ep in rt.episodes(status):
            table.add_row(ep.id, ep.status, _ts(ep.created_at), str(ep.config.get("policy", "")),
                          str(ep.config.get("workspace", "")))
        console.print(table)


def _undo_status(intent: Record, outcome: Record | None, undone: set[int]) -> str:
    if intent.undo.get("irreversible"):
        return "[red]not undoable[/]"
    if intent.seq in undone:
        return "[green]undone[/]"
    if outcome is not None and outcome.status is Status.DONE:
        return "pending"
    return "-"


def _summary(rec: Record, outcome: Record | None) -> str:
    parts = []
    params = rec.params
    for key in ("statement", "tables", "method", "url", "size", "mode", "status_code"):
        if key in params:
            value = params[key]
            parts.append(f"{key}={','.join(value) if isinstance(value, list) else value}")
    if outcome is not None:
        for key in ("rows", "status", "status_code", "exit_code"):
            if key in outcome.result and not isinstance(outcome.result[key], dict):
                parts.append(f"{key}={outcome.result[key]}")
    if rec.error:
        parts.append(rec.error if len(rec.error) < 120 else rec.error[:117] + "...")
    return " ".join(parts)


@app.command()
def show(episode: Annotated[str, typer.Argument(help="Episode id (or a unique prefix).")],
         state_dir: StateDir = None) -> None:
    """Show an episode as a timeline: action, target, decision and rule, status, undo status."""
    with _runtime(state_dir) as rt:
        episode_id = rt.resolve_id(episode)
        records = rt.journal.records(episode_id)
        info = rt.journal.episode(episode_id) or {}
        outcome: dict[int, Record] = {}
        undone: set[int] = set()
        for rec in records:
            if rec.refers_to is not None and rec.status in (Status.DONE, Status.FAILED):
                outcome[rec.refers_to] = rec
            if rec.status is Status.UNDONE and rec.refers_to is not None:
                undone.add(rec.refers_to)
        table = Table(title=f"{episode_id} ({info.get('status', '?')})")
        for col in ("#", "action", "target", "decision (rule)", "status", "undo", "details"):
            table.add_column(col, overflow="fold")
        for rec in records:
            if rec.status is Status.INTENT:
                out = outcome.get(rec.seq)
                status = str(out.status) if out else "[yellow]INTENT (no outcome)[/]"
                table.add_row(str(rec.action_seq), rec.kind, rec.target,
                              f"{rec.decision} ({rec.rule})", status,
                              _undo_status(rec, out, undone), _summary(rec, out))
            elif rec.status in (Status.DENIED,) or (
                    rec.status in (Status.DONE, Status.FAILED) and rec.refers_to is None):
                style = "[red]DENIED[/]" if rec.status is Status.DENIED else str(rec.status)
                table.add_row(str(rec.action_seq), rec.kind, rec.target,
                              f"{rec.decision or 'deny'} ({rec.rule})", style, "-",
                              _summary(rec, None))
            elif rec.status is Status.EVENT:
                table.add_row("", f"[dim]{rec.kind}[/]", rec.target, "", "", "",
                              f"[dim]{_summary(rec, None)}[/]")
        console.print(table)


@app.command()
def undo(episode: Annotated[str, typer.Argument(help="Episode id (or a unique prefix).")],
         force: Annotated[bool, typer.Option(help="Overwrite targets changed since.")] = False,
         state_dir: StateDir = None) -> None:
    """Undo a committed episode, newest action first (compare-and-set unless --force)."""
    with _runtime(state_dir) as rt:
        episode_id = rt.resolve_id(episode)
        try:
            count = rt.undo(episode_id, force=force)
        except ConflictError as exc:
            err.print(f"[red]conflict[/]: {exc}")
            raise typer.Exit(3) from exc
        console.print(f"undid {count} action(s) of {episode_id}")


@app.command()
def verify(state_dir: StateDir = None) -> None:
    """Recompute the journal's hash chain and HMACs; exit 1 on the first broken record."""
    with _runtime(state_dir, recover=False) as rt:
        report = rt.verify()
        if report.ok:
            console.print(f"[green]ok[/]: {report.checked} records, chain and HMACs intact")
            return
        err.print(f"[red]broken[/] at record {report.first_bad_seq}: {report.reason} "
                  f"({report.checked} records verified before it)")
        raise typer.Exit(1)


@app.command()
def export(episode: Annotated[str, typer.Argument(help="Episode id (or a unique prefix).")],
           fmt: Annotated[str, typer.Option("--format", help="Output format: jsonl.")] = "jsonl",
           state_dir: StateDir = None) -> None:
    """Write an episode's journal records to stdout, one JSON object per line."""
    if fmt != "jsonl":
        err.print(f"unknown format {fmt!r}; supported: jsonl")
        raise typer.Exit(2)
    with _runtime(state_dir) as rt:
        for rec in rt.journal.records(rt.resolve_id(episode)):
            sys.stdout.write(json.dumps(rec.to_json(), sort_keys=True) + "\n")


@app.command()
def gc(state_dir: StateDir = None) -> None:
    """Delete pre-images that no undoable action needs any more."""
    with _runtime(state_dir) as rt:
        blobs, size = rt.gc()
        console.print(f"removed {blobs} blob(s), {size} bytes")


@app.command()
def doctor(state_dir: StateDir = None) -> None:
    """Say which features and sandbox backends work on this machine, and why not."""
    from revex.doctor import checks

    table = Table(title="revex doctor")
    for col in ("feature", "ok", "details"):
        table.add_column(col, overflow="fold")
    for name, ok, why in checks(state_dir):
        table.add_row(name, "[green]yes[/]" if ok else "[red]no[/]", why)
    console.print(table)


@app.command()
def demo(keep: Annotated[bool, typer.Option(help="Keep the temporary directory.")] = False
         ) -> None:
    """Run a first end-to-end episode on a temporary workspace and prove the rollback."""
    from revex.demo import run_demo

    ok = run_demo(console, keep=keep)
    if not ok:
        raise typer.Exit(1)


def main(argv: list[str] | None = None) -> Any:
    try:
        return app(args=argv)
    except RevexError as exc:
        err.print(f"[red]error[/]: {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()
