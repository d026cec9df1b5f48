"""`probe ablate`: skip one decoder layer at a time and measure math accuracy and gold log-prob.

Each row of a batch is one (item, variant): variant −1 is the unablated model, variant i skips
decoder layer i (via `hooks.skip_layers` with a per-row plan), so the layers of several items are
ablated inside one batched `generate`. The teacher-forced score — the mean log-probability of
the gold answer's tokens after the prompt — needs no generation; one forward per item covers all
variants (same prompt, no padding).

Decoding is eval's (greedy, the checkpoint's generation_config neutralised, answer length per item
kind unless given), plus one per-row stop: a row whose answer has run off the rails — the same token
or short n-gram repeated `stop_degenerate` times at its end (a skipped layer 0 writes digits until the
limit) — ends there (`stopped_degenerate`, per item and variant; counted per layer). Rows that are
fine decode exactly as without it.

Per layer, against the baseline on the same items: the accuracy drop with a paired bootstrap interval
and the exact McNemar p-value over the discordant items.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import StoppingCriteria, StoppingCriteriaList

from frankenlab.arch.base import Adapter
from frankenlab.errors import FrankenlabError, ProbeError
from frankenlab.grading import grade
from frankenlab.probe.hooks import skip_layers
from frankenlab.probe.run import (
    ProbeModel,
    ProgressFn,
    append_tokens,
    describe_model,
    finish,
    load_dtype,
    open_model,
    probe_decoding,
    repeat_rows,
)
from frankenlab.probe.store import ItemStore
from frankenlab.probe.tasks import item_kind, load_math_tasks
from frankenlab.runtime.generate import (
    GenerationSettings,
    HFBackend,
    Prompt,
    encode,
    resolve_max_new_tokens,
    to_model,
    tokenizer_of,
    without_checkpoint_generation_config,
)
from frankenlab.stats import bootstrap_mean_ci, mcnemar_exact, paired_bootstrap_diff, two_by_two, wilson_interval
from frankenlab.tasks import TaskItem

__all__ = ["ABLATION_COLUMNS", "AblationResult", "AblationSettings", "DegenerateRepetition", "ablate_items",
           "ablation_table", "gold_logprobs", "run_ablation"]

log = logging.getLogger(__name__)
NAME = "ablation"
ABLATION_COLUMNS = ["task", "layer", "unified_layer", "n", "n_failed", "accuracy", "accuracy_low", "accuracy_high",
                    "gold_logprob", "gold_logprob_low", "gold_logprob_high", "accuracy_drop",
                    "accuracy_drop_low", "accuracy_drop_high", "p_mcnemar", "n_discordant", "n_stopped_degenerate"]
#: Longest repeated n-gram the degenerate-repetition stop looks for.
MAX_PERIOD = 4


class AblationSettings(BaseModel):
    """Everything that changes an ablation result (recorded in the manifest and the resume key)."""

    model_config = ConfigDict(frozen=True)

    layers: tuple[int, ...] | None = Field(None, description="Decoder layers to skip one at a time; None = all.")
    max_new_tokens: int | None = Field(None, ge=1, description="Greedy answer length limit; None = the per-kind "
                                       "default (runtime.generate.DEFAULT_MAX_NEW_TOKENS).")
    stop_degenerate: int | None = Field(
        16, ge=2, description="End a row whose answer ends in one token or n-gram (up to 4 tokens) repeated this "
        "many times; None = never.")
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


class DegenerateRepetition(StoppingCriteria):
    """Per-row stop for answers stuck in a loop: the generated tokens end in a period-p pattern (p ≤
    ``max_period``) repeated ``repeats`` times. ``fired`` marks the rows this criterion ended; a row that
    already ended on a stop token is never marked (its padding repeats too)."""

    def __init__(self, prompt_len: int, repeats: int, stop_ids: Sequence[int], max_period: int = MAX_PERIOD) -> None:
        if repeats < 2 or max_period < 1:
            raise ProbeError(f"degenerate stop needs repeats >= 2 and max_period >= 1, got {repeats}, {max_period}.")
        self.prompt_len = prompt_len
        self.repeats = repeats
        self.max_period = max_period
        self.stop_ids = list(stop_ids)
        self.fired: torch.Tensor | None = None
        self._ended: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: Any = None, **kwargs: Any) -> torch.Tensor:
        rows = input_ids.shape[0]
        if self.fired is None or self._ended is None:
            self.fired = torch.zeros(rows, dtype=torch.bool, device=input_ids.device)
            self._ended = torch.zeros(rows, dtype=torch.bool, device=input_ids.device)
        new = input_ids[:, self.prompt_len:]
        if new.shape[1] == 0:
            return self.fired.clone()
        stops = torch.tensor(self.stop_ids, dtype=new.dtype, device=new.device)
        self._ended |= torch.isin(new[:, -1], stops)
        looping = torch.zeros_like(self.fired)
        for period in range(1, self.max_period + 1):
            span = period * self.repeats
            if new.shape[1] < span:
                break
            tail = new[:, -span:]
            looping |= (tail[:, period:] == tail[:, :-period]).all(dim=-1)
        self.fired |= looping & ~self._ended
        return self.fired.clone()




def gold_logprobs(model: Any, processor: Any, adapter: Adapter, prompt: Prompt, gold: str, variants: Sequence[int],
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



def _generate_rows(model: Any, processor: Any, prompts: Sequence[Prompt], kwargs: dict[str, Any],
                   settings: AblationSettings) -> tuple[list[str], list[bool]]:
    """Greedy answers of one batch (layer plan already installed) and which rows the degenerate stop ended."""
    tok = tokenizer_of(processor)
    inputs = to_model(model, encode(processor, prompts, settings.system_prompt))
    prompt_len = int(inputs["input_ids"].shape[1])
    extra: dict[str, Any] = {}
    crit = None
    if settings.stop_degenerate is not None:
        crit = DegenerateRepetition(prompt_len, settings.stop_degenerate, kwargs["eos_token_id"])
        extra["stopping_criteria"] = StoppingCriteriaList([crit])
    with torch.inference_mode(), without_checkpoint_generation_config(model):
        seq = model.generate(**inputs, **kwargs, **extra)
    texts = [t.strip() for t in tok.batch_decode(seq[:, prompt_len:], skip_special_tokens=True)]
    fired = crit.fired.tolist() if crit is not None and crit.fired is not None else [False] * len(prompts)
    return texts, [bool(f) for f in fired]


def ablate_items(model: Any, processor: Any, adapter: Adapter, items: Sequence[TaskItem], variants: Sequence[int],
                 settings: AblationSettings) -> list[dict[str, Any]]:
    """Per item: responses, correctness, degenerate stops and gold log-prob for every variant (keys str(variant)).

    Rows (item × variant) are batched within one item kind, so each batch has one answer length.
    """
    prompts = [Prompt.of(it) for it in items]
    kinds = [item_kind(it) for it in items]
    results: list[dict[str, Any]] = [
        {"kind": k, "max_new_tokens": resolve_max_new_tokens(settings.max_new_tokens, k), "responses": {},
         "correct": {}, "stopped_degenerate": {}, "gold_logprob": {}} for k in kinds]
    if settings.generate:
        for kind in sorted(set(kinds)):
            rows = [(i, v) for i in range(len(items)) if kinds[i] == kind for v in variants]
            backend = HFBackend(model, processor, settings=GenerationSettings(
                max_new_tokens=resolve_max_new_tokens(settings.max_new_tokens, kind),
                system_prompt=settings.system_prompt, batch_size=len(rows)))
            kwargs = backend.generate_kwargs()
            for start in range(0, len(rows), settings.batch_size):
                chunk = rows[start:start + settings.batch_size]
                plan = {v: [r for r, (_, w) in enumerate(chunk) if w == v] for v in {w for _, w in chunk} if v >= 0}
                with skip_layers(model, adapter, plan):
                    texts, fired = _generate_rows(model, processor, [prompts[i] for i, _ in chunk], kwargs, settings)
                for (i, v), text, stopped in zip(chunk, texts, fired):
                    results[i]["responses"][str(v)] = text
                    results[i]["correct"][str(v)] = bool(grade(text, items[i].answer).correct)
                    results[i]["stopped_degenerate"][str(v)] = stopped
    for i, it in enumerate(items):
        scores = gold_logprobs(model, processor, adapter, prompts[i], it.answer, variants, settings)
        results[i]["gold_logprob"] = {str(v): s for v, s in zip(variants, scores)}
    return results


def _paired_drop(items: list[dict[str, Any]], k: str, settings: AblationSettings) -> tuple[float, float, float, int]:
    """(drop low, drop high, McNemar p, discordant items) of baseline − variant ``k`` on the same items."""
    base = np.array([bool(r["correct"]["-1"]) for r in items])
    cur = np.array([bool(r["correct"][k]) for r in items])
    _, low, high, _ = paired_bootstrap_diff(base.astype(float), cur.astype(float), n_boot=settings.n_boot,
                                            seed=settings.seed)
    counts = two_by_two(base, cur)
    return low, high, mcnemar_exact(counts["n10"], counts["n01"]), counts["n10"] + counts["n01"]


def ablation_table(records: list[dict[str, Any]], adapter: Adapter, variants: Sequence[int],
                   settings: AblationSettings) -> pd.DataFrame:
    ok = [r for r in records if r.get("status") == "ok"]
    rows = []
    tasks = sorted({r["task"] for r in records})
    for task in tasks + (["all"] if len(tasks) > 1 else []):
        items = [r for r in ok if task in ("all", r["task"])]
        n_failed = sum(1 for r in records if r.get("status") != "ok" and task in ("all", r["task"]))
        base_acc = np.nan
        has_base = bool(items) and all("-1" in r["correct"] for r in items)
        for v in variants:
            k = str(v)
            acc = low = high = np.nan
            drop_low = drop_high = p_mcnemar = np.nan
            n_discordant: int | None = None
            if settings.generate and items:
                hits = sum(bool(r["correct"][k]) for r in items)
                acc, (low, high) = hits / len(items), wilson_interval(hits, len(items))
                if v == -1:
                    drop_low, drop_high, p_mcnemar, n_discordant = 0.0, 0.0, 1.0, 0
                elif has_base:
                    drop_low, drop_high, p_mcnemar, n_discordant = _paired_drop(items, k, settings)
            lp = [float(r["gold_logprob"][k]) for r in items]
            m = bootstrap_mean_ci(lp, n_boot=settings.n_boot, seed=settings.seed) if lp else (np.nan,) * 3
            if v == -1:
                base_acc = acc
            rows.append({"task": task, "layer": v, "unified_layer": adapter.unified_index("llm", v) if v >= 0 else None,
                         "n": len(items), "n_failed": n_failed, "accuracy": acc, "accuracy_low": low,
                         "accuracy_high": high, "gold_logprob": m[0], "gold_logprob_low": m[1],
                         "gold_logprob_high": m[2], "accuracy_drop": base_acc - acc if v >= 0 else 0.0,
                         "accuracy_drop_low": drop_low, "accuracy_drop_high": drop_high, "p_mcnemar": p_mcnemar,
                         "n_discordant": n_discordant,
                         "n_stopped_degenerate": sum(bool(r.get("stopped_degenerate", {}).get(k)) for r in items)})
    df = pd.DataFrame(rows, columns=ABLATION_COLUMNS)
    df["unified_layer"] = df["unified_layer"].astype("Int64")
    df["n_discordant"] = df["n_discordant"].astype("Int64")
    return df


def run_ablation(model: str | os.PathLike[str] | ProbeModel, tasks: Sequence[str], out: str | os.PathLike[str],
                 settings: AblationSettings | None = None, *, limit: int | None = None, dtype: str | None = None,
                 device: str | None = None, device_map: str | Mapping[str, Any] | None = None,
                 overwrite: bool = False, plots: bool = True, progress: ProgressFn | None = None) -> AblationResult:
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
    key = settings_key({"settings": settings.model_dump(), "inputs": inputs, "limit": limit,
                        "dtype": load_dtype(dtype, device, device_map)})
    out_dir = Path(out)
    store = ItemStore(out_dir, NAME, key, overwrite=overwrite,
                      final_names=("ablation_layers.csv", "ablation_layers.parquet"))
    todo = [it for it in items if it.key not in store.done]
    done = len(items) - len(todo)
    if progress is not None:
        progress(done, len(items))
    pm: ProbeModel | None = model if isinstance(model, ProbeModel) else None
    if todo and pm is None:  # a finished run is only re-tabulated: no weights loaded
        pm = open_model(model, dtype=dtype, device=device, device_map=device_map)
    per_group = max(1, settings.batch_size // len(variants))
    for start in range(0, len(todo), per_group):
        group = todo[start:start + per_group]
        results: list[Any]
        assert pm is not None
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
    lengths = {k: resolve_max_new_tokens(settings.max_new_tokens, k) for k in sorted({item_kind(it) for it in items})}
    manifest = finish(
        out_dir, NAME, key, {"ablation_layers": (table, ABLATION_COLUMNS)},
        manifest_args={**settings.model_dump(), "model": path, "tasks": list(tasks), "limit": limit,
                       "device_map": device_map},
        inputs=inputs,
        extra={"n_items": len(items), "n_ok": len(records) - len(failed), "n_failed": len(failed),
               "failed": [{"id": r["key"], "error": r["error"]} for r in failed],
               "decoding": probe_decoding(pm, path, lengths, out_dir) if settings.generate else None,
               "stop_degenerate": (f"a row ends when its answer ends in one token or n-gram (<= {MAX_PERIOD} tokens) "
                                   f"repeated {settings.stop_degenerate} times" if settings.stop_degenerate else None),
               "skip": "decoder layer output := its input (attention and MLP contribute zero; residual passes)",
               "layer": "-1 = unablated baseline; unified_layer = layer + 1"},
        plots=(lambda d: ablation_plots(table, d)) if plots else None,
    )
    return AblationResult(table, [r for r in records if r["status"] == "ok"], failed, manifest, out_dir)
