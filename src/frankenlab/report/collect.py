"""Read what each stage wrote (tables, plots, manifests) into one record per recipe."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from frankenlab.errors import FrankenlabError
from frankenlab.io.jsonl import iter_jsonl


@dataclass
class RecipeData:
    name: str
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # role → {path, fingerprint, model_type}
    tables: dict[str, pd.DataFrame | None] = field(default_factory=dict)
    plots: dict[str, list[Path]] = field(default_factory=dict)  # section → PNGs
    notes: dict[str, Any] = field(default_factory=dict)
    items: dict[str, Any] = field(default_factory=dict)  # per-item records the claim tests resample


def _csv(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.exists() else None


def _jsonl(path: Path) -> list[dict[str, Any]] | None:
    """Item records of a stage (None when it wrote none); a torn last line of a killed run is skipped."""
    if not path.is_file():
        return None
    return [row for _, row in iter_jsonl(path, error=FrankenlabError, fix="rerun the stage that wrote it",
                                         on_torn=lambda _: None)]


def _pngs(folder: Path, skip: tuple[str, ...] = ()) -> list[Path]:
    """PNGs under `folder`, leaving out those under its subfolders named in `skip`."""
    if not folder.exists():
        return []
    return sorted(p for p in folder.rglob("*.png") if not set(p.relative_to(folder).parts[:-1]) & set(skip))


def collect_recipe(name: str, stage_dirs: dict[str, Path], inputs: dict[str, dict[str, Any]]) -> RecipeData:
    """Gather every table the report shows; a stage that did not run leaves its entries None."""
    d = RecipeData(name=name, inputs=inputs)
    cmp_dir = stage_dirs["compare"]
    d.tables["compare_layers"] = _csv(cmp_dir / "layers.csv")
    d.tables["compare_regions"] = _csv(cmp_dir / "regions.csv")
    d.tables["compare_tensors"] = _csv(cmp_dir / "tensors.csv")  # per matrix: the geometry claims' unit
    d.plots["compare"] = _pngs(cmp_dir / "plots")
    for role in ("IN", "RL"):
        v = stage_dirs["probe_vision"] / role
        d.tables[f"vision_{role.lower()}"] = _csv(v / "vision_layers.csv")
        a = stage_dirs["probe_ablate"] / role
        d.tables[f"ablation_{role.lower()}"] = _csv(a / "ablation_layers.csv")
    d.plots["probe_vision"] = _pngs(stage_dirs["probe_vision"])
    d.plots["probe_ablate"] = _pngs(stage_dirs["probe_ablate"])
    att = stage_dirs["probe_attention"]
    d.tables["attention_layers"] = _csv(att / "attention_layers.csv")
    d.tables["attention_diff"] = _csv(att / "attention_diff.csv")
    d.plots["probe_attention"] = _pngs(att)
    ev = stage_dirs["merge_eval"]
    d.tables["eval_metrics"] = _csv(ev / "metrics.csv")
    d.tables["eval_summary"] = _csv(ev / "summary.csv")
    d.tables["eval_comparisons"] = _csv(ev / "comparisons.csv")
    d.plots["merge_eval"] = _pngs(ev, skip=("passk",))
    d.tables["passk"] = _csv(ev / "passk" / "passk.csv")
    d.plots["passk"] = _pngs(ev / "passk" / "plots")
    kl, lens = stage_dirs.get("probe_kl"), stage_dirs.get("probe_lens")
    if kl is not None:
        d.tables["kl_classes"] = _csv(kl / "kl_classes.csv")
        d.tables["kl_items"] = _csv(kl / "kl_items.csv")
        d.tables["kl_top"] = _csv(kl / "kl_top.csv")
        d.plots["probe_kl"] = _pngs(kl)
    if lens is not None:
        d.tables["lens_layers"] = _csv(lens / "lens_layers.csv")
        d.tables["lens_items"] = _csv(lens / "lens_items.csv")
        d.tables["lens_pair"] = _csv(lens / "lens_pair.csv")
        d.plots["probe_lens"] = _pngs(lens)
    variants = ev / "variants.json"
    if variants.exists():
        d.notes["variants"] = json.loads(variants.read_text())
        d.notes["rank_variants"] = {label: v["rank"] for label, v in d.notes["variants"].items() if v.get("rank")}
    fr = stage_dirs["freeze"]
    d.tables["necessity"] = _csv(fr / "necessity.csv")
    d.plots["freeze"] = _pngs(fr)
    for role in ("IN", "RL"):
        d.items[f"vision_{role.lower()}"] = _jsonl(stage_dirs["probe_vision"] / role / "vision_items.jsonl")
        d.items[f"ablation_{role.lower()}"] = _jsonl(stage_dirs["probe_ablate"] / role / "ablation_items.jsonl")
    d.items["attention"] = _jsonl(att / "attention_items.jsonl")
    d.items["eval"] = _jsonl(ev / "items.jsonl")
    frozen = {p.stem: _jsonl(p) for p in sorted((fr / "items").glob("*.jsonl"))} if (fr / "items").is_dir() else {}
    d.items["freeze"] = frozen or None
    return d
