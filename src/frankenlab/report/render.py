"""HTML (self-contained: plots inlined as base64, no scripts, no network) and Markdown renderings.

Both renderings are built from the same intermediate pieces (`Block` tables of strings, PNG figures),
so report.md says what report.html says; no value ever reaches the page as a Python repr.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import pandas as pd

from frankenlab.io import atomic_file
from frankenlab.report.collect import RecipeData
from frankenlab.report.plots import PHASE_STYLE, gain_panels, layer_lines

TABLE_COLUMNS: dict[str, list[str]] = {
    "compare_regions": ["region", "phase", "fro_sum", "fro_mean", "rel_fro_mean", "stable_rank_mean",
                        "effective_rank_mean"],
    "attention_diff": ["mode", "layer", "unified_layer", "n", "diff", "diff_low", "diff_high", "p"],
    "eval_metrics": ["model", "metric", "value", "ci_low", "ci_high", "n", "n11", "n10", "n01", "n00"],
    "necessity": ["model", "family", "n", "acc", "gain", "gain_low", "gain_high", "p_value", "gain_vs_rl",
                  "gain_vs_rl_low", "gain_vs_rl_high", "p_value_vs_rl"],
    "vision_rl": ["task", "layer", "unified_layer", "n", "change_rate", "flip_rate", "accuracy"],
    "vision_in": ["task", "layer", "unified_layer", "n", "change_rate", "flip_rate", "accuracy"],
    "ablation_rl": ["task", "layer", "unified_layer", "n", "accuracy", "gold_logprob"],
    "ablation_in": ["task", "layer", "unified_layer", "n", "accuracy", "gold_logprob"],
    "kl_classes": ["class", "n_tokens", "n_items", "kl_rl_in_mean", "kl_rl_in_low", "kl_rl_in_high", "kl_in_rl_mean",
                   "kl_in_rl_low", "kl_in_rl_high"],
    "kl_top": ["item", "position", "class", "context", "kl_rl_in", "kl_in_rl", "rl_top", "in_top"],
    "lens_pair": ["task", "n", "mean_in", "mean_rl", "diff", "diff_low", "diff_high", "p", "n_in_only", "n_rl_only"],
    "passk": ["model", "task", "setting", "k", "pass_at_k", "low", "high", "n", "n_failed"],
}
SECTIONS = [
    ("Update characterization (parameter comparison)", "compare", ["compare_regions"]),
    ("Weight geometry (per matrix: sparsity, rank, principal directions, rotation)", "geometry", []),
    ("Vision localization (visual-token swapping)", "probe_vision", ["vision_rl", "vision_in"]),
    ("Reasoning localization (layer ablation)", "probe_ablate", ["ablation_rl", "ablation_in"]),
    ("Attention to vision, IN vs RL", "probe_attention", ["attention_diff"]),
    ("Behaviour: how far RL moved the next-token distributions (per-token KL)", "probe_kl",
     ["kl_classes", "kl_top"]),
    ("Behaviour: where the answer forms (logit lens, IN vs RL)", "probe_lens", ["lens_pair"]),
    ("Transferability (merged variants: M_vis / M_v2r / M_rea)", "merge_eval", ["eval_metrics"]),
    ("Coverage (pass@k of IN, RL and the merged variants)", "passk", ["passk"]),
    ("Necessity (freezing during RL)", "freeze", ["necessity"]),
]
#: The measures of the merged-variant table, in display order.
VARIANT_MEASURES = ("M_vis", "M_v2r", "M_rea", "accuracy:image")
MODEL_ROLES = ("BASE", "IN", "RL")
#: Whose figure a PNG is when it lies in no IN/ or RL/ folder, per section.
_STAGE_WHO = {"compare": "pair updates (ΔRL; ΔIN with BASE)", "geometry": "pair updates (ΔRL; ΔIN with BASE)",
              "probe_attention": "pair (IN vs RL)", "probe_kl": "pair (IN vs RL)", "probe_lens": "pair (IN vs RL)",
              "merge_eval": "all models", "passk": "all models", "freeze": "RL variants vs IN"}
#: What a stage PNG shows, by file name (a per-mode or per-phase suffix is filled in from the name).
_PNG_SHOWS = {
    "vision_change.png": "share of items whose answer changes when the image's visual K/V is swapped in at the "
                         "marked layers, per task (Wilson 95 %).",
    "vision_flip.png": "share of items whose answer flips to the swapped-in image's answer, per task (Wilson 95 %).",
    "ablation_accuracy.png": "accuracy with one decoder layer skipped, per task; dashed: nothing skipped.",
    "ablation_gold_logprob.png": "mean log-probability of the gold answer token with one decoder layer skipped, "
                                 "per task; dashed: nothing skipped.",
    "attention_layers.png": "per-layer share of response-token attention on image tokens, IN and RL, each "
                            "response mode (bootstrap 95 %).",
    "attention_diff.png": "RL − IN per-layer attention share on image tokens, per response mode (paired "
                          "bootstrap 95 %).",
    "attention_heads_{}.png": "layer × head attention share on image tokens, {} response: IN and RL on one colour "
                              "scale, RL − IN on a scale symmetric around 0.",
    "kl_classes.png": "mean per-token KL between RL and IN in both directions, per position class (item bootstrap "
                      "95 %).",
    "lens_logprob.png": "logit lens at the last prompt token: mean log p(gold first token) per layer, IN and RL.",
    "lens_top1.png": "logit lens at the last prompt token: share of items with the gold token top-1 per layer, IN "
                     "and RL.",
    "summary.png": "accuracy of every model and merged variant per task and setting (95 % bootstrap CI).",
    "metrics.png": "M_vis, M_v2r and M_rea of every model and merged variant (95 % bootstrap CI).",
    "passk.png": "pass@k against k of every model and merged variant, per task and setting (95 % bootstrap).",
    "energy_layers.png": "update energy ‖Δ‖_F per layer, vision tower, projector and LLM.",
    "rel_energy_layers.png": "relative update energy ‖Δ‖_F / ‖W‖_F per layer.",
    "ranks_layers.png": "stable and effective rank of the update per layer (mean over the layer's matrices).",
    "spectra_regions.png": "normalized singular-value spectra of the update per region and module kind.",
    "geometry_layers.png": "rotation of W's top-k singular subspaces and update energy inside them, per layer.",
    "sparsity_layers.png": "share of unchanged entries and of entries a bf16 weight would absorb, per layer.",
    "cosine_layers.png": "cosine between the RL and the IN update per layer.",
    "heatmap_fro_{}.png": "‖Δ‖_F per layer × module kind of the {} update (white: unchanged, grey: absent).",
}
_PHASE_NAMES = {"rl": "ΔRL (IN → RL)", "in": "ΔIN (BASE → IN)"}
#: The claims decided from compare's per-matrix geometry, listed again in the Weight geometry section.
GEOMETRY_CLAIMS = ("rl_update_sparse_full_rank", "rl_off_principal", "rl_rotates_less_than_sft")
#: What a section says when it has nothing to show (default: the stage did not run).
_EMPTY = {"geometry": "No per-matrix geometry for this recipe: the compare stage wrote no tensors.csv with 2-D LLM "
                      "matrices (see Stages).",
          "passk": "No pass@k for this recipe: set eval.samples (e.g. 16) in the study config to sample answers."}
_NO_RESULTS = "This stage produced no results for this recipe (see Stages)."
_BADGE = {"supported": "#1a7f37", "contradicted": "#cf222e", "inconclusive": "#9a6700"}
_HEADLINE_KEYS = ("effect", "ci_low", "ci_high", "n", "p", "test")
_SUBTEST_COLUMNS = ["subtest", "effect", "95 % CI", "n", "p", "p (Holm)", "test", "verdict"]
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1f2328;line-height:1.45}
h1{font-size:1.7em}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:1.8em}
h3{font-size:1.08em;margin:1.2em 0 .3em}
table{border-collapse:collapse;margin:.6em 0;font-size:.86em}td,th{border:1px solid #d0d7de;padding:3px 7px;
text-align:right;vertical-align:top}th{background:#f6f8fa}td:first-child,th:first-child{text-align:left}
table.kv th{text-align:left;font-weight:600}table.kv td{text-align:left}table table{margin:0;font-size:1em}
.badge{color:#fff;border-radius:4px;padding:1px 7px;font-size:.85em;font-weight:600;white-space:nowrap}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}.plots{display:flex;flex-wrap:wrap;gap:10px}
.plots figure{margin:0;flex:1 1 480px}figcaption{font-size:.8em;color:#57606a}
.muted{color:#57606a}details{margin:.5em 0}code{background:#f6f8fa;padding:0 3px}
.claim{border-left:3px solid #d0d7de;padding:.1em 0 .1em .9em;margin:1em 0}
.verdict{margin:.5em 0 1em}.verdict p{margin:.25em 0}.test{font-family:ui-monospace,monospace;font-size:.86em}
.caption{font-size:.86em;margin:.5em 0 0}
"""


# ---------------------------------------------------------------- numbers and plain text


def _missing(x: Any) -> bool:
    if x is None or x is pd.NA:
        return True
    return isinstance(x, float) and math.isnan(x)


def fmt(x: Any) -> str:
    """The one number format used in both renderings (and by the report test)."""
    if _missing(x):
        return "–"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if x.is_integer() and abs(x) < 1e6:
            return str(int(x))
        return f"{x:.4g}"
    return str(x)


def num(x: Any, signed: bool = False) -> str:
    """An effect or a probability to three decimals (signed for differences); "–" when missing."""
    if _missing(x):
        return "–"
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    sign = "+" if signed else ""
    if v != 0 and (abs(v) >= 1000 or abs(v) < 0.001):
        return f"{v:{sign}.3g}"
    return f"{v:{sign}.3f}"


def pval(p: Any) -> str:
    """Two significant digits; below 0.001 as "< 0.001"."""
    if _missing(p):
        return "–"
    v = float(p)
    return "< 0.001" if v < 0.001 else f"{v:.2g}"


def interval(low: Any, high: Any, signed: bool = False) -> str:
    """"[low, high]", or "–" when neither bound is known."""
    if _missing(low) and _missing(high):
        return "–"
    return f"[{num(low, signed)}, {num(high, signed)}]"


def inline(v: Any) -> str:
    """Any evidence value as readable text: mappings as "key: value; …", sequences as "a, b"."""
    if isinstance(v, dict):
        return "; ".join(f"{k}: {inline(x)}" for k, x in v.items()) or "–"
    if isinstance(v, (list, tuple)):
        return ", ".join(inline(x) for x in v) or "–"
    return fmt(v)


def _p_phrase(p: Any) -> str:
    s = pval(p)
    return f"p {s}" if s.startswith("<") else f"p = {s}"


def headline(c: dict[str, Any]) -> str:
    """The claim's headline test in one line, e.g. "effect +0.031, 95 % CI [+0.004, +0.058], n = 800, …"."""
    if all(_missing(c.get(k)) for k in _HEADLINE_KEYS):
        return "headline test: –"
    ci = interval(c.get("ci_low"), c.get("ci_high"), signed=True)
    return (f"effect {num(c.get('effect'), signed=True)}, 95 % CI {ci}, n = {fmt(c.get('n'))}, "
            f"{_p_phrase(c.get('p'))}, {c.get('test') or '–'}")


def reason_of(c: dict[str, Any]) -> str:
    """The reason sentence; old-style claims kept theirs under evidence["reason"]."""
    ev = c.get("evidence") or {}
    return str(c.get("reason") or (ev.get("reason") if isinstance(ev, dict) else None) or "–")


def model_of(path: Path) -> str | None:
    """The model a probe plot belongs to, from its folder (stage/IN/plots/x.png → IN)."""
    for part in (path.parent.name, path.parent.parent.name):
        if part.upper() in MODEL_ROLES:
            return part.upper()
    return None


# ---------------------------------------------------------------- intermediate pieces


class Verdict(str):
    """A table cell holding a verdict: a coloured badge in HTML, emphasis in Markdown."""


Cell = Union[str, Verdict, "Block"]


@dataclass
class Block:
    """A small table of display strings; `columns` None makes it a key/value table (rows [key, value])."""

    title: str
    columns: list[str] | None
    rows: list[list[Cell]]
    key: str | None = None  # data-table attribute
    note: str = ""


@dataclass
class Plot:
    """A PNG the report drew itself from a table."""

    name: str
    png: bytes
    caption: str


@dataclass
class Extras:
    """What a section shows beyond the stage's own tables and PNGs."""

    blocks: list[Block] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)


def _dict_is_flat(d: dict[str, Any]) -> bool:
    return all(not isinstance(v, dict) and not (isinstance(v, (list, tuple)) and any(isinstance(x, (dict, list, tuple))
                                                                                     for x in v)) for v in d.values())


def _grid(title: str, items: Sequence[tuple[str | None, dict[str, Any]]]) -> Block:
    """Rows of dicts as a table over the union of their keys (a row label first when given)."""
    cols = list(dict.fromkeys(k for _, d in items for k in d))
    labelled = any(lbl is not None for lbl, _ in items)
    rows: list[list[Cell]] = [([lbl or ""] if labelled else []) + [inline(d.get(k)) for k in cols] for lbl, d in items]
    return Block(title, ([""] if labelled else []) + cols, rows)


def evidence_blocks(ev: Any, skip_reason: bool) -> list[Block]:
    """Subtests, the evidence table, the remaining scalars (key/value), nested mappings as their own tables."""
    if not isinstance(ev, dict):
        return [Block("evidence", None, [["value", inline(ev)]])] if not _missing(ev) else []
    blocks: list[Block] = []
    subs = ev.get("subtests")
    if isinstance(subs, list) and subs:
        rows: list[list[Cell]] = []
        for s in subs:
            s = s if isinstance(s, dict) else {"name": s}
            rows.append([inline(s.get("name")), num(s.get("effect"), signed=True),
                         interval(s.get("ci_low"), s.get("ci_high"), signed=True), fmt(s.get("n")), pval(s.get("p")),
                         pval(s.get("p_holm")), inline(s.get("test")),
                         Verdict(s.get("verdict")) if s.get("verdict") else "–"])
        blocks.append(Block("tests combined (p adjusted by Holm over the subtests)", list(_SUBTEST_COLUMNS), rows,
                            key="subtests"))
    table = ev.get("table")
    if isinstance(table, dict) and table.get("columns") and table.get("rows"):  # a header alone says nothing
        cols = [inline(c) for c in table["columns"]]
        blocks.append(Block("evidence table", cols, [[inline(x) for x in row] for row in table.get("rows") or []],
                            key="evidence"))
    kv: list[list[Cell]] = []
    nested: list[Block] = []
    for k, v in ev.items():
        if k in ("subtests", "table") or (k == "reason" and skip_reason):
            continue
        if isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values()):
            nested.append(_grid(k, [(str(lbl), d) for lbl, d in v.items()]))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            nested.append(_grid(k, [(None, d) for d in v]))
        elif isinstance(v, dict) and v and _dict_is_flat(v):
            kv.append([str(k), Block(str(k), None, [[str(kk), inline(vv)] for kk, vv in v.items()])])
        else:
            kv.append([str(k), inline(v)])
    if kv:
        blocks.append(Block("other evidence", None, kv))
    return blocks + nested


def _pick(df: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per `keys` group the pooled row (task "all"), or the only row when there is just one task."""
    if "task" not in df.columns:
        return df.drop_duplicates(keys)
    out = []
    for _, g in df.groupby(keys, sort=False):
        pooled = g[g["task"] == "all"]
        if len(pooled):
            out.append(pooled.iloc[0])
        elif g["task"].nunique() == 1:
            out.append(g.iloc[0])
    return pd.DataFrame(out)


def variant_rows(metrics: pd.DataFrame | None, comparisons: pd.DataFrame | None,
                 reference: str = "IN") -> pd.DataFrame:
    """Long table model × measure: value with its interval, and the paired gain over `reference`.

    Values come from metrics.csv (pooled task); gains from comparisons.csv, whose diff is model_a − model_b,
    so a row with the reference as model_a is negated. Measures without a metrics row take their value from
    the comparison (no interval).
    """
    cols = ["model", "metric", "value", "ci_low", "ci_high", "n", "gain", "gain_low", "gain_high", "p"]
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    order: list[str] = []
    if metrics is not None and not metrics.empty:
        for _, r in _pick(metrics[metrics["metric"].isin(VARIANT_MEASURES)], ["model", "metric"]).iterrows():
            m = str(r["model"])
            order.append(m)
            rows[(m, str(r["metric"]))] = {"model": m, "metric": str(r["metric"]), "value": r["value"],
                                           "ci_low": r.get("ci_low"), "ci_high": r.get("ci_high"), "n": r.get("n")}
    if comparisons is not None and not comparisons.empty:
        cmp = comparisons[comparisons["measure"].isin(VARIANT_MEASURES)
                          & ((comparisons["model_a"] == reference) | (comparisons["model_b"] == reference))]
        for _, r in _pick(cmp, ["model_a", "model_b", "measure"]).iterrows():
            ref_first = r["model_a"] == reference
            other = str(r["model_b"] if ref_first else r["model_a"])
            sign = -1.0 if ref_first else 1.0
            lo, hi = sign * float(r["ci_low"]), sign * float(r["ci_high"])
            measure = str(r["measure"])
            for m, value in ((reference, r["value_a"] if ref_first else r["value_b"]),
                             (other, r["value_b"] if ref_first else r["value_a"])):
                order.append(m)
                rows.setdefault((m, measure), {"model": m, "metric": measure, "value": value, "n": r.get("n")})
            rows[(other, measure)].update(gain=sign * float(r["diff"]), gain_low=min(lo, hi), gain_high=max(lo, hi),
                                          p=r.get("p_mcnemar"))
    if not rows:
        return pd.DataFrame(columns=cols)
    rank = {m: i for i, m in enumerate(dict.fromkeys([reference, *order]))}
    out = pd.DataFrame(list(rows.values())).reindex(columns=cols)
    out["_m"] = out["model"].map(rank)
    out["_k"] = out["metric"].map({k: i for i, k in enumerate(VARIANT_MEASURES)})
    return out.sort_values(["_m", "_k"]).drop(columns=["_m", "_k"]).reset_index(drop=True)


def variant_block(v: pd.DataFrame, reference: str = "IN") -> Block:
    """Models as rows, each measure's value [95 % CI] and gain over the reference [95 % CI], p."""
    measures = [m for m in VARIANT_MEASURES if m in set(v["metric"])]
    cols = ["model"]
    for m in measures:
        cols += [m, f"{m} − {reference}"]
    ns = {m: sorted({fmt(x) for x in v[v["metric"] == m]["n"] if not _missing(x)}) for m in measures}
    per_cell_n = any(len(s) > 1 for s in ns.values())
    rows: list[list[Cell]] = []
    for model, g in v.groupby("model", sort=False):
        by = {str(r["metric"]): r for _, r in g.iterrows()}
        row: list[Cell] = [str(model)]
        for m in measures:
            r = by.get(m)
            if r is None:
                row += ["–", "–"]
                continue
            value = num(r["value"])
            ci = interval(r["ci_low"], r["ci_high"])
            cell = value if ci == "–" else f"{value} {ci}"
            row.append(f"{cell} (n = {fmt(r['n'])})" if per_cell_n else cell)
            if _missing(r["gain"]):
                row.append("–")
            else:
                row.append(f"{num(r['gain'], True)} {interval(r['gain_low'], r['gain_high'], True)}, "
                           f"{_p_phrase(r['p'])}")
        rows.append(row)
    rows_note = "" if per_cell_n else "n: " + ", ".join(f"{m} {'/'.join(ns[m]) or '–'}" for m in measures) + "."
    return Block(f"Every evaluated model and merged variant: value [95 % interval] and paired gain over {reference} "
                 "[95 % interval], McNemar p", cols, rows, key="eval_variants", note=rows_note)


def _ordered(df: pd.DataFrame, key: str) -> pd.DataFrame:
    """The necessity table with its pooled ("all") rows first, otherwise in file order."""
    if key == "necessity" and "family" in df.columns:
        return df.iloc[(df["family"] != "all").to_numpy().argsort(kind="stable")]
    return df


def _necessity_gains(nec: pd.DataFrame) -> pd.DataFrame:
    """The pooled rows' gain over IN and, for frozen variants, over unfrozen RL, one panel each."""
    df = nec
    label = df["model"].astype(str)
    if "family" in df.columns:
        if (df["family"] == "all").any():
            df, label = df[df["family"] == "all"], label[df["family"] == "all"]
        elif df["family"].nunique() > 1:
            label = label + " (" + df["family"].astype(str) + ")"
    parts = [pd.DataFrame({"panel": "gain over IN", "model": label, "gain": df["gain"], "gain_low": df["gain_low"],
                           "gain_high": df["gain_high"]})]
    if {"gain_vs_rl", "gain_vs_rl_low", "gain_vs_rl_high"} <= set(df.columns) and df["gain_vs_rl"].notna().any():
        parts.append(pd.DataFrame({"panel": "gain over unfrozen RL", "model": label, "gain": df["gain_vs_rl"],
                                   "gain_low": df["gain_vs_rl_low"], "gain_high": df["gain_vs_rl_high"]}))
    return pd.concat(parts, ignore_index=True)


def geometry_per_layer(tensors: pd.DataFrame | None) -> pd.DataFrame:
    """Per phase and LLM decoder layer (0-based), the mean per-matrix geometry of compare's tensors table.

    Angles and sparsity average every 2-D LLM matrix (an unchanged one has angle 0 and changed share 0); the
    principal share and its null average the changed matrices, where the share is defined.
    """
    from frankenlab.study.claims import geometry_matrices

    cols = ["phase", "layer", "matrices", "angle_mean", "angle_max", "principal_share", "principal_share_null",
            "changed", "below_bf16"]
    rows = []
    for phase in PHASE_STYLE:
        df = geometry_matrices(tensors, phase)
        if df.empty:
            continue
        num_ = {c: pd.to_numeric(df[c], errors="coerce") if c in df.columns else pd.Series(float("nan"), df.index)
                for c in ("subspace_angle_mean_deg", "subspace_angle_max_deg", "principal_share",
                          "principal_share_null", "below_bf16_frac")}
        defined = num_["principal_share"].notna() & (df["changed"] > 0)
        for layer, idx in df.groupby(pd.to_numeric(df["layer"], errors="coerce")).groups.items():
            if pd.isna(layer):
                continue
            d = defined.loc[idx]
            at = {c: v.loc[idx] for c, v in num_.items()}
            rows.append({"phase": phase, "layer": int(layer) - 1, "matrices": len(idx),  # unified k+1 = decoder k
                         "angle_mean": at["subspace_angle_mean_deg"].mean(),
                         "angle_max": at["subspace_angle_max_deg"].max(),
                         "principal_share": at["principal_share"][d].mean(),
                         "principal_share_null": at["principal_share_null"][d].mean(),
                         "changed": df["changed"].loc[idx].mean(), "below_bf16": at["below_bf16_frac"].mean()})
    return pd.DataFrame(rows, columns=cols)


def geometry_summary(tensors: pd.DataFrame | None) -> Block | None:
    """One row per update phase: the means over its changed 2-D LLM matrices that the geometry claims test."""
    from frankenlab.study.claims import geometry_matrices

    rows: list[list[Cell]] = []
    for phase, (label, _) in PHASE_STYLE.items():
        df = geometry_matrices(tensors, phase)
        if df.empty:
            continue
        ch = df[df["changed"] > 0]

        def mean(col: str, frame: pd.DataFrame = ch) -> str:
            return num(pd.to_numeric(frame[col], errors="coerce").mean()) if col in frame.columns and len(frame) \
                else "–"

        ratio = (pd.to_numeric(ch["principal_share"], errors="coerce")
                 / pd.to_numeric(ch["principal_share_null"], errors="coerce")) \
            if {"principal_share", "principal_share_null"} <= set(ch.columns) and len(ch) else pd.Series(dtype=float)
        rows.append([label, f"{len(df)} ({len(ch)} changed)", mean("changed"), mean("below_bf16_frac"),
                     mean("update_rank_frac"), num(ratio.mean()) if ratio.notna().any() else "–",
                     mean("subspace_angle_mean_deg"), mean("subspace_angle_max_deg")])
    if not rows:
        return None
    return Block("Per-matrix geometry of each update: means over its changed 2-D LLM weight matrices", [
        "update", "LLM matrices", "changed share", "below-bf16 share", "update rank / min(m, n)",
        "principal share / null", "mean angle (°)", "max angle (°)"], rows, key="geometry_summary",
        note="changed share = 1 − unchanged_frac (exact stored changes); principal share / null = ‖U_kᵀΔV_k‖²/‖Δ‖² "
             "over k²/(m·n), 1 for an update blind to W's directions; angles between the top-k singular subspaces "
             "of the weights before and after.")


def _geometry_extras(r: RecipeData, claims: Sequence[dict[str, Any]]) -> Extras:
    ex = Extras()
    tensors = r.tables.get("compare_tensors")
    summary = geometry_summary(tensors)
    if summary is None:
        return ex
    ex.blocks.append(summary)
    decided = [c for c in claims if c.get("claim") in GEOMETRY_CLAIMS]
    if decided:
        ex.blocks.append(Block("Claims decided from these numbers (their tests under Findings)",
                               ["claim", "verdict", "reason"],
                               [[str(c.get("statement") or c.get("claim")), Verdict(inline(c.get("verdict"))),
                                 reason_of(c)] for c in decided], key="geometry_claims"))
    per = geometry_per_layer(tensors)
    figures = [
        ("geometry_angles.png", [("angle_mean", "mean angle", "-"), ("angle_max", "max angle", "--")],
         "Rotation of the top-k singular subspaces per layer", "principal angle (degrees)", {},
         "Principal angles between the top-k singular subspaces of each matrix before and after the update: mean "
         "over the layer's matrices of the mean angle (solid) and the layer's largest angle (dashed)."),
        ("geometry_principal_share.png", [("principal_share", "principal share", "-"),
                                          ("principal_share_null", "random-update null", ":")],
         "Update energy inside the weights' principal k × k block", "share of ‖Δ‖_F²", {"logy": True},
         "Share of the update's energy inside W_ref's top-k singular block (solid) against its expectation for an "
         "update blind to W's directions, k²/(m·n) (dotted): below the null = off the principal directions."),
        ("geometry_sparsity.png", [("changed", "changed share", "-"), ("below_bf16", "below-bf16 share", "--")],
         "Share of entries the update changed", "share of entries", {"ylim": (-0.02, 1.02)},
         "Changed share (1 − unchanged_frac, solid) and the share of entries changed by less than a bf16 step of "
         "the weight (dashed), mean over the layer's matrices."),
    ]
    for name, series, title, ylabel, kw, caption in figures:
        png = layer_lines(per, series, title, ylabel, **kw)
        if png:
            ex.plots.append(Plot(name, png, caption))
    return ex


def stage_extras(r: RecipeData, stage: str, claims: Sequence[dict[str, Any]] = ()) -> Extras:
    """Tables and plots the report derives from a stage's tables (so they exist even for a copied table)."""
    ex = Extras()
    if stage == "geometry":
        return _geometry_extras(r, claims)
    if stage == "merge_eval":
        v = variant_rows(r.tables.get("eval_metrics"), r.tables.get("eval_comparisons"))
        if not v.empty:
            ex.blocks.append(variant_block(v))
            png = gain_panels(v[v["model"] != "IN"], "metric", "model",
                              "Paired gain over IN of each model and merged variant (95 % interval)", "gain over IN")
            if png:
                ex.plots.append(Plot("variant_gains.png", png, "Gain over IN per model and merged variant, one panel "
                                     "per metric; bars: 95 % paired interval (green above 0, red below)."))
    elif stage == "freeze":
        nec = r.tables.get("necessity")
        if nec is not None and not nec.empty and {"model", "gain", "gain_low", "gain_high"} <= set(nec.columns):
            png = gain_panels(_necessity_gains(nec), "panel", "model",
                              "RL with a block frozen: paired accuracy gain (95 % interval)", "accuracy gain")
            if png:
                ex.plots.append(Plot("necessity_gains.png", png, "Necessity: each RL variant's gain over IN (and the "
                                     "frozen variants' gain over unfrozen RL), pooled over families; bars: 95 % "
                                     "paired interval."))
    return ex


def png_shows(name: str) -> str:
    """What a stage PNG shows, from its file name ("" for a name the report does not know)."""
    if name in _PNG_SHOWS:
        return _PNG_SHOWS[name]
    for pattern, text in _PNG_SHOWS.items():
        head, _, tail = pattern.partition("{}")
        if tail and name.startswith(head) and name.endswith(tail) and len(name) > len(head) + len(tail):
            part = name[len(head):-len(tail)]
            return text.format(_PHASE_NAMES.get(part, part))
    return ""


def _plot_caption(stage: str, p: Plot) -> str:
    """A report-drawn figure's caption: whose it is and its name (its description goes below)."""
    who = _STAGE_WHO.get(stage)
    return f"{who} — {p.name}" if who else p.name


def _stage_pngs(r: RecipeData, stage: str) -> list[tuple[Path, str, str]]:
    """The stage's PNGs as (path, caption, what it shows); per-model panels (IN/, RL/) placed side by side.

    The caption names whose figure it is (IN / RL model, the pair, all models) and the file; a file name that
    recurs under two subfolders with the same owner gets its folder added, so no two captions of a section match.
    """
    rank = {m: i for i, m in enumerate(MODEL_ROLES)}
    pngs = list(r.plots.get(stage, []))
    if any(model_of(p) for p in pngs):
        pngs.sort(key=lambda p: (p.name, rank.get(model_of(p) or "", -1)))
    out, seen = [], set()
    for p in pngs:
        model = model_of(p)
        who = f"{model} model" if model else _STAGE_WHO.get(stage, "")
        caption = f"{who} — {p.name}" if who else p.name
        if caption in seen:
            caption = f"{who} — {p.parent.name}/{p.name}" if who else f"{p.parent.name}/{p.name}"
        seen.add(caption)
        out.append((p, caption, png_shows(p.name)))
    return out


# ---------------------------------------------------------------- HTML


def _esc(x: Any) -> str:
    return html.escape(x if isinstance(x, str) else inline(x))


def _badge(verdict: Any) -> str:
    v = inline(verdict)
    return f"<span class='badge' style='background:{_BADGE.get(v, '#57606a')}'>{html.escape(v)}</span>"


def _cell_html(c: Cell) -> str:
    if isinstance(c, Block):
        return block_html(c, titled=False)
    if isinstance(c, Verdict):
        return _badge(str(c))
    return html.escape(c)


def block_html(b: Block, titled: bool = True) -> str:
    """A Block as an HTML table (key/value layout when it has no columns), with its title and note."""
    attr = f' data-table="{html.escape(b.key)}"' if b.key else ""
    if b.columns is None:
        body = "".join(f"<tr><th>{html.escape(str(row[0]))}</th><td>{_cell_html(row[1])}</td></tr>" for row in b.rows)
        table = f"<table class='kv'{attr}>{body}</table>"
    else:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in b.columns)
        body = "".join("<tr>" + "".join(f"<td>{_cell_html(x)}</td>" for x in row) + "</tr>" for row in b.rows)
        table = f"<table{attr}><tr>{head}</tr>{body}</table>"
    title = f"<p class='caption'><b>{html.escape(b.title)}</b></p>" if titled and b.title else ""
    note = f"<p class='muted caption'>{html.escape(b.note)}</p>" if b.note else ""
    return title + table + note


def _raw_cell(key: str, col: str, v: Any) -> str:
    if key.startswith("ablation_") and col == "layer" and not _missing(v) and float(v) == -1:
        return "baseline"  # layer −1 is the unablated model
    return fmt(v)


def _cols(df: pd.DataFrame, key: str) -> list[str]:
    wanted = TABLE_COLUMNS.get(key)
    return [c for c in wanted if c in df.columns] if wanted else list(df.columns)


def table_html(df: pd.DataFrame, key: str) -> str:
    cols = _cols(df, key)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_raw_cell(key, c, r[c]))}</td>" for c in cols) + "</tr>"
                   for _, r in _ordered(df, key).iterrows())
    return f'<table data-table="{html.escape(key)}"><tr>{head}</tr>{body}</table>'


def _figure_html(b64: str, alt: str, caption: str, shows: str = "") -> str:
    """The image, its caption (whose figure, which file) and, below, what it shows."""
    what = f"<p class='muted caption'>{html.escape(shows)}</p>" if shows else ""
    return (f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'
            f"<figcaption>{html.escape(caption)}</figcaption>{what}</figure>")


def _anchor(cid: str) -> str:
    return "claim-" + re.sub(r"[^A-Za-z0-9_-]", "-", cid)


def _claim_index(recipes: Sequence[RecipeData], claims: dict[str, list[dict[str, Any]]]
                 ) -> list[tuple[str, str, dict[str, dict[str, Any]]]]:
    """(id, statement, {recipe: claim}) in the order the claims were decided."""
    out: dict[str, tuple[str, dict[str, dict[str, Any]]]] = {}
    for r in recipes:
        for c in claims.get(r.name, []):
            cid = str(c.get("claim", "–"))
            out.setdefault(cid, (str(c.get("statement") or cid), {}))[1][r.name] = c
    return [(cid, stmt, by) for cid, (stmt, by) in out.items()]


def _verdict_html(c: dict[str, Any], recipe: str | None) -> str:
    who = f"<b>{html.escape(recipe)}</b>: " if recipe else ""
    h = [f"<div class='verdict'><p>{_badge(c.get('verdict', '–'))} {who}{html.escape(reason_of(c))}</p>",
         f"<p class='test'>{html.escape(headline(c))}</p>"]
    h += [block_html(b) for b in evidence_blocks(c.get("evidence") or {}, skip_reason=not c.get("reason"))]
    h.append(f"<p class='muted caption'>rule: {_esc(c.get('rule') or '–')}</p></div>")
    return "".join(h)


def render_html(title: str, meta: dict[str, Any], outcomes: Sequence[dict[str, Any]], recipes: Sequence[RecipeData],
                claims: dict[str, list[dict[str, Any]]]) -> str:
    h: list[str] = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                    f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    h.append("<p class='muted'>" + " · ".join(f"{_esc(k)}: {_esc(v)}" for k, v in meta.items()) + "</p>")
    h.append("<h2>Inputs</h2><table><tr><th>recipe</th><th>role</th><th>checkpoint</th><th>model_type</th>"
             "<th>fingerprint</th></tr>")
    for r in recipes:
        for role, info in r.inputs.items():
            h.append(f"<tr><td>{html.escape(r.name)}</td><td>{_esc(role)}</td><td>{_esc(info.get('path'))}</td>"
                     f"<td>{_esc(info.get('model_type'))}</td><td><code>{_esc(info.get('fingerprint'))}</code></td></tr>")
    h.append("</table>")
    index = _claim_index(recipes, claims)
    h.append("<h2>Findings</h2><p class='muted'>One verdict per claim of the paper, each decided by a stated "
             "statistical test on this study's tables; details below the overview.</p><table><tr><th>claim</th>"
             + "".join(f"<th>{html.escape(r.name)}</th>" for r in recipes) + "</tr>")
    for cid, stmt, by in index:
        row = (f"<tr><td><a href='#{_anchor(cid)}'><b>{html.escape(stmt)}</b></a><br>"
               f"<span class='muted'>{html.escape(cid)}</span></td>")
        row += "".join(f"<td>{_badge(by[r.name].get('verdict', '–')) if r.name in by else '–'}</td>" for r in recipes)
        h.append(row + "</tr>")
    h.append("</table>")
    for cid, stmt, by in index:
        h.append(f"<section class='claim' id='{_anchor(cid)}'><h3>{html.escape(stmt)} "
                 f"<span class='muted'>{html.escape(cid)}</span></h3>")
        h += [_verdict_html(by[r.name], r.name if len(recipes) > 1 else None) for r in recipes if r.name in by]
        h.append("</section>")
    h.append("<h2>Stages</h2><table><tr><th>stage</th><th>recipe</th><th>status</th><th>seconds</th><th>note</th>"
             "</tr>")
    for o in outcomes:
        h.append(f"<tr><td>{_esc(o['stage'])}</td><td>{_esc(o['recipe'])}</td><td>{_esc(o['status'])}</td>"
                 f"<td>{o['seconds']:.1f}</td><td>{_esc(o.get('error') or '')}</td></tr>")
    h.append("</table>")
    for title_s, stage, keys in SECTIONS:
        h.append(f"<h2>{html.escape(title_s)}</h2>")
        for r in recipes:
            if len(recipes) > 1:
                h.append(f"<h3>{html.escape(r.name)}</h3>")
            extras = stage_extras(r, stage, claims.get(r.name, []))
            shown = bool(extras.blocks or extras.plots)
            h += [block_html(b) for b in extras.blocks]
            for key in keys:
                df = r.tables.get(key)
                if df is not None and not df.empty:
                    shown = True
                    label = key.replace("_", " ")
                    body = table_html(df, key)
                    h.append(f"<details><summary>{label} ({len(df)} rows)</summary>{body}</details>" if len(df) > 16
                             else f"<p><b>{label}</b></p>{body}")
            figs = [_figure_html(base64.b64encode(p.png).decode(), p.name, _plot_caption(stage, p), p.caption)
                    for p in extras.plots]
            figs += [_figure_html(base64.b64encode(p.read_bytes()).decode(), p.name, cap, shows)
                     for p, cap, shows in _stage_pngs(r, stage)]
            if figs:
                shown = True
                h.append("<div class='plots'>" + "".join(figs) + "</div>")
            if not shown:
                h.append(f"<p class='muted'>{html.escape(_EMPTY.get(stage, _NO_RESULTS))}</p>")
    h.append("</body></html>")
    return "\n".join(h)


# ---------------------------------------------------------------- Markdown


def _md(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _cell_md(c: Cell) -> str:
    if isinstance(c, Block):
        if c.columns is None:
            return "; ".join(f"{_md(str(k))}: {_cell_md(v)}" for k, v in c.rows) or "–"
        return "; ".join(", ".join(_cell_md(x) for x in row) for row in c.rows) or "–"
    if isinstance(c, Verdict):
        return f"*{_md(str(c))}*"
    return _md(c)


def block_md(b: Block) -> list[str]:
    """A Block as a Markdown table (preceded by its title, followed by its note)."""
    cols = ["evidence", "value"] if b.columns is None else b.columns
    lines = [f"**{b.title}**", ""] if b.title else []
    lines += ["| " + " | ".join(_md(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell_md(x) for x in row) + " |" for row in b.rows]
    if b.note:
        lines += ["", b.note]
    return lines + [""]


def table_md(df: pd.DataFrame, key: str) -> str:
    cols = _cols(df, key)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_md(_raw_cell(key, c, r[c])) for c in cols) + " |"
              for _, r in _ordered(df, key).iterrows()]
    return "\n".join(lines)


def _verdict_md(c: dict[str, Any], recipe: str | None) -> list[str]:
    who = f" ({recipe})" if recipe else ""
    m = [f"**{inline(c.get('verdict', '–'))}**{who} — {reason_of(c)}", "", f"`{headline(c)}`", ""]
    for b in evidence_blocks(c.get("evidence") or {}, skip_reason=not c.get("reason")):
        m += block_md(b)
    return m + [f"*Rule: {inline(c.get('rule') or '–')}*", ""]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def render_markdown(title: str, meta: dict[str, Any], outcomes: Sequence[dict[str, Any]],
                    recipes: Sequence[RecipeData], claims: dict[str, list[dict[str, Any]]], root: Path) -> str:
    """The report as Markdown; the plots the report draws itself are written to root/report_plots/."""
    m: list[str] = [f"# {title}", "", " · ".join(f"{k}: {inline(v)}" for k, v in meta.items()), "", "## Inputs", "",
                    "| recipe | role | checkpoint | model_type | fingerprint |", "|---|---|---|---|---|"]
    for r in recipes:
        for role, info in r.inputs.items():
            cells = [r.name, role, info.get("path"), info.get("model_type"), info.get("fingerprint")]
            m.append("| " + " | ".join(_md(inline(c)) for c in cells) + " |")
    index = _claim_index(recipes, claims)
    m += ["", "## Findings", "", "One verdict per claim of the paper, each decided by a stated statistical test on "
          "this study's tables.", "", "| claim | " + " | ".join(_md(r.name) for r in recipes) + " |",
          "|---|" + "---|" * len(recipes)]
    for _, stmt, by in index:
        m.append(f"| {_md(stmt)} | " + " | ".join(
            f"**{inline(by[r.name].get('verdict', '–'))}**" if r.name in by else "–" for r in recipes) + " |")
    m.append("")
    for _, stmt, by in index:
        m += [f"### {stmt}", ""]
        for r in recipes:
            if r.name in by:
                m += _verdict_md(by[r.name], r.name if len(recipes) > 1 else None)
    m += ["## Stages", "", "| stage | recipe | status | seconds | note |", "|---|---|---|---|---|"]
    for o in outcomes:
        m.append(f"| {o['stage']} | {_md(o['recipe'])} | {o['status']} | {o['seconds']:.1f} | "
                 f"{_md(str(o.get('error') or ''))} |")
    for title_s, stage, keys in SECTIONS:
        m += ["", f"## {title_s}", ""]
        for r in recipes:
            if len(recipes) > 1:
                m += [f"### {r.name}", ""]
            extras = stage_extras(r, stage, claims.get(r.name, []))
            for b in extras.blocks:
                m += block_md(b)
            for key in keys:
                df = r.tables.get(key)
                if df is not None and not df.empty:
                    m += [f"**{key.replace('_', ' ')}**", "", table_md(df, key), ""]
            for p in extras.plots:
                rel = Path("report_plots") / f"{_safe(r.name)}_{p.name}"
                with atomic_file(Path(root) / rel, "wb") as fh:
                    fh.write(p.png)
                m += [f"![{_md(_plot_caption(stage, p))}]({rel.as_posix()})", "", f"*{_md(p.caption)}*", ""]
            for p, cap, shows in _stage_pngs(r, stage):
                rel = p.relative_to(root) if p.is_relative_to(root) else p
                m += [f"![{_md(cap)}]({rel.as_posix()})", ""] + ([f"*{_md(shows)}*", ""] if shows else [])
    return "\n".join(m) + "\n"
