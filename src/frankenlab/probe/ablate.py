"""`probe ablate`: skip one decoder layer at a time and measure math accuracy and gold log-prob.

Each row of a batch is one (item, variant): variant −1 is the unablated model, variant i skips
decoder layer i (via `hooks.skip_layers` with a per-row plan), so the layers of several items are
ablated inside one batched `generate`. The teacher-forced score — the mean log-probability of
the gold answer's tokens after the prompt — needs no generation; one forward per item covers all
variants (same prompt, no padding).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from frankenlab.errors import FrankenlabError, ProbeError
from frankenlab.grading import grade
from frankenlab.probe.hooks import skip_layers
from frankenlab.probe.run import (
    ProbeModel,
    ProgressFn,
    append_tokens,
    describe_model,
    finish,
    open_model,
    repeat_rows,
)
from frankenlab.probe.store import ItemStore
from frankenlab.probe.tasks import MathItem, load_math_tasks
from frankenlab.runtime.generate import GenerationSettings, HFBackend, Prompt, encode, to_model, tokenizer_of
from frankenlab.stats import bootstrap_mean_ci, wilson_interval

__all__ = ["ABLATION_COLUMNS", "AblationResult", "AblationSettings", "ablate_items", "ablation_table",
           "gold_logprobs", "run_ablation"]

log = logging.getLogger(__name__)
NAME = "ablation"
ABLATION_COLUMNS = ["task", "layer", "unified_layer", "n", "n_failed", "accuracy", "accuracy_low", "accuracy_high",
                    "gold_logprob", "gold_logprob_low", "gold_logprob_high", "accuracy_drop"]


class AblationSettings(BaseModel):
    """Everything that changes an ablation result (recorded in the manifest and the resume key)."""

    model_config = ConfigDict(frozen=True)

    layers: tuple[int, ...] | None = Field(None, description="Decoder layers to skip one at a time; None = all.")
    max_new_tokens: int = Field(256, ge=1, description="Greedy answer length limit.")
    batch_size: int = Field(16, ge=1, description="Rows (item × variant) per generate batch.")
    generate: bool = Field(True, description="Generate and grade answers; False = teacher-forced score only.")
    system_prompt: str | None = Field(None, description="System prompt for every question.")
    answer_template: str = Field("{answer}", description="Gold response scored by the teacher-forced log-prob.")
    n_boot: int = Field(1000, ge=1, description="Bootstrap resamples for the log-prob interval.")
    seed: int = Field(0, description="Seed of the bootstrap.")


@dataclass
class AblationResult:
    layers: pd.DataFrame
    items: list[dict[str, Any]]
    failed: list[dict[str, Any]]
    manifest: dict[str, Any]
    out_dir: Path | None


def _prompt(item: MathItem) -> Prompt:
    if item.image is None:
        return Prompt(item.question)
    with Image.open(item.image) as im:
        return Prompt(item.question, im.convert("RGB"))


def gold_logprobs(model: Any, processor: Any, adapter: Any, prompt: Prompt, gold: str, variants: Sequence[int],
                  settings: AblationSettings) -> list[float]:
    """Mean log p(gold token | prompt, earlier gold tokens) for each variant (−1: none skipped)."""
    tok = tokenizer_of(processor)
    gold_ids = tok(settings.answer_template.format(answer=gold), add_special_tokens=False)["input_ids"]
    if not gold_ids:
        raise ProbeError(f"gold answer {gold!r} has no tokens.")
    single = to_model(model, encode(processor, [prompt], settings.system_prompt))
    out: list[float] = []
    for start in range(0, len(variants), settings.batch_size):
        chunk = list(variants[start:start + settings.batch_size])
        inputs = append_tokens(repeat_rows([single] * len(chunk)), gold_ids)
        plan = {v: [r for r, w in enumerate(chunk) if w == v] for v in set(chunk) if v >= 0}
        with torch.inference_mode(), skip_layers(model, adapter, plan):
            logits = model(**inputs, use_cache=False, logits_to_keep=len(gold_ids) + 1).logits[:, :-1]
        logp = torch.log_softmax(logits.float(), dim=-1)
        target = torch.tensor(gold_ids, device=logp.device).expand(len(chunk), -1)
        out += logp.gather(-1, target[..., None])[..., 0].mean(-1).tolist()
    return out


def ablate_items(model: Any, processor: Any, adapter: Any, items: Sequence[MathItem], variants: Sequence[int],
                 settings: AblationSettings) -> list[dict[str, Any]]:
    """Per item: responses, correctness and gold log-prob for every variant (keys str(variant))."""
    prompts = [_prompt(it) for it in items]
    results: list[dict[str, Any]] = [{"responses": {}, "correct": {}, "gold_logprob": {}} for _ in items]
    if settings.generate:
        rows = [(i, v) for i in range(len(items)) for v in variants]
        backend = HFBackend(model, processor, settings=GenerationSettings(
            max_new_tokens=settings.max_new_tokens, system_prompt=settings.system_prompt, batch_size=len(rows)))
        for start in range(0, len(rows), settings.batch_size):
            chunk = rows[start:start + settings.batch_size]
            plan = {v: [r for r, (_, w) in enumerate(chunk) if w == v] for v in {w for _, w in chunk} if v >= 0}
            with skip_layers(model, adapter, plan):
                texts = backend.generate([prompts[i] for i, _ in chunk])
            for (i, v), text in zip(chunk, texts):
                results[i]["responses"][str(v)] = text
                results[i]["correct"][str(v)] = bool(grade(text, items[i].answer).correct)
    for i, it in enumerate(items):
        scores = gold_logprobs(model, processor, adapter, prompts[i], it.answer, variants, settings)
        results[i]["gold_logprob"] = {str(v): s for v, s in zip(variants, scores)}
    return results


def ablation_table(records: list[dict[str, Any]], adapter: Any, variants: Sequence[int],
                   settings: AblationSettings) -> pd.DataFrame:
    ok = [r for r in records if r.get("status") == "ok"]
    rows = []
    tasks = sorted({r["task"] for r in records})
    for task in tasks + (["all"] if len(tasks) > 1 else []):
        items = [r for r in ok if task in ("all", r["task"])]
        n_failed = sum(1 for r in records if r.get("status") != "ok" and task in ("all", r["task"]))
        base_acc = np.nan
        for v in variants:
            k = str(v)
            acc = low = high = np.nan
            if settings.generate and items:
                hits = sum(bool(r["correct"][k]) for r in items)
                acc, (low, high) = hits / len(items), wilson_interval(hits, len(items))
            lp = [float(r["gold_logprob"][k]) for r in items]
            m = bootstrap_mean_ci(lp, n_boot=settings.n_boot, seed=settings.seed) if lp else (np.nan,) * 3
            if v == -1:
                base_acc = acc
            rows.append({"task": task, "layer": v, "unified_layer": adapter.unified_index("llm", v) if v >= 0 else None,
                         "n": len(items), "n_failed": n_failed, "accuracy": acc, "accuracy_low": low,
                         "accuracy_high": high, "gold_logprob": m[0], "gold_logprob_low": m[1],
                         "gold_logprob_high": m[2], "accuracy_drop": base_acc - acc if v >= 0 else 0.0})
    df = pd.DataFrame(rows, columns=ABLATION_COLUMNS)
    df["unified_layer"] = df["unified_layer"].astype("Int64")
    return df


def run_ablation(model: str | os.PathLike[str] | ProbeModel, tasks: Sequence[str], out: str | os.PathLike[str],
                 settings: AblationSettings | None = None, *, limit: int | None = None, dtype: str | None = None,
                 device: str = "cpu", overwrite: bool = False, plots: bool = True,
                 progress: ProgressFn | None = None) -> AblationResult:
    """Ablate every decoder layer (plus the baseline) over the tasks, resumably, and write DIR."""
    from frankenlab.manifest import settings_key
    from frankenlab.probe.kv_swap import parse_layers
    from frankenlab.probe.plots import ablation_plots

    settings = settings or AblationSettings()
    items, sources = load_math_tasks(tasks, limit=limit, seed=settings.seed)
    adapter, fingerprint, path = describe_model(model)
    layers = parse_layers(",".join(map(str, settings.layers)) if settings.layers else None, adapter.n_llm_layers)
    variants = [-1, *(range(adapter.n_llm_layers) if layers is None else layers)]
    inputs = {"model": fingerprint, **sources}
    key = settings_key({"settings": settings.model_dump(), "inputs": inputs, "limit": limit, "dtype": dtype})
    out_dir = Path(out)
    store = ItemStore(out_dir, NAME, key, overwrite=overwrite,
                      final_names=("ablation_layers.csv", "ablation_layers.parquet"))
    todo = [it for it in items if it.key not in store.done]
    done = len(items) - len(todo)
    if progress is not None:
        progress(done, len(items))
    if todo:  # a finished run is only re-tabulated: no weights loaded
        pm = model if isinstance(model, ProbeModel) else open_model(model, dtype=dtype, device=device)
    per_group = max(1, settings.batch_size // len(variants))
    for start in range(0, len(todo), per_group):
        group = todo[start:start + per_group]
        results: list[Any]
        try:
            results = ablate_items(pm.model, pm.processor, pm.adapter, group, variants, settings)
        except (FrankenlabError, RuntimeError, ValueError, OSError) as exc:
            if len(group) == 1:
                results = [exc]
            else:  # find the culprit: retry the group's items one by one
                results = []
                for it in group:
                    try:
                        results += ablate_items(pm.model, pm.processor, pm.adapter, [it], variants, settings)
                    except (FrankenlabError, RuntimeError, ValueError, OSError) as one:
                        results.append(one)
        for it, res in zip(group, results):
            record: dict[str, Any] = {"key": it.key, "id": it.id, "task": it.task, "answer": it.answer}
            if isinstance(res, BaseException):
                log.warning("item %s failed: %s", it.key, res)
                record.update(status="failed", error=f"{type(res).__name__}: {res}")
            else:
                record.update(status="ok", **res)
            store.add(record)
        done += len(group)
        if progress is not None:
            progress(done, len(items))
    wanted = {it.key for it in items}
    records = [r for r in store.records() if r["key"] in wanted]
    table = ablation_table(records, adapter, variants, settings)
    failed = [r for r in records if r["status"] != "ok"]
    manifest = finish(
        out_dir, NAME, key, {"ablation_layers": (table, ABLATION_COLUMNS)},
        manifest_args={**settings.model_dump(), "model": path, "tasks": list(tasks), "limit": limit},
        inputs=inputs,
        extra={"n_items": len(items), "n_ok": len(records) - len(failed), "n_failed": len(failed),
               "failed": [{"id": r["key"], "error": r["error"]} for r in failed],
               "skip": "decoder layer output := its input (attention and MLP contribute zero; residual passes)",
               "layer": "-1 = unablated baseline; unified_layer = layer + 1"},
        plots=(lambda d: ablation_plots(table, d)) if plots else None,
    )
    return AblationResult(table, [r for r in records if r["status"] == "ok"], failed, manifest, out_dir)
