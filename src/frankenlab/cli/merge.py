"""`frankenlab merge`: Frankenstein checkpoints by block transplant, interpolation or rank-K transplant."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from frankenlab.errors import OutputError, RecipeError

_SECTION_NAMES = {"embed": "embeddings", "head": "lm_head", "other": "final norm"}
def _dirname(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "-", name)


def _print_plan(con: Console, plan, title: str) -> None:  # noqa: ANN001 - MergePlan, imported lazily
    t = Table(title=title)
    ranked = bool(plan.recipe.rank)
    for col in ("part", "layers/blocks", "source", "α", *(("rank",) if ranked else ()), "tensors"):
        t.add_column(col)
    for row in plan.summary():
        blocks = "" if row["first"] is None else (f"{row['first']}–{row['last']}" if row["last"] != row["first"]
                                                  else str(row["first"]))
        alpha = "" if row["alpha"] is None else f"{row['alpha']:g}"
        if row["rank"] is not None and row["truncated"]:
            source = "IN+SVD_K(RL−IN)" if row["alpha"] is None else "IN+α·SVD_K(RL−IN)"
        else:  # no rank, or one that keeps every delta of the row
            source = row["source"] if row["alpha"] is None else "IN+α(RL−IN)"
        rank_cell = "" if row["rank"] is None else str(row["rank"]) + ("" if row["truncated"] else " (full)")
        rank = (rank_cell,) if ranked else ()
        t.add_row(_SECTION_NAMES.get(row["section"], row["section"]), blocks, source, alpha, *rank,
                  str(row["tensors"]))
    con.print(t)
    for op in plan.operators():
        if op["option"] == "rank":
            con.print(f"--rank {op['region']}={op['rank']}: {op['truncated']} matrix(es) truncated to rank "
                      f"{op['rank']}; {op['full_delta']} tensor(s) keep the full delta (1-D, or K ≥ min(rows, "
                      "columns))", highlight=False, soft_wrap=True)
    for w in plan.warnings:
        con.print(f"[yellow]warning:[/yellow] {w}")


def merge_cmd(
    in_: Annotated[str | None, typer.Option("--in", help="IN checkpoint (supervised cold start): directory or "
                                                         "hub id.")] = None,
    rl: Annotated[str | None, typer.Option("--rl", help="RL checkpoint (IN after RL): directory or hub id.")] = None,
    recipe: Annotated[str | None, typer.Option(help="Source per LLM part, early:mid:late, e.g. IN:RL:RL.")] = None,
    cuts: Annotated[str | None, typer.Option(help="LLM partition cuts, e.g. '8,20' (default: thirds).")] = None,
    rest: Annotated[str | None, typer.Option(help="Model for everything not assigned otherwise (vision, "
                                                  "projector, embeddings, final norm, lm_head, config, "
                                                  "tokenizer). Default IN.")] = None,
    take: Annotated[list[str] | None, typer.Option(help="Explicit SOURCE:REGION, repeatable: RL:llm:9-27, "
                                                        "RL:projector, RL:vision, RL:embed, RL:lm_head.")] = None,
    alpha: Annotated[str | None, typer.Option(help="Interpolate W = IN + α(RL − IN) per region, e.g. "
                                                   "'mid=0.5,late=1.0'; α in [-1, 4], α > 1 extrapolates "
                                                   "beyond RL (ExPO).")] = None,
    rank: Annotated[str | None, typer.Option(help="Rank-K transplant W = IN + SVD_K(RL − IN) of every weight "
                                                  "matrix of a region, e.g. 'late=8' (K ≥ 1; 1-D tensors and "
                                                  "K ≥ min(rows, columns) keep the full delta).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output checkpoint directory (must not exist).")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML file of named variants.")] = None,
    name: Annotated[str | None, typer.Option(help="Variant of --config to write.")] = None,
    all_variants: Annotated[bool, typer.Option("--all", help="With --config: write every variant into "
                                                              "OUT/NAME.")] = False,
    list_standard: Annotated[bool, typer.Option("--list-standard", help="Print the paper's six variants "
                                                                         "and exit.")] = False,
    dtype: Annotated[str | None, typer.Option(help="Output dtype (bfloat16, float16, float32); default: as "
                                                   "stored.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output directory.")] = False,
    verify: Annotated[bool, typer.Option(help="Re-read the output and check every tensor against its "
                                              "declared source before publishing it.")] = False,
    emit_mergekit: Annotated[Path | None, typer.Option(help="Also write an equivalent mergekit YAML here.")] = None,
    dry_run: Annotated[bool, typer.Option(help="Validate and print the plan; write no checkpoint.")] = False,
    max_shard_size: Annotated[str, typer.Option(help="Largest output shard, e.g. 2GiB, 5GB.")] = "2GiB",
    threads: Annotated[int, typer.Option(help="torch intra-op threads for interpolation, --dtype casts and "
                                              "--rank SVDs (1 is fastest on busy machines; the SVD count is "
                                              "recorded, since it changes the SVD's last bits).")] = 1,
) -> None:
    """Frankenstein checkpoints: LLM blocks from IN or RL (interpolated, extrapolated or rank-K), the rest from
    --rest."""
    from frankenlab.merge.recipe import STANDARD, select_variants  # torch-free: --list-standard stays fast

    con = Console()
    if list_standard:
        for spec in STANDARD:
            parts = spec.split(":")
            con.print(f"{spec}  (early {parts[0]}, mid {parts[1]}, late {parts[2]}; everything else from --rest)",
                      highlight=False)
        return
    missing = [flag for flag, value in (("--in", in_), ("--rl", rl)) if not value]
    if missing:
        raise RecipeError(f"missing {' and '.join(missing)}: give the IN and RL checkpoints "
                          "(or use --list-standard).")
    chosen = select_variants(config, name, all_variants, recipe=recipe, cuts=cuts, takes=take or [], alpha=alpha,
                             rank=rank, rest=rest)
    if out is None and not dry_run and emit_mergekit is None:
        raise RecipeError("missing --out: the directory to write the merged checkpoint to (or pass --dry-run).")
    from frankenlab.io.shards import parse_size

    shard_bytes = parse_size(max_shard_size)
    if emit_mergekit is not None and len(chosen) > 1:
        raise RecipeError("--emit-mergekit writes one YAML; use it with a single variant (--name).")
    if out is not None and not dry_run and not overwrite:
        targets = [out / _dirname(r.label) for r in chosen] if all_variants else [out]
        for target in targets:
            if target.exists():
                raise OutputError(f"{target} already exists; choose another output or pass --overwrite.")
    from frankenlab.merge import make_plan, open_inputs, to_mergekit, write_merged

    with open_inputs(in_, rl) as models:
        plans = [make_plan(r, models, dtype=dtype) for r in chosen]  # every variant validated before writing
        for r, plan in zip(chosen, plans):
            _print_plan(con, plan, f"{r.label}  (cuts {','.join(map(str, plan.cuts))}, rest {plan.rest})")
            if emit_mergekit is not None:
                from frankenlab.io import write_text

                export = to_mergekit(plan)
                write_text(emit_mergekit, export.yaml)
                con.print(f"mergekit YAML → {emit_mergekit} ({'exact' if export.exact else 'not exact'})")
                for w in export.warnings:
                    con.print(f"  [yellow]mergekit:[/yellow] {w}", highlight=False)
            if dry_run or out is None:
                continue
            target = out / _dirname(r.label) if all_variants else out
            res = write_merged(plan, models, target, overwrite=overwrite, verify=verify, max_shard_bytes=shard_bytes,
                               threads=threads)
            gb = res.bytes_written / 1e9
            con.print(f"wrote {res.out}: {len(res.files)} shard(s), {gb:.2f} GB in {res.seconds:.1f} s "
                      f"({gb / max(res.seconds, 1e-9):.2f} GB/s); provenance.json lists every tensor's source",
                      highlight=False)
            if verify:
                con.print(f"verified: all {len(plan.tensors)} tensors match their declared sources bit for bit")
