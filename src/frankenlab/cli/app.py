"""The `frankenlab` root command: FrankenlabError → one line on stderr and exit code 2."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

import frankenlab
from frankenlab.cli.options import Threads, apply_threads
from frankenlab.errors import FrankenlabError

app = typer.Typer(
    name="frankenlab",
    help="What did RL change in this model, and where? Frankenstein-style analysis of IN/RL checkpoints.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_state: dict[str, bool] = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"frankenlab {frankenlab.__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads for torch in any command "
                                                "(sets $FRANKENLAB_THREADS; a command's own --threads wins).")]
    = None,
) -> None:
    _state["debug"] = debug
    if threads is not None:
        import os

        from frankenlab.runtime.threads import ENV

        os.environ[ENV] = str(threads)


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


@app.command()
def info(
    ckpt: Annotated[str, typer.Argument(help="Checkpoint directory or hub id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
    cuts: Annotated[str | None, typer.Option(help="LLM partition cuts, e.g. '8,20' (default: thirds).")] = None,
    threads: Threads = None,
) -> None:
    """Architecture, unified layer map, regions, sizes and fingerprint of a checkpoint."""
    apply_threads(threads)
    from frankenlab.checkpoint import Checkpoint
    from frankenlab.info import describe

    with Checkpoint(ckpt) as c:
        d = describe(c, cuts=cuts)
    if as_json:
        typer.echo(json.dumps(d, indent=2))
        return
    _print_info(d)


def _print_info(d: dict[str, Any]) -> None:
    con = Console()
    con.print(f"[bold]{d['path']}[/bold]")
    con.print(
        f"model_type [cyan]{d['model_type']}[/cyan] (adapter {d['family']}), layout [cyan]{d['layout']}[/cyan], "
        f"fingerprint {d['fingerprint']}"
    )
    con.print(
        f"{d['n_llm_layers']} LLM layers, {d['n_vision_blocks']} vision blocks, {d['n_tensors']} tensors, "
        f"{d['params']:,} parameters, {_human(d['bytes'])}, dtypes {d['dtypes']}"
    )
    t = Table(title="Sections")
    for col in ("section", "tensors", "parameters", "bytes"):
        t.add_column(col, justify="right" if col != "section" else "left")
    for name, s in d["sections"].items():
        t.add_row(name, str(s["tensors"]), f"{s['params']:,}", _human(s["bytes"]))
    con.print(t)
    t = Table(title="Regions")
    for col in ("region", "section", "blocks", "unified"):
        t.add_column(col)
    for r in d["regions"]:
        blocks = f"{r['first_block']}–{r['last_block']}"
        t.add_row(r["name"], r["section"], blocks, f"{r['unified'][0]}..{r['unified'][1]}")
    con.print(t)
    t = Table(title=f"Unified layer map (module names as stored in the files, layout {d['layout']}; the loaded "
                    "model's name in parentheses where it differs)")
    for col in ("index", "section", "module", "tensors"):
        t.add_column(col)
    for layer in d["layers"]:
        here, loaded = layer.get("stored_paths") or layer["module_paths"], layer["module_paths"]
        name = ", ".join(here) + (f" ({', '.join(loaded)})" if list(here) != list(loaded) else "")
        t.add_row(str(layer["index"]), layer["section"], name, str(len(layer["tensors"])))
    con.print(t)


# Command groups live one per module; each registers exactly one entry here.
from frankenlab.cli.compare import compare_app  # noqa: E402
from frankenlab.cli.eval import eval_cmd  # noqa: E402
from frankenlab.cli.freeze import freeze_app  # noqa: E402
from frankenlab.cli.merge import merge_cmd  # noqa: E402
from frankenlab.cli.miniworld import miniworld_app  # noqa: E402
from frankenlab.cli.plant import plant_app  # noqa: E402
from frankenlab.cli.probe import probe_app  # noqa: E402
from frankenlab.cli.rl import rl_cmd  # noqa: E402
from frankenlab.cli.study import demo_cmd, study_cmd  # noqa: E402

app.add_typer(compare_app, name="compare")
app.command("eval")(eval_cmd)
app.command("merge")(merge_cmd)
app.add_typer(freeze_app, name="freeze")
app.add_typer(miniworld_app, name="miniworld")
app.add_typer(plant_app, name="plant")
app.command("rl")(rl_cmd)
app.add_typer(probe_app, name="probe")
app.command("study")(study_cmd)
app.command("demo")(demo_cmd)


def _tidy_help(cmd: Any) -> None:
    """Help that reads like a man page: arguments in capitals, flags without a ``<bool>`` type column."""
    for p in cmd.params:
        if p.param_type_name == "argument" and p.metavar is None:
            p.metavar = p.name.upper()
        if p.param_type_name == "argument" and hasattr(p, "_usage_display_name"):
            # typer >= 0.2x writes required arguments as {NAME} in usage lines; a man page writes NAME
            name = p.metavar or p.name.upper()
            shown = name if p.required else f"[{name}]"
            p._usage_display_name = lambda shown=shown, many=p.nargs != 1: shown + ("..." if many else "")
        elif p.param_type_name == "option" and getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""
    make_help = cmd.get_help_option  # click builds --help per context, outside cmd.params

    def help_option(ctx: Any, _make: Any = make_help) -> Any:
        opt = _make(ctx)
        if opt is not None:
            opt.metavar = ""
        return opt

    cmd.get_help_option = help_option  # type: ignore[method-assign]
    for sub in getattr(cmd, "commands", {}).values():
        _tidy_help(sub)


def command() -> Any:
    """The click command behind `frankenlab`, help tidied (what `main` runs)."""
    cmd = typer.main.get_command(app)
    _tidy_help(cmd)
    return cmd


def main(argv: list[str] | None = None) -> None:
    """Console entry point: expected failures exit 2 with one line on stderr."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        rc = command().main(args=args, standalone_mode=False, prog_name="frankenlab")
    except FrankenlabError as exc:
        if debug:
            raise
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # click usage errors and aborts
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.stderr.write("aborted\n")
            sys.exit(130)
        raise
    # click returns the code of a typer.Exit raised inside a command when not standalone
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
