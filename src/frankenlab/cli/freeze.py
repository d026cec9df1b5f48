"""`frankenlab freeze ...`: show, emit and verify block freezes."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from frankenlab.cli.options import Threads, apply_threads

freeze_app = typer.Typer(help="Freeze regions for RL, emit them for other trainers, verify they held.",
                         no_args_is_help=True)

Frozen = Annotated[str, typer.Option("--frozen", help="Region(s) frozen: early, mid, late, vision, projector, "
                                     "llm:9-17, ... (comma-separated).")]
Cuts = Annotated[str | None, typer.Option(help="LLM partition cuts, e.g. '8,20' (default: thirds).")]


@freeze_app.command("verify")
def verify_cmd(
    before: Annotated[str, typer.Argument(help="Checkpoint before training.")],
    after: Annotated[str, typer.Argument(help="Checkpoint after training.")],
    frozen: Frozen,
    cuts: Cuts = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    threads: Threads = None,
) -> None:
    """Exit 0 when every frozen tensor is bit-identical, 1 when one is not (listed), 2 on bad input."""
    apply_threads(threads)
    from frankenlab.freeze import verify_frozen

    r = verify_frozen(before, after, frozen, cuts)
    if as_json:
        typer.echo(json.dumps({"ok": r.ok, "frozen_identical": r.frozen_identical, "frozen_changed": r.frozen_changed,
                               "other_changed": r.other_changed, "other_unchanged": r.other_unchanged}, indent=2))
    else:
        con = Console()
        status = "[green]OK[/green]" if r.ok else "[red]FAILED[/red]"
        con.print(f"{status}: {len(r.frozen_identical)} frozen tensors bit-identical, {len(r.frozen_changed)} changed; "
                  f"outside the frozen region {len(r.other_changed)} changed, {len(r.other_unchanged)} unchanged.")
        for name in r.frozen_changed:
            con.print(f"  frozen but changed: {name}")
    if not r.ok:
        raise typer.Exit(1)


@freeze_app.command("emit")
def emit_cmd(
    ckpt: Annotated[str, typer.Argument(help="Checkpoint whose parameter names to use.")],
    frozen: Frozen,
    emit: Annotated[str, typer.Option(help="'regex' (one anchored pattern), 'list' (one name a line), or a trainer "
                                           "fragment: verl, easyr1, openrlhf, trl-deepspeed (docs/freeze.md).")]
    = "regex",
    layout: Annotated[str, typer.Option(help="Name layout: transformers5 (in-memory, what trainers see) or hub.")]
    = "transformers5",
    cuts: Cuts = None,
    threads: Threads = None,
) -> None:
    """Print the frozen parameters as a regex, a list, or a trainer's config fragment / Python hook."""
    apply_threads(threads)
    from frankenlab.checkpoint import Checkpoint
    from frankenlab.errors import FreezeError
    from frankenlab.freeze import emit_list, emit_regex, parse_freeze
    from frankenlab.freeze.trainers import TRAINER_FORMATS, emit_trainer

    if emit not in ("regex", "list", *TRAINER_FORMATS):
        raise FreezeError(f"--emit {emit!r}: use 'regex', 'list' or one of {', '.join(TRAINER_FORMATS)}.")
    if emit in TRAINER_FORMATS and layout != "transformers5":
        raise FreezeError(f"--emit {emit} uses the in-memory names the trainer sees; drop --layout {layout}.")
    with Checkpoint(ckpt) as c:
        spec = parse_freeze(frozen, c.adapter, cuts)
        names = c.canonical_names()
        if emit == "regex":
            typer.echo(emit_regex(spec, c.adapter, names, layout))
        elif emit == "list":
            typer.echo("\n".join(emit_list(spec, c.adapter, names, layout)))
        else:
            typer.echo(emit_trainer(emit, spec, c.adapter, names, source=ckpt), nl=False)


@freeze_app.command("show")
def show_cmd(
    ckpt: Annotated[str, typer.Argument(help="Checkpoint.")],
    frozen: Frozen,
    cuts: Cuts = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print regions and the frozen parameter names (in-memory "
                                                          "layout) as JSON.")] = False,
    threads: Threads = None,
) -> None:
    """Parameters and trainable parameters per region once the spec is applied (from headers only)."""
    apply_threads(threads)
    from frankenlab.checkpoint import Checkpoint
    from frankenlab.freeze import parse_freeze
    from frankenlab.regions import standard_regions

    with Checkpoint(ckpt) as c:
        spec = parse_freeze(frozen, c.adapter, cuts)
        chosen = set(spec.select(c.adapter, c.canonical_names()))
        regions = standard_regions(c.adapter, cuts)
        rows = {r.name: [0, 0] for r in regions} | {"rest": [0, 0]}
        for name in c.canonical_names():
            info = c.info(name)
            key = next((r.name for r in regions if r.contains(info)), "rest")
            n = c.meta(name).numel
            rows[key][0] += n
            rows[key][1] += 0 if name in chosen else n
        frozen_names = [c.adapter.to_layout(n, "transformers5") for n in c.canonical_names() if n in chosen]
    if as_json:
        typer.echo(json.dumps({"frozen": frozen, "regions": [{"region": k, "params": n, "trainable": tr}
                                                              for k, (n, tr) in rows.items()],
                               "frozen_names": frozen_names}, indent=2))
        return
    t = Table(title=f"freeze {frozen}")
    for col in ("region", "parameters", "trainable"):
        t.add_column(col, justify="left" if col == "region" else "right")
    for key, (n, tr) in rows.items():
        t.add_row(key, f"{n:,}", f"{tr:,}")
    Console().print(t)
