"""`frankenlab miniworld build`: the tiny IN/RL pair and frozen-block RLs, trained offline."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

miniworld_app = typer.Typer(help="The mini-world: procedural visual-reasoning tasks and its tiny IN/RL models.",
                            no_args_is_help=True)


@miniworld_app.command("build")
def build_cmd(
    out: Annotated[Path, typer.Argument(help="Output directory (must not exist unless --overwrite).")],
    fast: Annotated[bool, typer.Option("--fast", help="Few steps and items: a smoke-test build in seconds.")]
    = False,
    seed: Annotated[int, typer.Option(help="Seed of data, weights, SFT order and GRPO sampling.")] = 0,
    sft_steps: Annotated[int | None, typer.Option(help="SFT steps for IN (default 3000; --fast 30).")] = None,
    rl_steps: Annotated[int | None, typer.Option(help="GRPO steps per RL variant (default 100; --fast 2).")]
    = None,
    n_eval: Annotated[int | None, typer.Option(help="Held-out test items (default and most 2000; --fast 64).")]
    = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists.")] = False,
    threads: Annotated[int, typer.Option("--threads", min=1, help="torch threads for training (default 1: the "
                                                               "build is then bit-identical across runs).")] = 1,
) -> None:
    """Train IN (SFT) and RL (GRPO), plus RL with early / mid / late decoder blocks frozen, and evaluate all.

    Writes OUT/in, OUT/rl, OUT/rl-frozen-{early,mid,late} (Hugging Face directories with processor files),
    OUT/planted/{null,noise,late-only,early-only} (planted-truth RL checkpoints, each with planted.json),
    OUT/tasks/ (held-out and RL task files), OUT/probe-pairs/, OUT/results.csv (accuracy per model and family
    with Wilson intervals), OUT/necessity.csv (paired gains with bootstrap intervals) and OUT/build.json.
    """
    from frankenlab.miniworld.build import BuildConfig, build_miniworld

    overrides = {k: v for k, v in {"sft_steps": sft_steps, "rl_steps": rl_steps, "n_eval": n_eval,
                                   "threads": threads}.items() if v is not None}
    cfg = BuildConfig.preset(fast=fast, seed=seed, **overrides)
    con = Console(stderr=True)
    start = time.perf_counter()
    with con.status("mini-world: preparing data") as status:
        progress = build_progress(con, status, start)
        result = build_miniworld(out, cfg, overwrite=overwrite, progress=progress)
    _print_results(Console(), result)
    Console().print(f"wrote {result.out} in {time.perf_counter() - start:.0f} s")


def build_progress(con: Console, status: Any, start: float) -> Any:
    """A `build_miniworld` progress callback that drives a rich status line (also used by `demo`)."""

    def progress(stage: str, info: Any) -> None:
        elapsed = f"[{time.perf_counter() - start:5.0f}s]"
        if stage == "sft":
            status.update(f"{elapsed} SFT (IN) step {info['step']}/{info['steps']}, loss {info['loss']:.3f}")
        elif stage == "sft-start":
            con.print(f"{elapsed} SFT of IN started: {info['steps']} steps on {info['items']} examples")
        elif stage == "sft-done":
            con.print(f"{elapsed} IN trained by SFT ({info['steps']} steps; loss {info['loss_first']:.3f} at the "
                      f"first step, {info['loss_last']:.3f} over the last 5 %)")
        elif stage == "rl":
            frozen = f", {info['freeze']} frozen" if info["freeze"] else ""
            con.print(f"{elapsed} GRPO of {info['model']} started{frozen}: {info['steps']} steps")
            status.update(f"{elapsed} GRPO {info['model']}{frozen}: {info['steps']} steps")
        elif stage == "rl-done":
            con.print(f"{elapsed} {info['model']} trained (mean reward during GRPO {info['reward']:.2f})")
        elif stage == "eval":
            status.update(f"{elapsed} evaluating {info['model']}")
            con.print(f"{elapsed} {info['model']}: strict accuracy {info['strict']:.3f}")
        elif stage == "planted":
            con.print(f"{elapsed} planted/{info['name']} ({info['kind']}): {info['changed']} tensors changed")
        elif stage == "data":
            con.print(f"{elapsed} data: {info['sft']} SFT items, {info['rl']} RL prompts, "
                      f"{info['eval']} held-out items")

    return progress


def _print_results(con: Console, result: Any) -> None:
    """Strict accuracy per family; RL's paired gain over IN; the frozen variants' accuracy (CSV has intervals)."""
    acc, gains = result.results, result.gains

    def cell(model: str, family: str) -> float:
        return float(acc[(acc["model"] == model) & (acc["family"] == family)]["strict_acc"].iloc[0])

    frozen = [m for m in dict.fromkeys(acc["model"]) if m.startswith("RL-FROZEN-")]
    n = acc[(acc["model"] == "IN") & (acc["family"] != "all")]["n"]
    per_family = str(int(n.min())) if n.min() == n.max() else f"{int(n.min())}-{int(n.max())}"
    t = Table(title=f"Strict accuracy, {per_family} held-out items per family; "
                    "early/mid/late: RL with that third frozen",
              caption="Intervals: results.csv (Wilson) and necessity.csv (paired bootstrap).")
    for col in ("family", "IN", "RL", "RL−IN [95% CI]", *[m[10:].lower() for m in frozen]):
        t.add_column(col, justify="left" if col == "family" else "right", no_wrap=True)
    g = gains[gains["model"] == "RL"]
    for family in dict.fromkeys(acc["family"]):
        row = g[g["family"] == family].iloc[0]
        gain = f"{row['gain']:+.2f} [{row['gain_low']:+.2f}, {row['gain_high']:+.2f}]"
        t.add_row(family, f"{cell('IN', family):.2f}", f"{cell('RL', family):.2f}", gain,
                  *[f"{cell(m, family):.2f}" for m in frozen])
    con.print(t)
