"""`frankenlab compare`: options → one `compare_checkpoints` call, a progress bar and a short table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


def compare_cmd(
    in_: Annotated[str, typer.Option("--in", help="IN checkpoint (supervised cold start): directory or hub id.")],
    rl: Annotated[str, typer.Option("--rl", help="RL checkpoint (IN after RL): directory or hub id.")],
    out: Annotated[Path, typer.Option("--out", help="Output directory (new, empty, or an earlier compare output "
                                                    "to resume).")],
    base: Annotated[str | None, typer.Option("--base", help="BASE checkpoint; adds the ΔIN = IN − BASE phase.")] = None,
    svd: Annotated[str, typer.Option("--svd", help="Spectra: auto (exact when min dim ≤ --exact-max-dim, else "
                                                   "lowrank), exact, lowrank (randomized top-k) or none.")] = "auto",
    top_k: Annotated[int, typer.Option("--top-k", help="Singular values kept (and computed by lowrank).")] = 32,
    oversample: Annotated[int, typer.Option("--oversample", help="lowrank: extra sampled directions, q = k + "
                                                                 "oversample.")] = 8,
    niter: Annotated[int, typer.Option("--niter", help="lowrank: power iterations.")] = 4,
    exact_max_dim: Annotated[int, typer.Option("--exact-max-dim", help="auto: largest min(shape) that gets the "
                                                                       "exact SVD.")] = 1024,
    cuts: Annotated[str | None, typer.Option("--cuts", help="LLM partition cuts, e.g. '8,20' (default: thirds).")]
    = None,
    device: Annotated[str, typer.Option("--device", help="auto (GPU when available), cpu, cuda or cuda:N.")] = "auto",
    threads: Annotated[int | None, typer.Option("--threads", help="CPU threads for torch (default: every core).")]
    = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the randomized SVD.")] = 0,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write PNG figures into OUT/plots.")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a finished comparison in OUT made with other "
                                                               "inputs or settings.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary table.")] = False,
) -> None:
    """Weight-update energy, sparsity and spectra per tensor, layer, module kind and region (streamed)."""
    from frankenlab.compare import ProgressEvent, compare_checkpoints

    con = Console(stderr=True, quiet=quiet)
    bar = Progress(TextColumn("[bold]compare[/bold]"), BarColumn(), MofNCompleteColumn(), TextColumn("tensors"),
                   TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.description}"),
                   console=con, transient=True, disable=quiet)
    task = bar.add_task("", total=None)
    started = False

    def on_progress(ev: ProgressEvent) -> None:
        nonlocal started
        if not started:  # only once validation has passed: errors stay a single clean line
            bar.start()
            started = True
        short = ev.name if len(ev.name) <= 60 else "…" + ev.name[-59:]
        bar.update(task, total=ev.total, completed=ev.index,
                   description=("[dim](cached)[/dim] " if ev.cached else "") + short)

    try:
        res = compare_checkpoints(in_, rl, base, out_dir=out, svd=svd, top_k=top_k, oversample=oversample,
                                  niter=niter, exact_max_dim=exact_max_dim, seed=seed, cuts=cuts, device=device,
                                  threads=threads, plots=plots, overwrite=overwrite, progress=on_progress)
    finally:
        if started:
            bar.stop()
    if quiet:
        return
    table = Table(title="Update energy per region (Σ‖Δ‖_F over matrices; share of ‖Δ‖²_F)")
    for col in ("region", "phase", "fro_sum", "energy share", "rel_fro", "stable rank", "eff. rank (top k)"):
        table.add_column(col, justify="left" if col in ("region", "phase") else "right")
    for _, r in res.regions.iterrows():
        table.add_row(str(r["region"]), str(r["phase"]), _fmt(r["fro_sum"]), _fmt(r["energy_share"], pct=True),
                      _fmt(r["rel_fro_total"]), _fmt(r["stable_rank_mean"]), _fmt(r["effective_rank_topk_mean"]))
    con.print(table)
    how = "finished earlier, read back (nothing computed)" if res.reloaded else f"{res.computed} tensor(s) computed"
    con.print(f"{how}; results in [bold]{out}[/bold] (tensors/layers/kinds/regions .csv+.parquet, summary.json, "
              "manifest.json, plots/)")


def _fmt(x: float, pct: bool = False) -> str:
    if x is None or x != x:
        return "–"
    return f"{100 * x:.1f}%" if pct else f"{x:.4g}"
