"""`frankenlab study` and `frankenlab demo`: the whole analysis, one line per stage, one report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from frankenlab.cli.options import Threads
from frankenlab.errors import FrankenlabError

_console = Console()


def _printer():  # noqa: ANN202 - a closure handed to run_study
    def on_event(kind: str, o) -> None:  # noqa: ANN001
        if o is None:
            return
        if kind == "start":
            _console.print(f"[bold]→ {o.stage}[/bold] ({o.recipe}) …")
            return
        color = {"done": "green", "skipped": "cyan", "failed": "red"}.get(o.status, "yellow")
        note = f" — {o.error}" if o.error and o.status != "skipped" else ""
        _console.print(f"  [{color}]{o.status}[/{color}] {o.stage} ({o.recipe}) in {o.seconds:.1f} s{note}")

    return on_event


def run_and_report(cfg) -> Path:  # noqa: ANN001
    from frankenlab.study import run_study

    result = run_study(cfg, on_event=_printer())
    report = Path(cfg.out) / "report.html"
    _console.print(f"[bold]report:[/bold] {report.resolve()}")
    if result.failed:
        _console.print(f"[red]{len(result.failed)} stage(s) failed[/red]; their tracebacks are in "
                       f"{Path(cfg.out) / '.stages'}.")
        raise typer.Exit(1)
    return report


def study_cmd(
    config: Annotated[str | None, typer.Argument(help="Study YAML (see docs/study.md).")] = None,
    in_: Annotated[str | None, typer.Option("--in", help="IN checkpoint (when no YAML is given).")] = None,
    rl: Annotated[str | None, typer.Option("--rl", help="RL checkpoint.")] = None,
    base: Annotated[str | None, typer.Option("--base", help="Optional BASE checkpoint (enables ΔIN).")] = None,
    out: Annotated[str | None, typer.Option("--out", help="Output directory.")] = None,
    cuts: Annotated[str | None, typer.Option(help="LLM partition cuts, e.g. '8,20' (default thirds).")] = None,
    tasks: Annotated[str | None, typer.Option(help="Eval tasks, comma-separated (default: built-in mini-world).")]
    = None,
    limit: Annotated[int | None, typer.Option(help="Items per eval task.")] = None,
    stages: Annotated[str | None, typer.Option(help="Comma-separated subset of stages to run.")] = None,
    freeze_table: Annotated[str | None, typer.Option("--freeze-table", help="Necessity table to report.")] = None,
    threads: Threads = None,
) -> None:
    """Run the whole study (compare, probes, merged variants + eval, freezing) and write report.html."""
    from frankenlab.study import load_config, parse_config

    if config is not None:
        if any(x is not None for x in (in_, rl, base)):
            raise FrankenlabError("give either a study YAML or --in/--rl, not both.")
        cfg = load_config(config)
        over: dict = {}
        if out:
            over["out"] = out
        if stages:
            over["stages"] = [s.strip() for s in stages.split(",")]
        if threads is not None:
            over["threads"] = threads
        if over:
            cfg = parse_config({**cfg.model_dump(by_alias=True), **over})
    else:
        if not (in_ and rl and out):
            raise FrankenlabError("without a study YAML, --in, --rl and --out are required.")
        data: dict = {"out": out, "recipes": [{"name": "default", "in": in_, "rl": rl, "base": base}], "cuts": cuts}
        if tasks:
            data.setdefault("eval", {})["tasks"] = [t.strip() for t in tasks.split(",")]
        if limit is not None:
            data.setdefault("eval", {})["limit"] = limit
        if stages:
            data["stages"] = [s.strip() for s in stages.split(",")]
        if freeze_table:
            data["freeze"] = {"table": freeze_table}
        if threads is not None:
            data["threads"] = threads
        cfg = parse_config(data, "command line")
    run_and_report(cfg)


def demo_cmd(
    out: Annotated[str | None, typer.Option("--out", help="Output directory (default ./frankenlab-demo).")] = None,
    threads: Threads = None,
) -> None:
    """Train (once) the built-in mini-world IN/RL pair and run the whole study on it, offline."""
    import time

    from frankenlab.study.demo import default_out, demo_config, ensure_pair

    root = Path(out) if out else default_out()
    t0 = time.perf_counter()
    built = (root / "miniworld" / "build.json").exists()
    if not built:
        _console.print("[bold]building the mini-world pair[/bold] (IN by SFT, RL by GRPO, frozen RL variants) …")

    from frankenlab.cli.miniworld import build_progress

    with _console.status("mini-world: preparing data") as status:
        pair = ensure_pair(root, progress=build_progress(_console, status, t0))
    _console.print(f"mini-world pair: {pair.resolve()} ({'reused' if built else 'built'} in "
                   f"{time.perf_counter() - t0:.0f} s)")
    report = run_and_report(demo_config(root, pair, threads=threads))
    _console.print(f"demo finished in {time.perf_counter() - t0:.0f} s; open {report.resolve()}")
