"""`frankenlab probe ...`: visual K/V swap, layer ablation, attention on image tokens, probe pair sets."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from frankenlab.cli.options import Threads, apply_threads

if TYPE_CHECKING:
    import pandas as pd

probe_app = typer.Typer(help="Functional localization: where along depth does the model do what?",
                        no_args_is_help=True)
pairs_app = typer.Typer(help="Built-in probe pair sets.", no_args_is_help=True)
probe_app.add_typer(pairs_app, name="pairs")

Out = Annotated[Path, typer.Option("--out", help="Output directory (new, empty, or an earlier run of this probe to "
                                                 "resume).")]
Layers = Annotated[str | None, typer.Option("--layers", help="Decoder layers (0-based): 'all', '0,4,8', '0-27', "
                                                             "'0-27:4'.")]
Limit = Annotated[int | None, typer.Option("--limit", help="Use only the first N items (per task).")]
Dtype = Annotated[str | None, typer.Option("--dtype", help="Model dtype: bf16, fp16, fp32 (default: as stored).")]
def _resolve_device(value: str) -> str:
    """Checked here (a missing GPU fails before anything is read); `auto` stays `auto`, so that the loader can
    tell it from an explicit device, which --device-map refuses."""
    from frankenlab.runtime.devices import resolve_device

    resolved = resolve_device(value)
    return "auto" if value.strip().lower() in ("auto", "") else resolved


Device = Annotated[str, typer.Option("--device", callback=_resolve_device,
                                     help="auto (the GPU when there is one, in bf16 unless --dtype), cpu, cuda or "
                                          "cuda:N.")]
DeviceMap = Annotated[str | None, typer.Option("--device-map", help="auto: split the model across the visible GPUs "
                                                                    "(and CPU) with accelerate, for a model larger "
                                                                    "than one GPU; needs --device auto. Results do "
                                                                    "not depend on it.")]


def _check_placement(device: str, device_map: str | None) -> None:
    """--device-map's value and its pairing with --device, before any file is read or written."""
    if device_map is None:
        return
    from frankenlab.runtime.devices import DeviceError, check_device_map

    if device_map.strip().lower() != "auto":
        raise DeviceError(f"--device-map {device_map!r} is not understood; the only value is auto (or omit it).")
    check_device_map(device_map, device)
MaxNew = Annotated[int | None, typer.Option("--max-new-tokens", min=1, help="Greedy answer length limit (default: "
                                                                           "per item kind, perception 256, reasoning "
                                                                           "1024).")]
System = Annotated[str | None, typer.Option("--system-prompt", help="System prompt for every question.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace results in OUT made with other inputs or "
                                                             "settings.")]
Plots = Annotated[bool, typer.Option("--plots/--no-plots", help="Write PNG figures into OUT/plots.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")]


@contextlib.contextmanager
def _progress(name: str, unit: str, quiet: bool) -> Iterator[tuple[Console, Callable[[int, int], None]]]:
    """A rich bar that starts with the first report, so validation errors stay one clean line."""
    con = Console(stderr=True, quiet=quiet)
    bar = Progress(TextColumn(f"[bold]{name}[/bold]"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
                   TimeElapsedColumn(), TimeRemainingColumn(), console=con, transient=True, disable=quiet)
    task = bar.add_task("", total=None)
    started = False

    def report(done: int, total: int) -> None:
        nonlocal started
        if not started:
            bar.start()
            started = True
        bar.update(task, completed=done, total=total)

    try:
        yield con, report
    finally:
        if started:
            bar.stop()


def _summary(con: Console, res_failed: list, out: Path, files: str) -> None:
    if res_failed:
        con.print(f"[yellow]{len(res_failed)} item(s) failed[/yellow] (counted in n_failed, listed in manifest.json; "
                  "rerun to retry them)")
    con.print(f"results in [bold]{out}[/bold] ({files})")


@probe_app.command("vision")
def vision_cmd(
    model: Annotated[str, typer.Argument(help="Vision-language checkpoint: directory or hub id.")],
    pairs: Annotated[Path, typer.Option("--pairs", help="Probe pairs JSONL (see `probe pairs make`).")],
    out: Out,
    mode: Annotated[str, typer.Option("--mode", help="suffix: swap at layers >= L; single: at layer L only.")]
    = "suffix",
    layers: Layers = None,
    layer_batch: Annotated[int, typer.Option("--layer-batch", help="Layer variants per batched target pass.")] = 8,
    max_new_tokens: MaxNew = None,
    system_prompt: System = None,
    limit: Limit = None,
    dtype: Dtype = None,
    device: Device = "auto",
    device_map: DeviceMap = None,
    plots: Plots = True,
    overwrite: Overwrite = False,
    threads: Threads = None,
    quiet: Quiet = False,
) -> None:
    """Swap the image tokens' K/V with a source image's at layers ≥ L (or L only); change and flip rates."""
    apply_threads(threads)
    _check_placement(device, device_map)
    from frankenlab.probe import VisionProbeSettings, parse_layers, run_vision_probe
    from frankenlab.probe.run import describe_model

    adapter, _, _ = describe_model(model)  # config only: bad layers fail before any weight is read
    settings = VisionProbeSettings(mode=mode, layers=parse_layers(layers, adapter.n_llm_layers),
                                   layer_batch=layer_batch, system_prompt=system_prompt,
                                   **({"max_new_tokens": max_new_tokens} if max_new_tokens else {}))
    with _progress("probe vision", "pairs", quiet) as (con, report):
        res = run_vision_probe(model, pairs, out, settings, limit=limit, dtype=dtype, device=device,
                               device_map=device_map, overwrite=overwrite, plots=plots, progress=report)
    if quiet:
        return
    pooled = res.layers[res.layers["task"] == "all"]
    top = pooled.sort_values("change_rate", ascending=False).head(5)
    con.print(f"the {len(top)} layers with the largest change rate, of {len(pooled)} probed (every layer and task "
              "in vision_layers.csv):")
    for _, r in top.iterrows():
        con.print(f"layer {int(r['layer'])}: change {r['change_rate']:.2f}, flip {r['flip_rate']:.2f} (n={r['n']})")
    _summary(con, res.failed, out, "vision_layers.csv/.parquet, vision_items.jsonl, manifest.json, plots/")


@probe_app.command("ablate")
def ablate_cmd(
    model: Annotated[str, typer.Argument(help="Checkpoint: directory or hub id.")],
    tasks: Annotated[list[str], typer.Option("--tasks", help="Task file (.jsonl/.parquet), gsm8k, math500 or "
                                                             "miniworld; repeat or comma-separate.")],
    out: Out,
    layers: Layers = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Rows (item × variant) per batch.")] = 16,
    score_only: Annotated[bool, typer.Option("--score-only", help="Teacher-forced gold log-prob only (no "
                                                                  "generation).")] = False,
    max_new_tokens: MaxNew = None,
    system_prompt: System = None,
    limit: Limit = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for generated tasks and the bootstrap.")] = 0,
    dtype: Dtype = None,
    device: Device = "auto",
    device_map: DeviceMap = None,
    plots: Plots = True,
    overwrite: Overwrite = False,
    threads: Threads = None,
    quiet: Quiet = False,
) -> None:
    """Skip each decoder layer in turn; accuracy and gold-answer log-prob against the unablated model."""
    apply_threads(threads)
    _check_placement(device, device_map)
    from frankenlab.probe import AblationSettings, parse_layers, run_ablation
    from frankenlab.probe.run import describe_model

    specs = [s.strip() for t in tasks for s in t.split(",") if s.strip()]
    adapter, _, _ = describe_model(model)
    settings = AblationSettings(layers=parse_layers(layers, adapter.n_llm_layers), batch_size=batch_size,
                                generate=not score_only, system_prompt=system_prompt, seed=seed,
                                **({"max_new_tokens": max_new_tokens} if max_new_tokens else {}))
    with _progress("probe ablate", "items", quiet) as (con, report):
        res = run_ablation(model, specs, out, settings, limit=limit, dtype=dtype, device=device,
                           device_map=device_map, overwrite=overwrite, plots=plots, progress=report)
    if quiet:
        return
    con.print(ablation_console_table(res.layers))
    _summary(con, res.failed, out, "ablation_layers.csv/.parquet, ablation_items.jsonl, manifest.json, plots/")


def _num(x: object, fmt: str) -> str:
    import pandas as pd

    return "–" if pd.isna(x) else format(x, fmt)


def ablation_console_table(layers: pd.DataFrame) -> Table:
    """Per task and layer: accuracy, the paired drop from the baseline, McNemar, degenerate stops, gold log-prob."""
    table = Table(title="Layer ablation: drop = baseline − skipped on the same items (95 % intervals)")
    for col in ("task", "layer", "n", "accuracy [CI]", "drop [paired CI]", "p McNemar", "discordant", "degenerate",
                "gold log-prob"):
        table.add_column(col, justify="left" if col == "task" else "right")
    tasks = list(dict.fromkeys(layers["task"]))
    for t_i, task in enumerate(tasks):
        rows = layers[layers["task"] == task]
        for r_i, (_, r) in enumerate(rows.iterrows()):
            table.add_row(
                str(task), "baseline" if int(r["layer"]) == -1 else str(int(r["layer"])), str(r["n"]),
                f"{_num(r['accuracy'], '.2f')} [{_num(r['accuracy_low'], '.2f')}, {_num(r['accuracy_high'], '.2f')}]",
                f"{_num(r['accuracy_drop'], '+.2f')} [{_num(r['accuracy_drop_low'], '+.2f')}, "
                f"{_num(r['accuracy_drop_high'], '+.2f')}]",
                _num(r["p_mcnemar"], ".3g"), _num(r["n_discordant"], "d"), str(int(r["n_stopped_degenerate"])),
                _num(r["gold_logprob"], ".3f"), end_section=r_i == len(rows) - 1 and t_i < len(tasks) - 1)
    return table


@probe_app.command("attention")
def attention_cmd(
    in_: Annotated[str, typer.Option("--in", help="IN checkpoint (supervised cold start).")],
    rl: Annotated[str, typer.Option("--rl", help="RL checkpoint (IN after RL).")],
    out: Out,
    pairs: Annotated[Path | None, typer.Option("--pairs", help="Probe pairs JSONL (target image + prompt).")] = None,
    tasks: Annotated[list[str] | None, typer.Option("--tasks", help="Task files with images.")] = None,
    shared: Annotated[str, typer.Option("--shared-response", help="Teacher-forced response shared by both models: "
                                                                  "gold or IN.")] = "gold",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Prompts per generate batch.")] = 8,
    max_new_tokens: MaxNew = None,
    system_prompt: System = None,
    limit: Limit = None,
    dtype: Dtype = None,
    device: Device = "auto",
    device_map: DeviceMap = None,
    plots: Plots = True,
    overwrite: Overwrite = False,
    threads: Threads = None,
    quiet: Quiet = False,
) -> None:
    """Share of response-token attention on image tokens per layer and head, IN vs RL, shared and own responses."""
    apply_threads(threads)
    _check_placement(device, device_map)
    from frankenlab.probe import AttentionProbeSettings, run_attention_probe

    specs = [s.strip() for t in (tasks or []) for s in t.split(",") if s.strip()] or None
    settings = AttentionProbeSettings(shared_response=shared, batch_size=batch_size, system_prompt=system_prompt,
                                      **({"max_new_tokens": max_new_tokens} if max_new_tokens else {}))
    with _progress("probe attention", "model × item", quiet) as (con, report):
        res = run_attention_probe(in_, rl, out, settings, pairs=pairs, tasks=specs, limit=limit, dtype=dtype,
                                  device=device, device_map=device_map, overwrite=overwrite, plots=plots,
                                  progress=report)
    if quiet:
        return
    for mode, g in res.diff.groupby("mode", sort=False):
        best = g.sort_values("diff", ascending=False).head(3)
        shown = ", ".join(f"layer {int(r['layer'])}: {r['diff']:+.3f}" for _, r in best.iterrows())
        con.print(f"{mode}: largest RL − IN vision share {shown}")
    _summary(con, res.failed, out, "attention_layers/heads/diff .csv+.parquet, attention_items.jsonl, "
                                   "manifest.json, plots/")


@pairs_app.command("make")
def pairs_make_cmd(
    out: Annotated[Path, typer.Option("--out", help="Directory for pairs.jsonl and images/.")],
    n: Annotated[int, typer.Option("--n", help="Pairs per task (counting, ocr, grounding, recognition).")] = 50,
    seed: Annotated[int, typer.Option("--seed", help="Seed; the same seed writes the same set.")] = 0,
    overwrite: Overwrite = False,
    threads: Threads = None,
) -> None:
    """Write a built-in probe pair set drawn procedurally (deterministic in the seed, offline)."""
    apply_threads(threads)
    from frankenlab.io import atomic_dir
    from frankenlab.miniworld.probe_pairs import write_probe_pairs

    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_probe_pairs(tmp, n_per_task=n, seed=seed)
    typer.echo(f"wrote {4 * n} pairs to {out / 'pairs.jsonl'}")


# --- probe kl (begin) ---
@probe_app.command("kl")
def kl_cmd(
    in_: Annotated[str, typer.Option("--in", help="IN checkpoint (supervised cold start).")],
    rl: Annotated[str, typer.Option("--rl", help="RL checkpoint (IN after RL).")],
    tasks: Annotated[list[str], typer.Option("--tasks", help="Task file (.jsonl/.parquet), gsm8k, math500 or "
                                                             "miniworld[:family]; repeat or comma-separate.")],
    out: Out,
    response: Annotated[str, typer.Option("--response", help="Shared response both models are teacher-forced on: "
                                                             "rl (RL's greedy answer), in, or gold.")] = "rl",
    top: Annotated[int, typer.Option("--top", min=0, help="Rows of kl_top.csv (largest KL(RL‖IN)).")] = 50,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Items per generate batch and "
                                                                        "forward.")] = 4,
    max_new_tokens: MaxNew = None,
    system_prompt: System = None,
    limit: Limit = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for generated tasks and the bootstrap.")] = 0,
    dtype: Dtype = None,
    device: Device = "auto",
    device_map: DeviceMap = None,
    threads: Threads = None,
    plots: Plots = True,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Per-token KL between IN and RL on one shared response, by position class (prompt, image, reasoning, answer)."""
    apply_threads(threads)
    _check_placement(device, device_map)
    from frankenlab.errors import ProbeError
    from frankenlab.probe.kl import KLSettings, run_kl

    if response not in ("rl", "in", "gold"):
        raise ProbeError(f"--response must be rl, in or gold, got {response!r}.")
    specs = [s.strip() for t in tasks for s in t.split(",") if s.strip()]
    settings = KLSettings(response=response, top=top, batch_size=batch_size, system_prompt=system_prompt, seed=seed,
                          **({"max_new_tokens": max_new_tokens} if max_new_tokens else {}))
    with _progress("probe kl", "items", quiet) as (con, report):
        res = run_kl(in_, rl, specs, out, settings, limit=limit, dtype=dtype, device=device, device_map=device_map,
                     overwrite=overwrite, plots=plots, progress=report)
    if quiet:
        return
    for _, r in res.classes.iterrows():
        con.print(f"{r['class']:>9}: KL(RL‖IN) {r['kl_rl_in_mean']:.4g} [{r['kl_rl_in_low']:.4g}, "
                  f"{r['kl_rl_in_high']:.4g}], KL(IN‖RL) {r['kl_in_rl_mean']:.4g} ({int(r['n_tokens'])} tokens, "
                  f"{int(r['n_items'])} items)")
    _summary(con, res.failed, out, "kl_tokens/classes/items/top .csv+.parquet, kl_items.jsonl, manifest.json, "
                                   "plots/")
# --- probe kl (end) ---


# --- probe lens (begin) ---


@probe_app.command("lens")
def lens_cmd(
    tasks: Annotated[list[str], typer.Option("--tasks", help="Task file (.jsonl/.parquet), gsm8k, math500 or "
                                                             "miniworld; repeat or comma-separate.")],
    out: Out,
    model: Annotated[str | None, typer.Argument(help="One checkpoint: directory or hub id (or give --in and "
                                                     "--rl).")] = None,
    in_: Annotated[str | None, typer.Option("--in", help="IN checkpoint of a pair (with --rl).")] = None,
    rl: Annotated[str | None, typer.Option("--rl", help="RL checkpoint of a pair (with --in).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Prompts per forward pass.")] = 8,
    system_prompt: System = None,
    limit: Limit = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for generated tasks and the bootstrap.")] = 0,
    dtype: Dtype = None,
    device: Device = "auto",
    device_map: DeviceMap = None,
    threads: Threads = None,
    plots: Plots = True,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
) -> None:
    """Logit lens at the last prompt token: per layer, the gold first token's log-prob, rank and top-1 share,
    and the layer where it emerges (one model, or IN vs RL paired)."""
    apply_threads(threads)
    _check_placement(device, device_map)
    from frankenlab.probe.lens import LensSettings, run_lens, summary_lines

    specs = [s.strip() for t in tasks for s in t.split(",") if s.strip()]
    settings = LensSettings(batch_size=batch_size, system_prompt=system_prompt, seed=seed)
    with _progress("probe lens", "model × item", quiet) as (con, report):
        res = run_lens(specs, out, settings, model=model, in_model=in_, rl_model=rl, limit=limit, dtype=dtype,
                       device=device, device_map=device_map, overwrite=overwrite, plots=plots, progress=report)
    if quiet:
        return
    for line in summary_lines(res):
        con.print(line)
    _summary(con, res.failed, out, "lens_layers/items" + ("/pair" if res.pair is not None else "")
             + " .csv+.parquet, lens_items.jsonl, manifest.json, plots/")
# --- probe lens (end) ---
