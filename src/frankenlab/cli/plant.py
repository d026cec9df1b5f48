"""`frankenlab plant {null,noise}`: planted-truth RL checkpoints, to calibrate verdicts on your own model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from frankenlab.cli.options import Threads, apply_threads

plant_app = typer.Typer(help="Planted-truth pairs: an RL checkpoint whose difference from SRC is known by "
                             "construction (null: none; noise: uniform relative noise), to check verdicts.",
                        no_args_is_help=True)

Src = Annotated[str, typer.Argument(help="Source checkpoint (the IN model): directory or hub id.")]
Out = Annotated[Path, typer.Argument(help="Output directory (must not exist or be empty, unless --overwrite).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty OUT.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print planted.json's content instead of a summary.")]


def _report(record: Any, out: Path, as_json: bool) -> None:
    d = record.to_dict()
    if as_json:
        typer.echo(json.dumps(d, indent=2))
        return
    con = Console()
    con.print(f"wrote {out.resolve()} ({record.kind}): {record.truth}")
    summary = d["relative_change_summary"]
    if summary:
        con.print(f"{d['n_changed']} matrices changed, realised ‖ΔW‖/‖W‖ {summary['min']:.3g}–{summary['max']:.3g} "
                  f"(median {summary['median']:.3g}); {d['n_unchanged']} tensors bit-identical.")
    con.print(f"truth recorded in {out.resolve() / 'planted.json'}; study it with "
              f"`frankenlab study --in {record.source} --rl {out}`.")


@plant_app.command("null")
def null_cmd(src: Src, out: Out, overwrite: Overwrite = False, as_json: AsJson = False,
             threads: Threads = None) -> None:
    """OUT = a byte copy of SRC: every verdict on (SRC, OUT) must find no change."""
    from frankenlab.planted import plant_null

    apply_threads(threads)
    _report(plant_null(src, out, overwrite=overwrite), out, as_json)


@plant_app.command("noise")
def noise_cmd(
    src: Src,
    out: Out,
    scale: Annotated[float, typer.Option(help="Relative size ε = ‖ΔW‖_F/‖W‖_F of the noise on each matrix.")]
    = 1e-3,
    seed: Annotated[int, typer.Option(help="Seed of the noise (with each matrix's name).")] = 0,
    region: Annotated[str, typer.Option(help="Region(s) whose 2-D weight matrices get noise: llm, early, mid, late, "
                                             "llm:9-17, vision, projector (comma-separated).")] = "llm",
    cuts: Annotated[str | None, typer.Option(help="LLM partition cuts, e.g. '8,20' (default: thirds).")] = None,
    overwrite: Overwrite = False,
    as_json: AsJson = False,
    threads: Threads = None,
) -> None:
    """OUT = SRC plus the same small relative Gaussian noise on each weight matrix of REGION; all else bit-identical."""
    from frankenlab.planted import plant_noise

    apply_threads(threads)
    _report(plant_noise(src, out, scale=scale, seed=seed, region=region, cuts=cuts, overwrite=overwrite), out,
            as_json)
