"""`frankenlab eval MODEL... --tasks ... --out DIR`: options → one `evaluate` call, a progress bar, a table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from frankenlab.cli.options import Threads


def eval_cmd(
    models: Annotated[list[str], typer.Argument(help="Checkpoint directories or hub ids, optionally LABEL=PATH.")],
    tasks: Annotated[str, typer.Option("--tasks", help="Comma-separated .jsonl/.parquet paths or built-ins "
                                                       "(mathvista, mathverse, math500, gsm8k); NAME=PATH names one.")],
    out: Annotated[Path, typer.Option("--out", help="Output directory (new, or an earlier eval output to resume).")],
    settings: Annotated[str, typer.Option("--settings", help="Image-item variants: image, black, described.")]
    = "image,black,described",
    limit: Annotated[int | None, typer.Option("--limit", help="Items per task (seeded subsample).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the subsample.")] = 0,
    model_label: Annotated[list[str] | None, typer.Option("--model-label", help="Label per model, in order "
                                                                                "(default: directory name).")] = None,
    backend: Annotated[str, typer.Option("--backend", help="auto (vLLM with a GPU when installed), hf or vllm.")]
    = "auto",
    system_prompt: Annotated[str | None, typer.Option("--system-prompt", help="System prompt for every model "
                                                                             "(default: none).")] = None,
    prompt_suffix: Annotated[str, typer.Option("--prompt-suffix", help="Appended to every question.")] = "",
    max_new_tokens: Annotated[int | None, typer.Option(
        "--max-new-tokens", min=1, help="Answer length limit for every item (default: per item kind, perception 256, "
        "reasoning 1024).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Prompts per generate call.")] = 16,
    do_sample: Annotated[bool, typer.Option("--do-sample/--greedy", help="Sample the main answer too (default: "
                                            "greedy).")] = False,
    samples: Annotated[int, typer.Option("--samples", min=0, help="Also draw N sampled answers per item and "
                                         "setting and report pass@k (passk.csv); the greedy pass is unchanged.")] = 0,
    temperature: Annotated[float, typer.Option("--temperature", help="Temperature of --samples and --do-sample "
                                               "(0 only with --samples 1).")] = 1.0,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus of --samples and --do-sample.")] = 1.0,
    gen_seed: Annotated[int, typer.Option("--gen-seed", help="Sampling seed (--samples: sample i of an item is "
                                          "seeded from it, the item and i).")] = 0,
    use_generation_config: Annotated[bool, typer.Option("--use-generation-config", help="Apply each checkpoint's "
                                                        "generation_config.json (always reported).")] = False,
    dtype: Annotated[str | None, typer.Option("--dtype", help="bf16, fp16, fp32 (default: as stored).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N.")] = "auto",
    device_map: Annotated[str | None, typer.Option("--device-map", help="HF only: auto splits each model across "
                                                   "the visible GPUs (and CPU) with accelerate, for a model larger "
                                                   "than one GPU; needs --device auto. Answers do not depend on "
                                                   "it.")] = None,
    tensor_parallel_size: Annotated[int, typer.Option("--tensor-parallel-size", help="vLLM only.")] = 1,
    timeout: Annotated[float | None, typer.Option("--timeout", help="HF: seconds per generation batch; items of a "
                                                                    "batch that hits it are recorded as timeouts.")]
    = None,
    descriptions: Annotated[Path | None, typer.Option("--descriptions", help="JSONL of {id, description} (e.g. an "
                                                      "earlier run's descriptions.jsonl).")] = None,
    describer_url: Annotated[str | None, typer.Option("--describer-url", help="OpenAI-compatible API base URL.")]
    = None,
    describer_model: Annotated[str | None, typer.Option("--describer-model", help="Model name at that URL.")] = None,
    describer_local: Annotated[str | None, typer.Option("--describer-local", help="Local checkpoint that writes "
                                                                                  "the descriptions.")] = None,
    description_cache: Annotated[Path | None, typer.Option("--description-cache", help="Describer cache file, "
                                                           "shared across runs.")] = None,
    judge_url: Annotated[str | None, typer.Option("--judge-url", help="OpenAI-compatible API base URL of an LLM "
                                                                      "judge (default: rule-based grading).")] = None,
    judge_model: Annotated[str | None, typer.Option("--judge-model")] = None,
    judge_cache: Annotated[Path | None, typer.Option("--judge-cache", help="Judge cache file "
                                                                           "(default: OUT/judge-cache.jsonl).")] = None,
    api_key_env: Annotated[str, typer.Option("--api-key-env", help="Environment variable holding the endpoints' "
                                                                   "API key, if any.")] = "OPENAI_API_KEY",
    n_boot: Annotated[int, typer.Option("--n-boot", help="Bootstrap resamples.")] = 2000,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Redo items recorded as failed.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Discard an earlier eval in OUT.")] = False,
    plots: Annotated[bool, typer.Option("--plots/--no-plots")] = True,
    threads: Threads = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or tables.")] = False,
) -> None:
    """Accuracy per task and setting, M_vis / M_v2r / M_rea with 95 % intervals, paired model comparisons."""
    from frankenlab.errors import EvalError
    from frankenlab.eval import Endpoint, EndpointDescriber, LLMJudge, LocalDescriber, ProgressEvent, evaluate
    from frankenlab.eval.models import check_backend_device_map, label_models
    from frankenlab.runtime.generate import GenerationSettings

    if device_map is not None:  # before any model or task is read
        from frankenlab.runtime.devices import check_device_map

        if device_map.strip().lower() != "auto":
            raise EvalError(f"--device-map {device_map!r} is not understood; the only value is auto (or omit it).")
        check_backend_device_map(backend, device_map)
        check_device_map(device_map, device)

    # greedy main answers record neutral sampling fields, so that --samples' temperature / top-p / seed can
    # change between runs into one --out without the greedy records looking as if drawn otherwise
    generation = GenerationSettings(max_new_tokens=max_new_tokens, do_sample=do_sample,
                                    temperature=temperature if do_sample else 1.0, top_p=top_p if do_sample else 1.0,
                                    seed=gen_seed if do_sample else 0, batch_size=batch_size,
                                    system_prompt=system_prompt)
    sources = label_models(models, model_label)
    chosen = [x for x in (descriptions, describer_url or describer_model, describer_local) if x]
    if len(chosen) > 1:
        raise EvalError("choose one description source: --descriptions, --describer-url/--describer-model, or "
                        "--describer-local.")
    desc_source: Any = descriptions
    if describer_url or describer_model:
        if not (describer_url and describer_model):
            raise EvalError("--describer-url and --describer-model go together.")
        desc_source = EndpointDescriber(Endpoint(describer_url, describer_model, api_key_env),
                                        cache_path=description_cache)
    elif describer_local:
        desc_source = LocalDescriber.from_checkpoint(
            describer_local, settings=GenerationSettings(max_new_tokens=256, batch_size=batch_size),
            dtype=dtype, device=device if device != "auto" else ("cuda" if _cuda() else "cpu"),
            cache_path=description_cache)
    judge = None
    if judge_url or judge_model:
        if not (judge_url and judge_model):
            raise EvalError("--judge-url and --judge-model go together.")
        judge = LLMJudge(Endpoint(judge_url, judge_model, api_key_env),
                         cache_path=judge_cache or out / "judge-cache.jsonl")

    con = Console(stderr=True, quiet=quiet)
    with Progress(TextColumn("[bold]{task.fields[label]}[/bold]"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.description}"),
                  console=con, transient=True, disable=quiet or not con.is_terminal) as bar:
        bars: dict[str | None, Any] = {}

        def on_progress(ev: ProgressEvent) -> None:
            name = ev.model or "describe"
            if ev.kind.startswith("sample"):
                name += " samples"
            if name not in bars:
                bars[name] = bar.add_task("", total=ev.total, label=name)
            desc = ""
            if ev.record is not None:
                r = ev.record
                desc = f"{r['task']}/{r['setting']}" + (" [red]failed[/red]" if r.get("error") else "")
            bar.update(bars[name], total=ev.total, completed=ev.done, description=desc)

        from frankenlab.runtime.threads import torch_threads

        with torch_threads(threads):
            res = evaluate(sources, tasks, settings, out, generation=generation, limit=limit, seed=seed,
                           system_prompt=system_prompt, prompt_suffix=prompt_suffix,
                           use_generation_config=use_generation_config, backend=backend, dtype=dtype, device=device,
                           tensor_parallel_size=tensor_parallel_size, timeout_s=timeout, n_boot=n_boot,
                           retry_failed=retry_failed, plots=plots, descriptions=desc_source, judge=judge,
                           overwrite=overwrite, progress=on_progress, samples=samples,
                           sample_temperature=temperature, sample_top_p=top_p, sample_seed=gen_seed,
                           **({"device_map": "auto"} if device_map is not None else {}))
    if quiet:
        return
    table = Table(title="Accuracy (95 % Wilson CI; failed items count as wrong)")
    for col in ("model", "task", "setting", "n", "accuracy", "95 % CI", "failed"):
        table.add_column(col, justify="left" if col in ("model", "task", "setting") else "right")
    for _, r in res.summary.iterrows():
        table.add_row(str(r["model"]), str(r["task"]), str(r["setting"]), str(r["n"]), _pct(r["accuracy"]),
                      f"{_pct(r['ci_low'])}–{_pct(r['ci_high'])}", str(r["n_failed"]))
    con.print(table)
    pooled = res.metrics[res.metrics["task"] == "all"]
    if not pooled.empty:
        table = Table(title="Paper metrics over all tasks (95 % Wilson CI)")
        for col in ("model", "metric", "n", "value", "95 % CI", "n11 / n10 / n01 / n00", "failed"):
            table.add_column(col, justify="left" if col in ("model", "metric") else "right")
        for _, r in pooled.iterrows():
            counts = "–" if r["metric"] == "M_rea" else f"{r['n11']} / {r['n10']} / {r['n01']} / {r['n00']}"
            table.add_row(str(r["model"]), str(r["metric"]), str(r["n"]), _pct(r["value"]),
                          f"{_pct(r['ci_low'])}–{_pct(r['ci_high'])}", counts, str(r["n_failed"]))
        con.print(table)
    if res.passk is not None:
        for (model, task, setting), rows in res.passk.groupby(["model", "task", "setting"], sort=False):
            ks = "  ".join(f"@{r.k} {_pct(r.pass_at_k)} ({_pct(r.low)}–{_pct(r.high)})" for r in rows.itertuples())
            con.print(f"pass@k {model} {task}/{setting} (n={rows['n'].iloc[0]}): {ks}")
        con.print(f"{res.n_sample_new} new sample(s), {res.n_sample_records} in all, {res.n_sample_failed} failed "
                  f"(samples.jsonl, passk.csv)")
    con.print(f"{res.n_new} new record(s), {res.n_records} in all, {res.n_failed} failed; results in [bold]{out}"
              "[/bold] (items.jsonl, summary/metrics/comparisons .csv+.parquet, plots, manifest.json)")


def _cuda() -> bool:
    from frankenlab.runtime.vllm import cuda_available

    return cuda_available()


def _pct(x: float) -> str:
    return "–" if x is None or x != x else f"{100 * x:.1f}%"
