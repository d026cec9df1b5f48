"""Per-tensor records → tidy tables per tensor, unified layer, module kind and region, plus a summary.

Aggregates (`fro_sum`, means, ranks, ...) are taken over weight **matrices** (≥ 2-D tensors);
1-D tensors (norm scales, biases) are summed separately in `vector_fro_sum` so their energy is
visible without skewing per-matrix means. Means of spectrum-derived values never mix a full
spectrum with a top-k one: `effective_rank_mean` averages the group's full-spectrum matrices when
it has any, else its top-k ones, and says which in `effective_rank_scope` (count in
`effective_rank_n`); `update_rank` exists only for full spectra.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from frankenlab.arch.base import TensorInfo
from frankenlab.compare.stream import ComparePlan
from frankenlab.regions import Partition, Region, parse_region

GEOMETRY_COLUMNS = ("subspace_angle_max_deg", "subspace_angle_mean_deg", "projection_distance", "sigma_drift_topk",
                    "principal_share", "principal_share_null")
NEW_COLUMNS = (*GEOMETRY_COLUMNS, "below_bf16_frac", "update_rank", "update_rank_frac")  # issue #13
TENSOR_COLUMNS = (
    "name", "section", "layer", "kind", "phase", "fro", "rel_fro", "max_abs", "unchanged_frac", "sigma1",
    "stable_rank", "effective_rank", "effective_rank_scope", "effective_rank_topk", "svd_method", "cos_in_rl",
    *NEW_COLUMNS, "subspace_k",
    "ref_fro", "is_matrix", "ndim", "shape", "numel", "dtype", "block", "canonical",
)
_FLOAT_COLUMNS = ("fro", "rel_fro", "max_abs", "unchanged_frac", "sigma1", "stable_rank", "effective_rank",
                  "effective_rank_topk", "ref_fro", "cos_in_rl", *NEW_COLUMNS)
AGG_COLUMNS = ("fro_sum", "fro_mean", "rel_fro_mean", "stable_rank_mean", "effective_rank_mean")
_EXTRA = ("effective_rank_topk_mean", "fro_total", "ref_fro_total", "rel_fro_total", "unchanged_frac", "max_abs",
          "n_matrices", "n_vectors",
          "vector_fro_sum", "effective_rank_scope", "effective_rank_n", "cos_in_rl",
          *(f"{c}_mean" for c in NEW_COLUMNS))
LAYER_COLUMNS = ("layer", "section", "phase", *AGG_COLUMNS, "block", *_EXTRA)
KIND_COLUMNS = ("section", "kind", "phase", *AGG_COLUMNS, *_EXTRA)
REGION_COLUMNS = ("region", "phase", *AGG_COLUMNS, "section", "first_layer", "last_layer", "energy_share", *_EXTRA)
SPECTRA_COLUMNS = ("name", "phase", "i", "sigma", "sigma_norm", "section", "layer", "kind", "canonical")
SPARSITY_COLUMNS = ("name", "phase", "layer", "section", "kind", "tol", "frac_changed", "numel", "is_matrix",
                    "canonical")
REGION_SPECTRA_COLUMNS = ("region", "phase", "kind", "i", "mean", "median", "q25", "q75", "n")
_HELPERS = ("_fro_in", "_fro_rl", "_dot")
PHASE_UPDATED = {"in": "in", "rl": "rl"}  # phase → the role whose weights were updated (its dtype is reported)


def tensors_table(plan: ComparePlan, records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per tensor and phase, in checkpoint order (phase `in` rows first)."""
    by_name = {r["canonical"]: r for r in records}
    rows = []
    for phase in plan.phases:
        updated = PHASE_UPDATED[phase]
        for tp in plan.tensors:
            rec = by_name[tp.canonical]
            p = rec["phases"][phase]
            cos = rec.get("cos_in_rl")
            fro_in = rec["phases"]["in"]["fro"] if "in" in rec["phases"] else math.nan
            fro_rl = rec["phases"]["rl"]["fro"]
            rows.append({
                "name": tp.name, "section": tp.info.section, "layer": tp.info.layer, "kind": tp.info.kind,
                "phase": phase, **{k: p[k] for k in ("fro", "rel_fro", "max_abs", "unchanged_frac", "sigma1",
                                                     "stable_rank", "effective_rank", "effective_rank_scope",
                                                     "effective_rank_topk", "svd_method", "ref_fro")},
                **{k: p.get(k, math.nan) for k in NEW_COLUMNS}, "subspace_k": p.get("subspace_k"),
                "cos_in_rl": _nan(cos), "is_matrix": tp.is_matrix, "ndim": len(tp.shape),
                "shape": "x".join(str(s) for s in tp.shape), "numel": tp.numel, "dtype": dict(tp.dtypes)[updated],
                "block": tp.info.block, "canonical": tp.canonical,
                "_fro_in": fro_in, "_fro_rl": fro_rl,
                "_dot": 0.0 if cos is None or math.isnan(_nan(cos)) else cos * fro_in * fro_rl,
            })
    df = pd.DataFrame(rows)
    for col in ("layer", "block", "subspace_k"):
        df[col] = pd.array([None if v is None or (isinstance(v, float) and math.isnan(v)) else int(v)
                            for v in df[col]], dtype="Int64")
    for col in _FLOAT_COLUMNS:
        df[col] = df[col].astype(float)
    return df


def _nan(x: Any) -> float:
    return math.nan if x is None else float(x)


def _aggregate(g: pd.DataFrame) -> dict[str, Any]:
    m = g[g["is_matrix"]]
    v = g[~g["is_matrix"]]
    has = len(m) > 0
    fro_total = math.sqrt(float((m["fro"] ** 2).sum())) if has else math.nan
    ref_total = math.sqrt(float((m["ref_fro"] ** 2).sum())) if has else math.nan
    numel = float(m["numel"].sum())
    denom = math.sqrt(float((m["_fro_in"] ** 2).sum()) * float((m["_fro_rl"] ** 2).sum())) if has else 0.0
    eff, eff_scope = _same_scope(m)
    return {
        "fro_sum": float(m["fro"].sum()) if has else math.nan,
        "fro_mean": float(m["fro"].mean()) if has else math.nan,
        "rel_fro_mean": float(m["rel_fro"].mean()) if has else math.nan,
        "stable_rank_mean": float(m["stable_rank"].mean()) if has else math.nan,
        "effective_rank_mean": float(eff.mean()) if len(eff) else math.nan,
        "effective_rank_topk_mean": float(m["effective_rank_topk"].mean()) if has else math.nan,
        "fro_total": fro_total,
        "ref_fro_total": ref_total,
        "rel_fro_total": fro_total / ref_total if has and ref_total > 0 else math.nan,
        "unchanged_frac": float((m["unchanged_frac"] * m["numel"]).sum()) / numel if numel else math.nan,
        "max_abs": float(m["max_abs"].max()) if has else math.nan,
        "n_matrices": len(m),
        "n_vectors": len(v),
        "vector_fro_sum": float(v["fro"].sum()),
        "effective_rank_scope": eff_scope,
        "effective_rank_n": len(eff),
        "cos_in_rl": float(m["_dot"].sum()) / denom if denom > 0 else math.nan,
        **{f"{c}_mean": float(m[c].mean()) if has and m[c].notna().any() else math.nan for c in NEW_COLUMNS},
    }


def _same_scope(m: pd.DataFrame) -> tuple[pd.Series, str | None]:
    """The effective ranks one mean may average: the full-spectrum ones if any, else one top-k scope."""
    rows = m[m["effective_rank"].notna()]
    scopes = set(rows["effective_rank_scope"].dropna())
    if not scopes:
        return rows["effective_rank"].iloc[:0], None
    scope = "full" if "full" in scopes else sorted(scopes)[0]
    return rows.loc[rows["effective_rank_scope"] == scope, "effective_rank"], scope


def _grouped(df: pd.DataFrame, keys: list[str], columns: tuple[str, ...]) -> pd.DataFrame:
    rows = [dict(zip(keys, key if isinstance(key, tuple) else (key,))) | _aggregate(g)
            for key, g in df.groupby(keys, sort=False, dropna=False)]
    return pd.DataFrame(rows, columns=list(columns))


def layers_table(tensors: pd.DataFrame) -> pd.DataFrame:
    """One row per unified layer and phase (non-layer tensors such as embeddings are left out)."""
    t = tensors[tensors["layer"].notna()]
    rows = []
    for (layer, section, phase), g in t.groupby(["layer", "section", "phase"], sort=False):
        rows.append({"layer": int(layer), "section": section, "phase": phase,
                     "block": g["block"].iloc[0] if section != "projector" else pd.NA} | _aggregate(g))
    out = pd.DataFrame(rows, columns=list(LAYER_COLUMNS))
    out["layer"] = out["layer"].astype("Int64")
    out["block"] = out["block"].astype("Int64")
    return out.sort_values(["phase", "layer"], kind="stable").reset_index(drop=True)


def kinds_table(tensors: pd.DataFrame) -> pd.DataFrame:
    """One row per (section, module kind) and phase."""
    return _grouped(tensors, ["section", "kind", "phase"], KIND_COLUMNS)


def all_regions(plan: ComparePlan, partition: Partition | None) -> list[Region]:
    """vision, projector (VLMs), llm, then the LLM partition's parts (early/mid/late by default)."""
    adapter = plan.adapter
    head = [parse_region(name, adapter) for name in ("vision", "projector")] if adapter.has_vision else []
    return head + [parse_region("llm", adapter)] + (partition.regions() if partition is not None else [])


def _membership(tensors: pd.DataFrame, infos: dict[str, TensorInfo], region: Region) -> pd.Series:
    return tensors["canonical"].map(lambda c: region.contains(infos[c]))


def regions_table(tensors: pd.DataFrame, plan: ComparePlan, regions: list[Region]) -> pd.DataFrame:
    """One row per region and phase, plus `all` (every tensor, embeddings and head included)."""
    infos = {tp.canonical: tp.info for tp in plan.tensors}
    rows = []
    for phase in plan.phases:
        t = tensors[tensors["phase"] == phase]
        total = _aggregate(t)
        total_e = total["fro_total"] ** 2 if total["n_matrices"] else math.nan
        spans = [(r.name, r.section, *r.unified_span(plan.adapter), t[_membership(t, infos, r)]) for r in regions]
        spans.append(("all", "all", None, None, t))
        for name, section, lo, hi, g in spans:
            agg = _aggregate(g)
            share = agg["fro_total"] ** 2 / total_e if total_e and total_e > 0 and agg["n_matrices"] else math.nan
            rows.append({"region": name, "phase": phase, "section": section, "first_layer": lo, "last_layer": hi,
                         "energy_share": share} | agg)
    out = pd.DataFrame(rows, columns=list(REGION_COLUMNS))
    out["first_layer"] = out["first_layer"].astype("Int64")
    out["last_layer"] = out["last_layer"].astype("Int64")
    return out


def spectra_table(plan: ComparePlan, records: list[dict[str, Any]]) -> pd.DataFrame:
    """Long table of the stored top singular values: one row per tensor, phase and index i (1-based)."""
    by_name = {r["canonical"]: r for r in records}
    rows = []
    for phase in plan.phases:
        for tp in plan.tensors:
            values = by_name[tp.canonical]["phases"][phase]["spectrum"]
            s1 = values[0] if values else 0.0
            for i, s in enumerate(values, start=1):
                rows.append({"name": tp.name, "phase": phase, "i": i, "sigma": s,
                             "sigma_norm": s / s1 if s1 > 0 else math.nan, "section": tp.info.section,
                             "layer": tp.info.layer, "kind": tp.info.kind, "canonical": tp.canonical})
    out = pd.DataFrame(rows, columns=list(SPECTRA_COLUMNS))
    out["layer"] = out["layer"].astype("Int64")
    return out


def sparsity_table(plan: ComparePlan, records: list[dict[str, Any]]) -> pd.DataFrame:
    """Tolerance sweep: share of entries with |Δ| > tol·|w_ref|, per tensor, phase and tolerance."""
    by_name = {r["canonical"]: r for r in records}
    rows = []
    for phase in plan.phases:
        for tp in plan.tensors:
            for tol, frac in by_name[tp.canonical]["phases"][phase].get("sparsity", []):
                rows.append({"name": tp.name, "phase": phase, "layer": tp.info.layer, "section": tp.info.section,
                             "kind": tp.info.kind, "tol": float(tol), "frac_changed": _nan(frac),
                             "numel": tp.numel, "is_matrix": tp.is_matrix, "canonical": tp.canonical})
    out = pd.DataFrame(rows, columns=list(SPARSITY_COLUMNS))
    out["layer"] = out["layer"].astype("Int64")
    for col in ("tol", "frac_changed"):
        out[col] = out[col].astype(float)
    return out


def region_spectra_table(spectra: pd.DataFrame, plan: ComparePlan, regions: list[Region]) -> pd.DataFrame:
    """σ_i/σ1 aggregated over every matrix of one kind in a region (mean, median, quartiles, n)."""
    infos = {tp.canonical: tp.info for tp in plan.tensors}
    s = spectra[spectra["sigma_norm"].notna()]
    rows = []
    for region in regions:
        g = s[_membership(s, infos, region)] if len(s) else s
        for (phase, kind, i), h in g.groupby(["phase", "kind", "i"], sort=True):
            x = h["sigma_norm"].to_numpy(dtype=float)
            rows.append({"region": region.name, "phase": phase, "kind": kind, "i": int(i), "mean": float(x.mean()),
                         "median": float(np.median(x)), "q25": float(np.quantile(x, 0.25)),
                         "q75": float(np.quantile(x, 0.75)), "n": len(x)})
    return pd.DataFrame(rows, columns=list(REGION_SPECTRA_COLUMNS))


def public(df: pd.DataFrame) -> pd.DataFrame:
    """Drop the internal helper columns before a table leaves the library."""
    return df.drop(columns=[c for c in _HELPERS if c in df.columns])


def _clean(x: Any) -> Any:
    """JSON-safe: NaN → None, numpy scalars → Python."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def build_summary(plan: ComparePlan, tensors: pd.DataFrame, layers: pd.DataFrame, regions: pd.DataFrame,
                  settings: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers per phase, and how to read them."""
    per_phase: dict[str, Any] = {}
    for phase in plan.phases:
        t = tensors[tensors["phase"] == phase]
        lay = layers[layers["phase"] == phase]
        reg = regions[regions["phase"] == phase].set_index("region")
        top = t.sort_values("fro", ascending=False).head(10)
        peak = lay.loc[lay["fro_sum"].idxmax()] if len(lay) and lay["fro_sum"].notna().any() else None
        per_phase[phase] = {
            "fro_total": reg.loc["all", "fro_total"],
            "rel_fro_total": reg.loc["all", "rel_fro_total"],
            "unchanged_frac": reg.loc["all", "unchanged_frac"],
            "tensors_changed": int((t["fro"] > 0).sum()),
            "tensors_unchanged": int((t["fro"] == 0).sum()),
            "peak_layer": None if peak is None else {"layer": int(peak["layer"]), "section": peak["section"],
                                                     "fro_sum": float(peak["fro_sum"])},
            "regions": {name: {"fro_sum": row["fro_sum"], "energy_share": row["energy_share"],
                               "rel_fro_total": row["rel_fro_total"], "stable_rank_mean": row["stable_rank_mean"],
                               "effective_rank_mean": row["effective_rank_mean"],
                               "effective_rank_topk_mean": row["effective_rank_topk_mean"],
                               "cos_in_rl": row["cos_in_rl"],
                               **{f"{c}_mean": row[f"{c}_mean"] for c in NEW_COLUMNS}}
                        for name, row in reg.iterrows()},
            "top_tensors": [{"name": r["name"], "fro": r["fro"], "rel_fro": r["rel_fro"]} for _, r in top.iterrows()],
        }
    scopes = tensors["effective_rank_scope"].dropna().value_counts().to_dict()
    methods = tensors["svd_method"].dropna().value_counts().to_dict()
    summary = {
        "phases": list(plan.phases),
        "phase_definitions": {"in": "ΔIN = IN − BASE", "rl": "ΔRL = RL − IN"},
        "rel_fro_reference": {"in": "‖W_ref‖_F with W_ref = BASE", "rl": "‖W_ref‖_F with W_ref = IN"},
        "name_column": "tensor names as stored in the RL checkpoint's files",
        "aggregates_over": "weight matrices (ndim ≥ 2); 1-D tensors are summed in vector_fro_sum",
        "model": {"family": plan.adapter.family, "n_llm_layers": plan.adapter.n_llm_layers,
                  "n_vision_blocks": plan.adapter.n_vision_blocks},
        "n_tensors": len(plan.tensors),
        "n_matrices": sum(t.is_matrix for t in plan.tensors),
        "svd": {**settings, "methods": methods, "effective_rank_scope": scopes,
                "note": ("effective_rank uses the full spectrum where scope is 'full'; with the lowrank SVD "
                         "only the top-k singular values are known, so it is exp(H) over those k values "
                         "(scope 'topk'): at most k and not comparable with full-scope values. "
                         "effective_rank_topk is exp(H) over the top k for every tensor: comparable "
                         "across a mixed (--svd auto) run. Aggregated effective_rank_mean averages one scope "
                         "only (full when the group has full spectra). update_rank needs the full spectrum "
                         "and is empty for lowrank tensors. Geometry (subspace angles, sigma_drift_topk, "
                         "principal_share) uses the exact top-subspace_k singular vectors of W_ref and W_after "
                         "whatever the --svd mode (none: not computed).")},
        "per_phase": per_phase,
    }
    return _clean(summary)
