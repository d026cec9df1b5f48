"""`frankenlab compare`: options → one `compare_checkpoints` call, a progress bar and a short table;
`frankenlab compare overlap A B`: the overlap of two updates' changed entries, from their masks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from frankenlab.cli.options import Threads, apply_threads
from frankenlab.errors import CompareError

compare_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@compare_app.callback(invoke_without_command=True)
def compare_cmd(
    ctx: typer.Context,
    in_: Annotated[str | None, typer.Option("--in", help="IN checkpoint (supervised cold start): directory or hub "
                                                         "id.")] = None,
    rl: Annotated[str | None, typer.Option("--rl", help="RL checkpoint (IN after RL): directory or hub id.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output directory (new, empty, or an earlier compare "
                                                           "output to resume).")] = None,
    base: Annotated[str | None, typer.Option("--base", help="BASE checkpoint; adds the ΔIN = IN − BASE phase.")] = None,
    svd: Annotated[str, typer.Option("--svd", help="Spectra: auto (exact when min dim ≤ --exact-max-dim, else "
                                                   "lowrank), exact, lowrank (randomized top-k) or none.")] = "auto",
    top_k: Annotated[int, typer.Option("--top-k", help="Singular values kept (and computed by lowrank).")] = 32,
    oversample: Annotated[int, typer.Option("--oversample", help="lowrank: extra sampled directions, q = k + "
                                                                 "oversample.")] = 8,
    niter: Annotated[int, typer.Option("--niter", help="lowrank: block Krylov iterations.")] = 8,
    exact_max_dim: Annotated[int, typer.Option("--exact-max-dim", help="auto: largest min(shape) that gets the "
                                                                       "exact SVD.")] = 1024,
    top_k_subspace: Annotated[int, typer.Option("--top-k-subspace", help="k of the top-k singular subspaces of "
                                                                         "W_ref / W_after for the geometry metrics "
                                                                         "(angles, principal share); 0: off.")] = 16,
    rank_tol: Annotated[float, typer.Option("--rank-tol", help="update_rank counts σ_i > rank_tol·σ1.")] = 1e-3,
    sparsity_tols: Annotated[str, typer.Option("--sparsity-tols", help="Tolerances (relative to |w_ref|) of the "
                                                                       "sparsity.csv sweep.")] = "0,1e-8,1e-6,1e-4",
    masks: Annotated[bool, typer.Option("--masks/--no-masks", help="Write bit-packed changed-entry masks (OUT/masks) "
                                                                   "for `frankenlab compare overlap`.")] = False,
    cuts: Annotated[str | None, typer.Option("--cuts", help="LLM partition cuts, e.g. '8,20' (default: thirds).")]
    = None,
    device: Annotated[str, typer.Option("--device", help="auto (GPU when available), cpu, cuda or cuda:N.")] = "auto",
    threads: Threads = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the randomized SVD.")] = 0,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write PNG figures into OUT/plots.")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a finished comparison in OUT made with other "
                                                               "inputs or settings.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary table.")] = False,
) -> None:
    """Weight-update energy, sparsity, spectra and subspace geometry per tensor, layer, kind and region (streamed).

    `frankenlab compare overlap A B --out DIR` compares the changed entries of two such outputs.
    """
    if ctx.invoked_subcommand is not None:
        return
    missing = [flag for flag, v in (("--in", in_), ("--rl", rl), ("--out", out)) if v is None]
    if missing:
        raise CompareError(f"frankenlab compare needs {', '.join(missing)} (e.g. frankenlab compare --in IN --rl RL "
                           "--out DIR); see frankenlab compare --help.")
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
                                  niter=niter, exact_max_dim=exact_max_dim, seed=seed, subspace_k=top_k_subspace,
                                  rank_tol=rank_tol, sparsity_tols=sparsity_tols, masks=masks, cuts=cuts,
                                  device=device, threads=threads, plots=plots, overwrite=overwrite,
                                  progress=on_progress)
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
    con.print(f"{how}; results in [bold]{out}[/bold] (tensors/layers/kinds/regions/sparsity .csv+.parquet, "
              "summary.json, manifest.json, plots/" + (", masks/" if masks else "") + ")")


@compare_app.command("overlap")
def overlap_cmd(
    a: Annotated[Path, typer.Argument(help="A: a finished `frankenlab compare ... --masks` output directory.")],
    b: Annotated[Path, typer.Argument(help="B: another one (or A again, with --phase-a in --phase-b rl).")],
    out: Annotated[Path, typer.Option("--out", help="Output directory (new or empty; --overwrite replaces an "
                                                    "earlier overlap output).")],
    phase_a: Annotated[str, typer.Option("--phase-a", help="Update of A: rl (ΔRL) or in (ΔIN, needs --base).")]
    = "rl",
    phase_b: Annotated[str, typer.Option("--phase-b", help="Update of B: rl or in.")] = "rl",
    threads: Threads = None,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write OUT/plots/overlap_layers.png.")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier overlap output in OUT.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No summary table.")] = False,
) -> None:
    """Jaccard overlap of two updates' changed entries vs the independence null, per matrix, layer and region."""
    from frankenlab.compare.overlap import compare_overlap

    apply_threads(threads)

    for flag, phase in (("--phase-a", phase_a), ("--phase-b", phase_b)):
        if phase not in ("in", "rl"):
            raise CompareError(f"{flag} {phase!r} is not a phase; use rl (ΔRL) or in (ΔIN).")
    res = compare_overlap(a, b, out_dir=out, phase_a=phase_a, phase_b=phase_b, plots=plots, overwrite=overwrite)
    if quiet:
        return
    con = Console(stderr=True)
    table = Table(title=f"Changed-entry overlap: A = {a}:{phase_a}, B = {b}:{phase_b}")
    for col in ("region", "p_a", "p_b", "jaccard", "null", "ratio"):
        table.add_column(col, justify="left" if col == "region" else "right")
    for _, r in res.regions.iterrows():
        ratio = r["jaccard"] / r["jaccard_null"] if r["jaccard_null"] and r["jaccard_null"] > 0 else float("nan")
        table.add_row(str(r["region"]), _fmt(r["p_a"], pct=True), _fmt(r["p_b"], pct=True), _fmt(r["jaccard"]),
                      _fmt(r["jaccard_null"]), _fmt(ratio))
    con.print(table)
    con.print(f"results in [bold]{out}[/bold] (overlap/overlap_layers/overlap_regions .csv+.parquet, summary.json, "
              "manifest.json" + (", plots/" if plots else "") + ")")


def _fmt(x: float, pct: bool = False) -> str:
    if x is None or x != x:
        return "–"
    return f"{100 * x:.1f}%" if pct else f"{x:.4g}"
