"""`probe lens`: the logit lens — at which decoder layer does the gold answer's first token emerge?

Per item and model, one forward (``use_cache=False``) of the prompt as the probes encode it (chat template,
generation prompt appended). Forward hooks on every decoder layer keep the residual stream after that layer
at the last prompt position, the one that predicts the first answer token; the model's own final norm and
lm_head turn it into logits ("lens" logits). The last layer's lens logits are the model's real logits (the
run checks this on every item and records the largest deviation in the manifest).

Gold token: the first token of ``answer_template.format(answer=gold)`` tokenized without special tokens and
without a leading space — the convention of `probe ablate`'s gold log-prob (after the generation prompt the
answer starts a fresh line, so "4" rather than " 4" is what the model writes). Per layer: the gold token's
log-probability (float32 log-softmax), its rank (0 = no token is more probable; ties count for the gold)
and whether it is top-1 (rank 0). The emergence layer of an item is the first layer L such that the gold
token is top-1 at every layer ≥ L; none when it is not top-1 at the last layer.

For a pair (``in``/``rl``) the run adds the paired difference of emergence layers RL − IN over the items
where both models emerge, with a paired bootstrap interval and a sign-flip p-value.
"""

from __future__ import annotations

import contextlib
import gc
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

from frankenlab.arch.base import Adapter
from frankenlab.errors import FrankenlabError, ProbeError
from frankenlab.probe.hooks import capture_residual
from frankenlab.probe.run import ProbeModel, ProgressFn, describe_model, finish, load_dtype, open_model
from frankenlab.probe.store import ItemStore
from frankenlab.probe.tasks import load_math_tasks
from frankenlab.runtime.devices import module_device
from frankenlab.runtime.generate import Prompt, encode, to_model, tokenizer_of
from frankenlab.stats import bootstrap_mean_ci, paired_bootstrap_diff, sign_flip_test, wilson_interval
from frankenlab.tasks import TaskItem

__all__ = ["LensResult", "LensSettings", "capture_residual", "emergence_layer", "final_norm", "gold_token_id",
           "lens_items", "lens_logprobs", "lens_plots", "lens_tables", "run_lens", "summary_lines"]

log = logging.getLogger(__name__)
NAME = "lens"
LAYER_COLUMNS = ["model", "layer", "unified_layer", "n", "gold_logprob_mean", "gold_rank_median", "top1_frac",
                 "top1_low", "top1_high", "task", "n_failed", "gold_logprob_low", "gold_logprob_high",
                 "emerged_frac"]
ITEM_COLUMNS = ["model", "item", "emergence_layer", "task", "final_top1", "final_rank", "emergence_unified_layer",
                "gold_token_id", "gold_token", "final_gold_logprob"]
PAIR_COLUMNS = ["task", "n", "mean_in", "mean_rl", "diff", "diff_low", "diff_high", "p", "p_bootstrap",
                "n_paired", "n_in_only", "n_rl_only", "n_neither"]
PAIR_LABELS = ("in", "rl")
# Known homes of the text decoder's final norm in loaded transformers models (VLMs first).
_NORM_PATHS = ("model.language_model.norm", "model.norm", "language_model.norm", "language_model.model.norm",
               "model.decoder.norm", "transformer.ln_f")
_ERRORS = (FrankenlabError, RuntimeError, ValueError, OSError)


class LensSettings(BaseModel):
    """Everything that changes a lens result (recorded in the manifest and the resume key)."""

    model_config = ConfigDict(frozen=True)

    batch_size: int = Field(8, ge=1, description="Prompts per forward pass (left-padded).")
    system_prompt: str | None = Field(None, description="System prompt for every question.")
    answer_template: str = Field("{answer}", description="Gold response whose first token is the lens target "
                                                         "(as in probe ablate).")
    n_boot: int = Field(1000, ge=1, description="Bootstrap resamples for every interval.")
    seed: int = Field(0, description="Seed of generated tasks and the bootstrap.")


@dataclass
class LensResult:
    layers: pd.DataFrame
    items: pd.DataFrame
    pair: pd.DataFrame | None
    failed: list[dict[str, Any]]
    manifest: dict[str, Any]
    out_dir: Path


# -- the lens ---------------------------------------------------------------------------------------
def final_norm(model: Any, adapter: Adapter) -> Any:
    """The text decoder's final norm: the adapter's path, else the known attribute paths of loaded models."""
    paths = [p for p in (getattr(adapter, "final_norm_path", None), *_NORM_PATHS) if p]
    for path in dict.fromkeys(paths):
        with contextlib.suppress(AttributeError):
            return model.get_submodule(path)
    raise ProbeError(f"{type(model).__name__} has no final norm at any known path ({', '.join(dict.fromkeys(paths))}); "
                     "set final_norm_path on the architecture's adapter (frankenlab.arch).")


def _lm_head(model: Any) -> Any:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise ProbeError(f"{type(model).__name__} has no output embeddings (lm_head); the logit lens needs a causal "
                         "LM head.")
    return head


def lens_logprobs(model: Any, processor: Any, adapter: Adapter, prompts: Sequence[Prompt],
                  system_prompt: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(lens, real): float32 log-probs at the last prompt position, [batch, layers, vocab] and [batch, vocab].

    Norm and lm_head run in the model's dtype, as in the model's own forward, so the last layer's lens equals
    the real output; only the log-softmax is float32.
    """
    inputs = to_model(model, encode(processor, list(prompts), system_prompt))
    norm, head = final_norm(model, adapter), _lm_head(model)
    with torch.inference_mode(), capture_residual(model, adapter) as slots:
        real = model(**inputs, use_cache=False, logits_to_keep=1).logits[:, -1]
        missing = [i for i, s in enumerate(slots) if s is None]
        if missing:
            raise ProbeError(f"decoder layers {missing} did not run in the forward pass; the lens needs every "
                             "layer's output.")
        device = module_device(head)  # on a split model each layer's slot is on its layer's device
        resid = torch.stack([s.to(device) for s in slots if s is not None], dim=1)
        lens = head(norm(resid))
    return torch.log_softmax(lens.float(), dim=-1), torch.log_softmax(real.float(), dim=-1)


def gold_token_id(processor: Any, answer: str, template: str = "{answer}") -> int:
    """First token of the gold response as the model would write it after the generation prompt (no leading
    space, no special tokens: the tokenization probe ablate scores)."""
    ids = tokenizer_of(processor)(template.format(answer=answer), add_special_tokens=False)["input_ids"]
    if not ids:
        raise ProbeError(f"gold answer {answer!r} has no tokens under the template {template!r}.")
    return int(ids[0])


def emergence_layer(top1: Sequence[bool]) -> int | None:
    """First layer L with the gold top-1 at every layer ≥ L; None if it is not top-1 at the last layer."""
    flags = [bool(t) for t in top1]
    if not flags or not flags[-1]:
        return None
    layer = len(flags) - 1
    while layer > 0 and flags[layer - 1]:
        layer -= 1
    return layer




def lens_items(model: Any, processor: Any, adapter: Adapter, items: Sequence[TaskItem],
               settings: LensSettings) -> list[dict[str, Any]]:
    """Per item: the gold token and, per layer, its log-prob and rank; its emergence layer (one batched forward)."""
    tok = tokenizer_of(processor)
    gold = [gold_token_id(processor, it.answer, settings.answer_template) for it in items]
    lens, real = lens_logprobs(model, processor, adapter, [Prompt.of(it) for it in items], settings.system_prompt)
    index = torch.tensor(gold, device=lens.device)
    lp = lens.gather(-1, index[:, None, None].expand(-1, lens.shape[1], 1))  # [batch, layers, 1]
    ranks = (lens > lp).sum(-1)  # tokens strictly more probable than the gold one
    out = []
    for b, g in enumerate(gold):
        rank = [int(r) for r in ranks[b].tolist()]
        out.append({"gold_token_id": g, "gold_token": tok.decode([g]), "gold_logprob": lp[b, :, 0].tolist(),
                    "gold_rank": rank, "emergence_layer": emergence_layer([r == 0 for r in rank]),
                    "last_layer_error": float((lens[b, -1] - real[b]).abs().max())})
    return out


# -- tables -----------------------------------------------------------------------------------------
def _ok(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("status") == "ok"]


def lens_tables(records: list[dict[str, Any]], adapter: Adapter, labels: Sequence[str],
                settings: LensSettings) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    """(layers, items, pair or None) from item records; task "all" pools every task."""
    ok = _ok(records)
    tasks = sorted({r["task"] for r in records})
    lrows, irows = [], []
    for label in labels:
        mine = [r for r in ok if r["model"] == label]
        for task in [*tasks, "all"]:
            rows = [r for r in mine if task in ("all", r["task"])]
            n_failed = sum(1 for r in records if r["model"] == label and r.get("status") != "ok"
                           and task in ("all", r["task"]))
            if not rows:
                continue
            lp = np.array([r["gold_logprob"] for r in rows], dtype=float)  # [items, layers]
            rank = np.array([r["gold_rank"] for r in rows], dtype=float)
            emerged = [r["emergence_layer"] for r in rows]
            for layer in range(lp.shape[1]):
                hits = int((rank[:, layer] == 0).sum())
                low, high = wilson_interval(hits, len(rows))
                m = bootstrap_mean_ci(lp[:, layer], n_boot=settings.n_boot, seed=settings.seed)
                lrows.append({"model": label, "layer": layer, "unified_layer": adapter.unified_index("llm", layer),
                              "n": len(rows), "gold_logprob_mean": m[0], "gold_rank_median": float(np.median(
                                  rank[:, layer])), "top1_frac": hits / len(rows), "top1_low": low,
                              "top1_high": high, "task": task, "n_failed": n_failed, "gold_logprob_low": m[1],
                              "gold_logprob_high": m[2],
                              "emerged_frac": sum(e is not None and e <= layer for e in emerged) / len(rows)})
        for r in mine:
            e = r["emergence_layer"]
            irows.append({"model": label, "item": r["id"], "emergence_layer": e, "task": r["task"],
                          "final_top1": r["gold_rank"][-1] == 0, "final_rank": r["gold_rank"][-1],
                          "emergence_unified_layer": None if e is None else adapter.unified_index("llm", e),
                          "gold_token_id": r["gold_token_id"], "gold_token": r["gold_token"],
                          "final_gold_logprob": r["gold_logprob"][-1]})
    layers = pd.DataFrame(lrows, columns=LAYER_COLUMNS)
    items = pd.DataFrame(irows, columns=ITEM_COLUMNS)
    for col in ("emergence_layer", "emergence_unified_layer"):
        items[col] = items[col].astype("Int64")
    pair = _pair_table(ok, tasks, settings) if tuple(labels) == PAIR_LABELS else None
    return layers, items, pair


def _pair_table(ok: list[dict[str, Any]], tasks: list[str], settings: LensSettings) -> pd.DataFrame:
    """RL − IN emergence layer over the items where both emerge; counts of items emerging in one model only."""
    by = {(r["model"], r["id"]): r for r in ok}
    rows = []
    for task in [*tasks, "all"]:
        ids = sorted({r["id"] for r in ok if task in ("all", r["task"])
                      and ("in", r["id"]) in by and ("rl", r["id"]) in by})
        e_in = [by[("in", i)]["emergence_layer"] for i in ids]
        e_rl = [by[("rl", i)]["emergence_layer"] for i in ids]
        both = [(a, b) for a, b in zip(e_in, e_rl) if a is not None and b is not None]
        a_in = np.array([a for a, _ in both], dtype=float)
        a_rl = np.array([b for _, b in both], dtype=float)
        diff, low, high, p_boot = paired_bootstrap_diff(a_rl, a_in, n_boot=settings.n_boot, seed=settings.seed)
        rows.append({"task": task, "n": len(both), "mean_in": float(a_in.mean()) if both else np.nan,
                     "mean_rl": float(a_rl.mean()) if both else np.nan, "diff": diff, "diff_low": low,
                     "diff_high": high, "p": sign_flip_test(a_rl - a_in, seed=settings.seed), "p_bootstrap": p_boot,
                     "n_paired": len(ids),
                     "n_in_only": sum(a is not None and b is None for a, b in zip(e_in, e_rl)),
                     "n_rl_only": sum(a is None and b is not None for a, b in zip(e_in, e_rl)),
                     "n_neither": sum(a is None and b is None for a, b in zip(e_in, e_rl))})
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def lens_plots(layers: pd.DataFrame, out: Path) -> list[str]:
    """lens_top1.png (top-1 share per layer, Wilson bands) and lens_logprob.png (mean gold log-prob, bootstrap
    bands), one curve per model over the pooled items (task "all")."""
    from matplotlib.figure import Figure

    from frankenlab.probe.plots import _band, _save

    data = layers[layers["task"] == "all"]
    if data.empty:
        return []
    colors = {"in": "tab:blue", "rl": "tab:red"}
    written = []
    for col, low, high, label, name in (
        ("top1_frac", "top1_low", "top1_high", "share of items with the gold token top-1", "lens_top1.png"),
        ("gold_logprob_mean", "gold_logprob_low", "gold_logprob_high", "mean log p(gold first token)",
         "lens_logprob.png"),
    ):
        fig = Figure(figsize=(8, 3.8))
        ax = fig.add_subplot(1, 1, 1)
        for model, g in data.groupby("model", sort=False):
            g = g.sort_values("unified_layer")
            _band(ax, g["unified_layer"], g[col], g[low], g[high], f"{model} (n={int(g['n'].iloc[0])})",
                  colors.get(str(model)))
        if col == "top1_frac":
            ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("unified layer (LLM decoder layer + 1)")
        ax.set_ylabel(label)
        ax.set_title(f"Logit lens at the last prompt token: {label} "
                     f"({'Wilson' if col == 'top1_frac' else 'bootstrap'} 95 %)")
        ax.legend(fontsize=8)
        written.append(_save(fig, out / name))
    return written


# -- the run ----------------------------------------------------------------------------------------
def _vocab(m: str | os.PathLike[str] | ProbeModel) -> dict[str, int]:
    if isinstance(m, ProbeModel):
        return tokenizer_of(m.processor).get_vocab()
    from frankenlab.runtime.load import load_processor

    return tokenizer_of(load_processor(str(describe_model(m)[2]))).get_vocab()


def _models(model: Any, in_model: Any, rl_model: Any) -> dict[str, Any]:
    if model is not None and (in_model is not None or rl_model is not None):
        raise ProbeError("give one checkpoint (MODEL) or a pair (--in and --rl), not both.")
    if model is not None:
        return {"model": model}
    if in_model is None or rl_model is None:
        raise ProbeError("give one checkpoint (MODEL) or both --in and --rl.")
    return {"in": in_model, "rl": rl_model}


def _measure(pm: ProbeModel, label: str, chunk: Sequence[TaskItem], settings: LensSettings) -> list[dict[str, Any]]:
    """Records of one batch; a failing batch is retried item by item to find the culprit."""
    try:
        results: list[Any] = lens_items(pm.model, pm.processor, pm.adapter, chunk, settings)
    except _ERRORS as exc:
        if len(chunk) == 1:
            results = [exc]
        else:
            results = []
            for it in chunk:
                try:
                    results += lens_items(pm.model, pm.processor, pm.adapter, [it], settings)
                except _ERRORS as one:
                    results.append(one)
    records = []
    for it, res in zip(chunk, results):
        record: dict[str, Any] = {"key": f"{label}/{it.key}", "model": label, "id": it.key, "task": it.task,
                                  "answer": it.answer}
        if isinstance(res, BaseException):
            log.warning("item %s (%s) failed: %s", it.key, label, res)
            record.update(status="failed", error=f"{type(res).__name__}: {res}")
        else:
            record.update(status="ok", **res)
        records.append(record)
    return records


def run_lens(tasks: Sequence[str], out: str | os.PathLike[str], settings: LensSettings | None = None, *,
             model: str | os.PathLike[str] | ProbeModel | None = None,
             in_model: str | os.PathLike[str] | ProbeModel | None = None,
             rl_model: str | os.PathLike[str] | ProbeModel | None = None, limit: int | None = None,
             dtype: str | None = None, device: str | None = None,
             device_map: str | Mapping[str, Any] | None = None, overwrite: bool = False, plots: bool = True,
             progress: ProgressFn | None = None) -> LensResult:
    """Logit lens of one model (``model``) or a pair (``in_model``, ``rl_model``) over the tasks; writes DIR.

    Resumable per item and model; one model in memory at a time; a finished run is re-tabulated without
    loading weights.
    """
    from frankenlab.manifest import settings_key

    settings = settings or LensSettings()
    sources = _models(model, in_model, rl_model)
    items, task_digests = load_math_tasks(tasks, limit=limit, seed=settings.seed)
    described = {k: describe_model(v) for k, v in sources.items()}
    if len(sources) == 2:
        (a_in, _, p_in), (a_rl, _, p_rl) = described["in"], described["rl"]
        if a_in.family != a_rl.family or a_in.n_llm_layers != a_rl.n_llm_layers:
            raise ProbeError(f"IN {p_in} ({a_in.family}, {a_in.n_llm_layers} layers) and RL {p_rl} ({a_rl.family}, "
                             f"{a_rl.n_llm_layers} layers) are not the same architecture.")
        if _vocab(sources["in"]) != _vocab(sources["rl"]):
            raise ProbeError("IN and RL have different tokenizers; their gold tokens would not be the same token.")
        labels = {"in": "in", "rl": "rl"}
    else:
        path = described["model"][2]
        labels = {"model": Path(str(path)).name or str(path)}
    adapter = next(iter(described.values()))[0]
    inputs = {labels[k]: fp for k, (_, fp, _) in described.items()} | task_digests
    key = settings_key({"settings": settings.model_dump(), "inputs": inputs, "limit": limit,
                        "dtype": load_dtype(dtype, device, device_map)})
    out_dir = Path(out)
    store = ItemStore(out_dir, NAME, key, overwrite=overwrite, final_names=tuple(
        f"lens_{t}.{ext}" for t in ("layers", "items", "pair") for ext in ("csv", "parquet")))
    total, done = len(sources) * len(items), 0
    for k, source in sources.items():
        label = labels[k]
        todo = [it for it in items if f"{label}/{it.key}" not in store.done]
        done += len(items) - len(todo)
        if progress is not None:
            progress(done, total)
        if not todo:
            continue
        pm = source if isinstance(source, ProbeModel) else open_model(source, dtype=dtype, device=device,
                                                                      device_map=device_map)
        # one batch holds prompts of one kind (text-only or with an image), so the processor sees a plain batch
        groups = [[it for it in todo if it.image is None], [it for it in todo if it.image is not None]]
        for group in groups:
            for start in range(0, len(group), settings.batch_size):
                chunk = group[start:start + settings.batch_size]
                for record in _measure(pm, label, chunk, settings):
                    store.add(record)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
        del pm
        gc.collect()
    order = list(labels.values())
    wanted = {f"{label}/{it.key}" for label in order for it in items}
    records = [r for r in store.records() if r["key"] in wanted]
    layers, item_table, pair = lens_tables(records, adapter, order, settings)
    failed = [r for r in records if r["status"] != "ok"]
    tables: dict[str, tuple[pd.DataFrame, list[str]]] = {"lens_layers": (layers, LAYER_COLUMNS),
                                                          "lens_items": (item_table, ITEM_COLUMNS)}
    if pair is not None:
        tables["lens_pair"] = (pair, PAIR_COLUMNS)
    ok = _ok(records)
    manifest = finish(
        out_dir, NAME, key, tables,
        manifest_args={**settings.model_dump(), **{k: described[k][2] for k in sources},
                       "tasks": list(tasks), "limit": limit, "dtype": dtype, "device_map": device_map},
        inputs=inputs,
        extra={"models": order, "n_items": len(items), "n_ok": len(ok), "n_failed": len(failed),
               "failed": [{"key": r["key"], "error": r["error"]} for r in failed],
               "position": "last prompt token (chat template + generation prompt): the one predicting the answer",
               "lens": "the model's final norm and lm_head applied to the residual stream after each decoder layer",
               "gold_token": "first token of answer_template.format(answer=gold), no special tokens, no leading "
                             "space (as probe ablate's gold log-prob)",
               "rank": "tokens strictly more probable than the gold token (0 = top-1; ties count for the gold)",
               "emergence_layer": "first decoder layer L with the gold token top-1 at every layer >= L; empty when "
                                  "it is not top-1 at the last layer",
               "pair": "RL − IN emergence layer over items where both emerge (paired bootstrap 95 %, sign-flip p)"
                       if pair is not None else None,
               "max_last_layer_error": max((r["last_layer_error"] for r in ok), default=None),
               "layer": "0-based decoder layer; unified_layer = layer + 1"},
        plots=(lambda d: lens_plots(layers, d)) if plots else None,
    )
    return LensResult(layers, item_table, pair, failed, manifest, out_dir)


def summary_lines(res: LensResult) -> list[str]:
    """One line per model (and the pair): what the CLI prints."""
    lines = []
    for model, g in res.items.groupby("model", sort=False):
        e = g["emergence_layer"].dropna()
        mean = f"{float(e.mean()):.2f}" if len(e) else "–"
        lines.append(f"{model}: gold top-1 at the last layer in {int(g['final_top1'].sum())}/{len(g)} items; "
                     f"mean emergence layer {mean} (n={len(e)})")
    if res.pair is not None:
        r = res.pair[res.pair["task"] == "all"].iloc[0]
        if int(r["n"]) == 0:
            lines.append(f"RL − IN emergence layer: no item emerges in both models (in only {int(r['n_in_only'])}, "
                         f"rl only {int(r['n_rl_only'])}, neither {int(r['n_neither'])})")
            return lines
        lines.append(f"RL − IN emergence layer: {r['diff']:+.2f} [{r['diff_low']:+.2f}, {r['diff_high']:+.2f}], "
                     f"p={r['p']:.3g}, n={int(r['n'])} (in only {int(r['n_in_only'])}, rl only "
                     f"{int(r['n_rl_only'])})")
    return lines

