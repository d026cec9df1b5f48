"""`probe attention`: how much of the response tokens' attention lands on image tokens, IN vs RL.

Per decoder layer and head, the share of attention mass that the query rows predicting the
response tokens (the last prompt token and response tokens 1..T−1, as during generation) put on
image tokens, averaged over those rows. `vision_share` counts the image tokens only (e.g. Qwen's
`<|image_pad|>`); `vision_share_markers` adds the vision start/end markers. Measured
* ``shared`` — teacher-forced on one response for both models (the gold answer by default), so IN
  and RL see identical tokens;
* ``own`` — teacher-forced on each model's own greedy response.
Only the needed rows of softmax(QKᵀ) are computed (`hooks.record_attention`), never a full map.
Own responses decode as eval does (greedy, generation_config neutralised, answer length per item kind
unless given); the manifest's ``decoding`` entry records it per model.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field

from frankenlab.arch.base import Adapter
from frankenlab.errors import FrankenlabError, ProbeError
from frankenlab.probe.hooks import record_attention
from frankenlab.probe.kv_swap import image_token_id, marker_token_ids
from frankenlab.probe.run import (
    ProbeModel,
    ProgressFn,
    append_tokens,
    describe_model,
    file_digest,
    finish,
    first_per_task,
    load_dtype,
    open_model,
    probe_decoding,
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
from frankenlab.stats import bootstrap_mean_ci, paired_bootstrap_diff
from frankenlab.tasks import TaskItem

__all__ = ["AttentionProbeSettings", "AttentionResult", "attention_tables", "generate_ids", "run_attention_probe",
           "vision_shares"]

log = logging.getLogger(__name__)
NAME = "attention"
LAYER_COLUMNS = ["model", "mode", "layer", "unified_layer", "n", "n_failed", "vision_share", "vision_share_low",
                 "vision_share_high", "vision_share_markers", "vision_share_markers_low", "vision_share_markers_high",
                 "response_tokens"]
HEAD_COLUMNS = ["model", "mode", "layer", "unified_layer", "head", "n", "vision_share", "vision_share_low",
                "vision_share_high", "vision_share_markers"]
DIFF_COLUMNS = ["mode", "layer", "unified_layer", "n", "diff", "diff_low", "diff_high", "p", "diff_markers"]
MODES = ("shared", "own")


class AttentionProbeSettings(BaseModel):
    """Everything that changes an attention-probe result (recorded in the manifest and the resume key)."""

    model_config = ConfigDict(frozen=True)

    shared_response: Literal["gold", "IN"] = Field(
        "gold", description="Response both models are teacher-forced on: the gold answer, or IN's greedy response.")
    max_new_tokens: int | None = Field(None, ge=1, description="Length limit of each model's own greedy response; "
                                       "None = the per-kind default (runtime.generate.DEFAULT_MAX_NEW_TOKENS).")
    batch_size: int = Field(8, ge=1, description="Prompts per generate batch.")
    system_prompt: str | None = Field(None, description="System prompt for every question.")
    n_boot: int = Field(1000, ge=1, description="Bootstrap resamples for every interval.")
    seed: int = Field(0, description="Seed of the bootstrap.")


@dataclass
class AttentionResult:
    layers: pd.DataFrame
    heads: pd.DataFrame
    diff: pd.DataFrame
    failed: list[dict[str, Any]]
    manifest: dict[str, Any]
    out_dir: Path




def vision_shares(model: Any, processor: Any, adapter: Adapter, prompt: Prompt, response_ids: Sequence[int],
                  system_prompt: str | None = None) -> dict[str, np.ndarray]:
    """[layers, heads] arrays: "image", "image_markers" and "total" (mass over all keys, = 1)."""
    if not response_ids:
        raise ProbeError("empty response: no query rows to measure.")
    single = to_model(model, encode(processor, [prompt], system_prompt))
    P, T = int(single["input_ids"].shape[1]), len(response_ids)
    inputs = append_tokens(single, list(response_ids))
    ids = inputs["input_ids"][0]
    image = ids == image_token_id(model)
    if not bool(image.any()):
        raise ProbeError("the prompt holds no image tokens; check the processor and chat template.")
    markers = image | torch.isin(ids, torch.tensor(marker_token_ids(model), dtype=ids.dtype, device=ids.device))
    groups = torch.stack([image, markers], dim=-1)[None]
    qpos = torch.arange(P - 1, P - 1 + T, device=ids.device)[None]
    with torch.inference_mode(), record_attention(model, adapter, qpos, groups) as rec:
        model(**inputs, use_cache=False, logits_to_keep=1)
    n = len(adapter.decoder_layers(model))
    mass = torch.stack([rec.mass[i][0] for i in range(n)])  # [layers, heads, T, 3]
    mean = mass.mean(dim=2).numpy()
    return {"image": mean[..., 0], "image_markers": mean[..., 1], "total": mean[..., 2]}


def generate_ids(model: Any, processor: Any, prompts: Sequence[Prompt], max_new_tokens: int,
                 system_prompt: str | None = None) -> list[list[int]]:
    """Greedy response token ids per prompt, up to and including the first stop token (eval's decoding)."""
    backend = HFBackend(model, processor, settings=GenerationSettings(max_new_tokens=max_new_tokens,
                                                                      system_prompt=system_prompt))
    kw = backend.generate_kwargs()
    stops = set(kw["eos_token_id"])
    inputs = to_model(model, encode(processor, list(prompts), system_prompt))
    with torch.inference_mode(), without_checkpoint_generation_config(model):
        seq = model.generate(**inputs, **kw)
    out = []
    for row in seq[:, inputs["input_ids"].shape[1]:].tolist():
        ids: list[int] = []
        for t in row:
            ids.append(int(t))
            if t in stops:
                break
        out.append(ids)
    return out


def _summ(values: list[float], settings: AttentionProbeSettings) -> tuple[float, float, float]:
    if not values:
        return (np.nan, np.nan, np.nan)
    return bootstrap_mean_ci(values, n_boot=settings.n_boot, seed=settings.seed)


def attention_tables(records: list[dict[str, Any]], adapter: Adapter,
                     settings: AttentionProbeSettings) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(layers, heads, RL − IN diff) from item records."""
    ok = [r for r in records if r.get("status") == "ok"]
    lrows, hrows, drows = [], [], []
    for model in ("IN", "RL"):
        mine = [r for r in ok if r["model"] == model]
        n_failed = sum(1 for r in records if r["model"] == model and r.get("status") != "ok")
        for mode in MODES:
            if not mine:
                continue
            img = np.stack([np.asarray(r[mode]["image"]) for r in mine])  # [items, layers, heads]
            mrk = np.stack([np.asarray(r[mode]["image_markers"]) for r in mine])
            tokens = float(np.mean([r[mode]["tokens"] for r in mine]))
            for layer in range(img.shape[1]):
                unified = adapter.unified_index("llm", layer)
                v = _summ(img[:, layer].mean(-1).tolist(), settings)
                m = _summ(mrk[:, layer].mean(-1).tolist(), settings)
                lrows.append({"model": model, "mode": mode, "layer": layer, "unified_layer": unified, "n": len(mine),
                              "n_failed": n_failed, "vision_share": v[0], "vision_share_low": v[1],
                              "vision_share_high": v[2], "vision_share_markers": m[0], "vision_share_markers_low": m[1],
                              "vision_share_markers_high": m[2], "response_tokens": tokens})
                for head in range(img.shape[2]):
                    h = _summ(img[:, layer, head].tolist(), settings)
                    hrows.append({"model": model, "mode": mode, "layer": layer, "unified_layer": unified,
                                  "head": head, "n": len(mine), "vision_share": h[0], "vision_share_low": h[1],
                                  "vision_share_high": h[2], "vision_share_markers": float(mrk[:, layer, head].mean())})
    by = {(r["model"], r["id"]): r for r in ok}
    paired = sorted({r["id"] for r in ok if ("IN", r["id"]) in by and ("RL", r["id"]) in by})
    if paired:
        for mode in MODES:
            a = np.stack([np.asarray(by[("RL", i)][mode]["image"]).mean(-1) for i in paired])
            b = np.stack([np.asarray(by[("IN", i)][mode]["image"]).mean(-1) for i in paired])
            am = np.stack([np.asarray(by[("RL", i)][mode]["image_markers"]).mean(-1) for i in paired])
            bm = np.stack([np.asarray(by[("IN", i)][mode]["image_markers"]).mean(-1) for i in paired])
            for layer in range(a.shape[1]):
                d, lo, hi, p = paired_bootstrap_diff(a[:, layer], b[:, layer], n_boot=settings.n_boot,
                                                     seed=settings.seed)
                drows.append({"mode": mode, "layer": layer, "unified_layer": adapter.unified_index("llm", layer),
                              "n": len(paired), "diff": d, "diff_low": lo, "diff_high": hi, "p": p,
                              "diff_markers": float((am[:, layer] - bm[:, layer]).mean())})
    return (pd.DataFrame(lrows, columns=LAYER_COLUMNS), pd.DataFrame(hrows, columns=HEAD_COLUMNS),
            pd.DataFrame(drows, columns=DIFF_COLUMNS))


def load_attention_items(pairs: str | os.PathLike[str] | None, tasks: Sequence[str] | None,
                         limit: int | None, seed: int) -> tuple[list[TaskItem], dict[str, str]]:
    """Pairs → (target image, prompt, target answer); tasks → their rows (each needs an image)."""
    if (pairs is None) == (not tasks):
        raise ProbeError("give exactly one of --pairs or --tasks.")
    if pairs is not None:
        from frankenlab.tasks.pairs import load_probe_pairs

        rows = load_probe_pairs(pairs)
        items = [TaskItem(id=r["id"], question=r["prompt"], answer=r["meta"]["target_answer"],
                          image=r["target_image"], task=r["task"]) for r in rows]
        return first_per_task(items, limit, lambda it: it.task), {"pairs": file_digest(pairs)}
    return load_math_tasks(list(tasks or ()), limit=limit, seed=seed)


def _describe(m: str | os.PathLike[str] | ProbeModel) -> tuple[Adapter, str, str, dict[str, int]]:
    """(adapter, fingerprint, path, vocabulary) without loading weights."""
    adapter, fingerprint, path = describe_model(m)
    if isinstance(m, ProbeModel):
        return adapter, fingerprint, path, tokenizer_of(m.processor).get_vocab()
    from frankenlab.runtime.load import load_processor

    return adapter, fingerprint, path, tokenizer_of(load_processor(path)).get_vocab()



def _measure_chunk(pm: ProbeModel, label: str, chunk: Sequence[TaskItem], store: ItemStore,
                   settings: AttentionProbeSettings) -> list[dict[str, Any]]:
    """Records for one batch of items on one model: own responses generated together, then one forward each."""
    tok = tokenizer_of(pm.processor)
    records: list[dict[str, Any]] = []
    prompts: dict[int, Prompt] = {}
    for i, it in enumerate(chunk):
        records.append({"key": f"{label}/{it.key}", "model": label, "id": it.key, "task": it.task})
        try:
            if not it.has_image:
                raise ProbeError(f"item {it.key} has no image; the attention probe measures attention on image "
                                 "tokens.")
            prompts[i] = Prompt.of(it)
        except (FrankenlabError, OSError) as exc:
            records[i].update(status="failed", error=f"{type(exc).__name__}: {exc}")
    own: dict[int, list[int]] = {}
    order = sorted(prompts)
    kinds = {i: item_kind(chunk[i]) for i in order}
    for i in order:
        records[i].update(kind=kinds[i], max_new_tokens=resolve_max_new_tokens(settings.max_new_tokens, kinds[i]))
    for kind in sorted(set(kinds.values())):  # one answer length per generate batch
        mine = [i for i in order if kinds[i] == kind]
        limit = resolve_max_new_tokens(settings.max_new_tokens, kind)
        try:
            own.update(zip(mine, generate_ids(pm.model, pm.processor, [prompts[i] for i in mine], limit,
                                              settings.system_prompt)))
        except (RuntimeError, ValueError) as exc:  # retry one by one to isolate the failing item
            log.warning("batched generation failed (%s); retrying item by item", exc)
            for i in mine:
                try:
                    own[i] = generate_ids(pm.model, pm.processor, [prompts[i]], limit, settings.system_prompt)[0]
                except (RuntimeError, ValueError) as one:
                    records[i].update(status="failed", error=f"{type(one).__name__}: {one}")
    for i in order:
        if i not in own:
            continue
        it = chunk[i]
        try:
            if settings.shared_response == "gold":
                shared = tok(it.answer, add_special_tokens=False)["input_ids"]
            else:
                ref = store.done.get(f"IN/{it.key}")
                if ref is None:
                    raise ProbeError("IN has no finished response for this item to share.")
                shared = ref["own"]["ids"]
            entry: dict[str, Any] = {}
            for mode, ids in (("shared", shared), ("own", own[i])):
                sh = vision_shares(pm.model, pm.processor, pm.adapter, prompts[i], ids, settings.system_prompt)
                entry[mode] = {"ids": list(ids), "text": tok.decode(ids, skip_special_tokens=True), "tokens": len(ids),
                               "image": sh["image"].tolist(), "image_markers": sh["image_markers"].tolist(),
                               "mass_error": float(np.abs(sh["total"] - 1.0).max())}
            records[i].update(status="ok", **entry)
        except (FrankenlabError, RuntimeError, ValueError) as exc:
            records[i].update(status="failed", error=f"{type(exc).__name__}: {exc}")
    return records


def run_attention_probe(in_model: str | os.PathLike[str] | ProbeModel, rl_model: str | os.PathLike[str] | ProbeModel,
                        out: str | os.PathLike[str], settings: AttentionProbeSettings | None = None, *,
                        pairs: str | os.PathLike[str] | None = None, tasks: Sequence[str] | None = None,
                        limit: int | None = None, dtype: str | None = None, device: str | None = None,
                        device_map: str | Mapping[str, Any] | None = None, overwrite: bool = False,
                        plots: bool = True, progress: ProgressFn | None = None) -> AttentionResult:
    """Measure both models on every item (IN first, one model in memory at a time) and write DIR."""
    from frankenlab.manifest import settings_key
    from frankenlab.probe.plots import attention_plots

    settings = settings or AttentionProbeSettings()
    items, sources = load_attention_items(pairs, tasks, limit, settings.seed)
    described = {"IN": _describe(in_model), "RL": _describe(rl_model)}
    (a_in, fp_in, path_in, vocab_in), (a_rl, fp_rl, path_rl, vocab_rl) = described["IN"], described["RL"]
    if not a_in.has_vision:
        raise ProbeError(f"{path_in} is a text-only model ({a_in.family}); attention on image tokens needs a "
                         "vision-language model.")
    if a_in.family != a_rl.family or a_in.n_llm_layers != a_rl.n_llm_layers:
        raise ProbeError(f"IN ({a_in.family}, {a_in.n_llm_layers} layers) and RL ({a_rl.family}, "
                         f"{a_rl.n_llm_layers} layers) are not the same architecture.")
    if vocab_in != vocab_rl:
        raise ProbeError("IN and RL have different tokenizers; a shared response would not be the same tokens.")
    inputs = {"IN": fp_in, "RL": fp_rl, **sources}
    key = settings_key({"settings": settings.model_dump(), "inputs": inputs, "limit": limit,
                        "dtype": load_dtype(dtype, device, device_map)})
    out_dir = Path(out)
    store = ItemStore(out_dir, NAME, key, overwrite=overwrite, final_names=tuple(
        f"attention_{t}.{ext}" for t in ("layers", "heads", "diff") for ext in ("csv", "parquet")))
    total, done = 2 * len(items), 0
    lengths = {k: resolve_max_new_tokens(settings.max_new_tokens, k) for k in sorted({item_kind(it) for it in items})}
    decoding: dict[str, Any] = {}
    for label, source in (("IN", in_model), ("RL", rl_model)):
        todo = [it for it in items if f"{label}/{it.key}" not in store.done]
        done += len(items) - len(todo)
        if progress is not None:
            progress(done, total)
        path_of = path_in if label == "IN" else path_rl
        if not todo:
            decoding[label] = probe_decoding(source if isinstance(source, ProbeModel) else None, path_of, lengths,
                                             out_dir, label)
            continue
        pm = source if isinstance(source, ProbeModel) else open_model(source, dtype=dtype, device=device,
                                                                      device_map=device_map)
        decoding[label] = probe_decoding(pm, path_of, lengths, out_dir, label)
        for start in range(0, len(todo), settings.batch_size):
            chunk = todo[start:start + settings.batch_size]
            for record in _measure_chunk(pm, label, chunk, store, settings):
                store.add(record)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
        del pm
        gc.collect()
    wanted = {f"{m}/{it.key}" for m in ("IN", "RL") for it in items}
    records = [r for r in store.records() if r["key"] in wanted]
    layers, heads, diff = attention_tables(records, a_in, settings)
    failed = [r for r in records if r["status"] != "ok"]
    manifest = finish(
        out_dir, NAME, key,
        {"attention_layers": (layers, LAYER_COLUMNS), "attention_heads": (heads, HEAD_COLUMNS),
         "attention_diff": (diff, DIFF_COLUMNS)},
        manifest_args={**settings.model_dump(), "in": path_in, "rl": path_rl,
                       "pairs": str(pairs) if pairs else None, "tasks": list(tasks or []), "limit": limit,
                       "device_map": device_map},
        inputs=inputs,
        extra={"n_items": len(items), "n_failed": len(failed),
               "failed": [{"key": r["key"], "error": r["error"]} for r in failed],
               "decoding": decoding,
               "vision_share": "image tokens only, vision start/end markers excluded",
               "vision_share_markers": "image tokens plus vision start/end markers",
               "query_rows": "the positions predicting the response tokens (last prompt token, response 1..T-1)",
               "max_mass_error": max((r[m]["mass_error"] for r in records if r["status"] == "ok" for m in MODES),
                                     default=None)},
        plots=(lambda d: attention_plots(layers, heads, diff, d)) if plots else None,
    )
    return AttentionResult(layers, heads, diff, failed, manifest, out_dir)
