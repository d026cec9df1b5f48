"""`probe vision`: the K/V swap over a pair set, resumable per item, into tidy tables and plots.

Metrics per task × decoder layer L (over the items that finished; failures are counted in
`n_failed` and listed in the manifest):
* change_rate — the swapped answer differs from the unswapped target answer, over the items whose
  unswapped answer is not empty (an empty answer matches nothing, so it would count as "changed" at
  every layer); those items are counted in `n_empty_base` and still count in the other rates;
* flip_rate — the swapped answer equals the source's gold answer (`meta.source_answer`);
* flip_own_rate — the swapped answer equals the model's own unswapped answer about the source;
* accuracy — the swapped answer equals the target's gold answer;
each with a Wilson 95 % interval; margin — mean log p(source) − log p(target) on the first
differing answer token, with a bootstrap interval, over the items where such a token exists
(`n_margin`; not when one answer's tokens are a prefix of the other's). Task "all" pools the tasks.

Decoding (greedy, generation_config neutralised, answer length per item kind) is recorded in the
manifest's ``decoding`` entry; each item keeps its ``kind`` and ``max_new_tokens``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from frankenlab.arch.base import Adapter
from frankenlab.errors import FrankenlabError, ProbeError
from frankenlab.grading.same import normalize, same_answer
from frankenlab.probe.kv_swap import VisionProbeSettings, layer_variants, swap_pair
from frankenlab.probe.run import (
    ProbeModel,
    ProgressFn,
    describe_model,
    file_digest,
    finish,
    first_per_task,
    load_dtype,
    open_model,
    probe_decoding,
)
from frankenlab.probe.store import ItemStore
from frankenlab.runtime.generate import resolve_max_new_tokens
from frankenlab.stats import bootstrap_mean_ci, wilson_interval
from frankenlab.tasks.schema import kind_of

__all__ = ["VISION_COLUMNS", "VisionResult", "run_vision_probe", "vision_table"]

log = logging.getLogger(__name__)
NAME = "vision"
VISION_COLUMNS = [
    "task", "layer", "unified_layer", "mode", "n", "n_failed",
    "change_rate", "change_low", "change_high", "flip_rate", "flip_low", "flip_high",
    "accuracy", "accuracy_low", "accuracy_high", "margin", "margin_low", "margin_high", "n_margin",
    "flip_own_rate", "flip_own_low", "flip_own_high", "baseline_accuracy", "baseline_margin", "n_resized",
    "n_empty_base",
]


@dataclass
class VisionResult:
    layers: pd.DataFrame
    items: list[dict[str, Any]]
    failed: list[dict[str, Any]]
    manifest: dict[str, Any]
    out_dir: Path


def _rate(flags: list[bool]) -> tuple[float, float, float]:
    n, k = len(flags), int(sum(flags))
    low, high = wilson_interval(k, n)
    return (k / n if n else float("nan")), low, high


def vision_table(records: list[dict[str, Any]], adapter: Adapter, settings: VisionProbeSettings,
                 n_layers: int) -> pd.DataFrame:
    """Tidy per task × layer table from item records (ok and failed)."""
    ok = [r for r in records if r.get("status") == "ok"]
    failed = [r for r in records if r.get("status") != "ok"]
    tasks = sorted({r["task"] for r in records})
    rows = []
    for task in [*tasks, "all"]:
        items = [r for r in ok if task in ("all", r["task"])]
        n_failed = sum(1 for r in failed if task in ("all", r["task"]))
        norm = [{k: normalize(v) for k, v in r["answers"].items()} for r in items]
        gold_t = [normalize(r["target_answer"]) for r in items]
        gold_s = [normalize(r["source_answer"]) for r in items]
        base_acc = float(np.mean([same_answer(a["base"], g) for a, g in zip(norm, gold_t)])) if items else np.nan
        finite = [float(r["margins"]["base"]) for r in items if r["margins"]["base"] is not None]
        base_margin = float(np.mean(finite)) if finite else np.nan
        answered = [a["base"].kind != "empty" for a in norm]
        for L, _ in layer_variants(n_layers, settings.layers, settings.mode):
            k = str(L)
            ans = [a[k] for a in norm]
            change = _rate([not same_answer(x, a["base"]) for x, a, ok in zip(ans, norm, answered) if ok])
            flip = _rate([same_answer(x, g) for x, g in zip(ans, gold_s)])
            flip_own = _rate([same_answer(x, a["source"]) for x, a in zip(ans, norm)])
            acc = _rate([same_answer(x, g) for x, g in zip(ans, gold_t)])
            margins = [float(r["margins"][k]) for r in items if r["margins"][k] is not None]
            m = bootstrap_mean_ci(margins, n_boot=settings.n_boot, seed=settings.seed) if margins else (np.nan,) * 3
            rows.append({
                "task": task, "layer": L, "unified_layer": adapter.unified_index("llm", L), "mode": settings.mode,
                "n": len(items), "n_failed": n_failed,
                "change_rate": change[0], "change_low": change[1], "change_high": change[2],
                "flip_rate": flip[0], "flip_low": flip[1], "flip_high": flip[2],
                "accuracy": acc[0], "accuracy_low": acc[1], "accuracy_high": acc[2],
                "margin": m[0], "margin_low": m[1], "margin_high": m[2], "n_margin": len(margins),
                "flip_own_rate": flip_own[0], "flip_own_low": flip_own[1], "flip_own_high": flip_own[2],
                "baseline_accuracy": base_acc, "baseline_margin": base_margin,
                "n_resized": sum(1 for r in items if r.get("resized")),
                "n_empty_base": answered.count(False),
            })
    return pd.DataFrame(rows, columns=VISION_COLUMNS)


def run_vision_probe(model: str | os.PathLike[str] | ProbeModel, pairs: str | os.PathLike[str],
                     out: str | os.PathLike[str], settings: VisionProbeSettings | None = None, *,
                     limit: int | None = None, dtype: str | None = None, device: str | None = None,
                     device_map: str | Mapping[str, Any] | None = None, overwrite: bool = False, plots: bool = True,
                     progress: ProgressFn | None = None) -> VisionResult:
    """Run the swap probe on every pair (resuming finished ones) and write DIR's tables and plots."""
    from frankenlab.manifest import settings_key
    from frankenlab.probe.plots import vision_plots
    from frankenlab.tasks.pairs import load_probe_pairs

    settings = settings or VisionProbeSettings()
    rows = first_per_task(load_probe_pairs(pairs), limit, lambda r: r["task"])
    adapter, fingerprint, path = describe_model(model)
    if not adapter.has_vision:
        raise ProbeError(f"{path} is a text-only model ({adapter.family}); the vision probe needs a vision-language "
                         "model.")
    n_layers = adapter.n_llm_layers
    layer_variants(n_layers, settings.layers, settings.mode)  # validates before anything is written
    if settings.layers is not None and max(settings.layers, default=0) >= n_layers:
        raise FrankenlabError(f"layers {settings.layers} exceed the model's {n_layers} decoder layers.")
    inputs = {"model": fingerprint, "pairs": file_digest(pairs)}
    key = settings_key({"settings": settings.model_dump(), "inputs": inputs, "limit": limit,
                        "dtype": load_dtype(dtype, device, device_map)})
    out_dir = Path(out)
    store = ItemStore(out_dir, NAME, key, overwrite=overwrite,
                      final_names=("vision_layers.csv", "vision_layers.parquet"))
    todo = [r for r in rows if r["id"] not in store.done]
    done = len(rows) - len(todo)
    if progress is not None:
        progress(done, len(rows))
    pm: ProbeModel | None = model if isinstance(model, ProbeModel) else None
    if todo and pm is None:  # a finished run is only re-tabulated: no weights loaded
        pm = open_model(model, dtype=dtype, device=device, device_map=device_map)
    kinds = {row["id"]: kind_of(task=row["task"], meta=row["meta"]) for row in rows}
    for row in todo:
        assert pm is not None
        meta = row["meta"]
        kind = kinds[row["id"]]
        record: dict[str, Any] = {"key": row["id"], "id": row["id"], "task": row["task"],
                                  "target_answer": meta["target_answer"], "source_answer": meta["source_answer"],
                                  "kind": kind, "max_new_tokens": resolve_max_new_tokens(settings.max_new_tokens, kind)}
        try:
            with Image.open(row["target_image"]) as t_img, Image.open(row["source_image"]) as s_img:
                res = swap_pair(pm.model, pm.processor, pm.adapter, t_img.convert("RGB"), s_img.convert("RGB"),
                                row["prompt"], meta["target_answer"], meta["source_answer"], settings, kind=kind)
            margins = {k: (v if math.isfinite(v) else None) for k, v in res.margins.items()}  # JSON has no NaN
            record.update(status="ok", answers=res.answers, margins=margins, resized=res.resized,
                          n_image_tokens=res.n_image_tokens, margin_prefix=res.margin_prefix)
        except (FrankenlabError, RuntimeError, ValueError, OSError) as exc:
            log.warning("pair %s failed: %s", row["id"], exc)
            record.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        store.add(record)
        done += 1
        if progress is not None:
            progress(done, len(rows))
    wanted = {row["id"] for row in rows}
    records = [r for r in store.records() if r["key"] in wanted]
    table = vision_table(records, adapter, settings, n_layers)
    failed = [r for r in records if r["status"] != "ok"]
    resized = sum(1 for r in records if r.get("resized"))
    if resized:
        log.warning("%d pairs had different visual-token counts or patch grids; their source images were resized "
                    "to the target's size before encoding", resized)
    lengths = {k: resolve_max_new_tokens(settings.max_new_tokens, k) for k in sorted(set(kinds.values()))}
    manifest = finish(
        out_dir, NAME, key, {"vision_layers": (table, VISION_COLUMNS)},
        manifest_args={**settings.model_dump(), "model": path, "pairs": str(pairs), "limit": limit,
                       "device_map": device_map},
        inputs=inputs,
        extra={"n_items": len(rows), "n_ok": len(records) - len(failed), "n_failed": len(failed),
               "failed": [{"id": r["id"], "error": r["error"]} for r in failed], "n_resized": resized,
               "decoding": probe_decoding(pm, path, lengths, out_dir),
               "swap": "prefill only; cache holds the swapped image K/V; decode steps append only new tokens",
               "unified_layer": "LLM decoder layer k has unified index k + 1"},
        plots=(lambda d: vision_plots(table, d)) if plots else None,
    )
    return VisionResult(table, [r for r in records if r["status"] == "ok"], failed, manifest, out_dir)
