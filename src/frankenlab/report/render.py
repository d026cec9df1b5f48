"""HTML (self-contained: plots inlined as base64, no scripts, no network) and Markdown renderings."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from frankenlab.report.collect import RecipeData

TABLE_COLUMNS: dict[str, list[str]] = {
    "compare_regions": ["region", "phase", "fro_sum", "fro_mean", "rel_fro_mean", "stable_rank_mean",
                        "effective_rank_mean"],
    "attention_diff": ["mode", "layer", "unified_layer", "n", "diff", "diff_low", "diff_high", "p"],
    "eval_metrics": ["model", "metric", "value", "ci_low", "ci_high", "n", "n11", "n10", "n01", "n00"],
    "necessity": ["model", "family", "n", "acc", "gain", "gain_low", "gain_high"],
    "vision_rl": ["task", "layer", "unified_layer", "n", "change_rate", "flip_rate", "accuracy"],
    "vision_in": ["task", "layer", "unified_layer", "n", "change_rate", "flip_rate", "accuracy"],
    "ablation_rl": ["task", "layer", "unified_layer", "n", "accuracy", "gold_logprob"],
    "ablation_in": ["task", "layer", "unified_layer", "n", "accuracy", "gold_logprob"],
}
SECTIONS = [
    ("Update characterization (parameter comparison)", "compare", ["compare_regions"]),
    ("Vision localization (visual-token swapping)", "probe_vision", ["vision_rl", "vision_in"]),
    ("Reasoning localization (layer ablation)", "probe_ablate", ["ablation_rl", "ablation_in"]),
    ("Attention to vision, IN vs RL", "probe_attention", ["attention_diff"]),
    ("Transferability (merged variants: M_vis / M_v2r / M_rea)", "merge_eval", ["eval_metrics"]),
    ("Necessity (freezing during RL)", "freeze", ["necessity"]),
]
_BADGE = {"supported": "#1a7f37", "contradicted": "#cf222e", "inconclusive": "#9a6700"}
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1f2328;line-height:1.45}
h1{font-size:1.7em}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.86em}td,th{border:1px solid #d0d7de;padding:3px 7px;
text-align:right}th{background:#f6f8fa}td:first-child,th:first-child{text-align:left}
.badge{color:#fff;border-radius:4px;padding:1px 7px;font-size:.85em;font-weight:600}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}.plots{display:flex;flex-wrap:wrap;gap:10px}
.plots figure{margin:0;flex:1 1 480px}figcaption{font-size:.8em;color:#57606a}
.muted{color:#57606a}details{margin:.5em 0}code{background:#f6f8fa;padding:0 3px}
"""


def fmt(x: Any) -> str:
    """The one number format used in both renderings (and by the report test)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
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


def _cols(df: pd.DataFrame, key: str) -> list[str]:
    wanted = TABLE_COLUMNS.get(key)
    return [c for c in wanted if c in df.columns] if wanted else list(df.columns)


def table_html(df: pd.DataFrame, key: str) -> str:
    cols = _cols(df, key)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(r[c]))}</td>" for c in cols) + "</tr>"
                   for _, r in df.iterrows())
    return f'<table data-table="{html.escape(key)}"><tr>{head}</tr>{body}</table>'


def table_md(df: pd.DataFrame, key: str) -> str:
    cols = _cols(df, key)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for _, r in df.iterrows()]
    return "\n".join(lines)


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(path.name)}</figcaption></figure>")


def _evidence_text(ev: dict[str, Any]) -> str:
    parts = []
    for k, v in ev.items():
        parts.append(f"{k}: {v}")
    return "; ".join(parts)


def render_html(title: str, meta: dict[str, Any], outcomes: Sequence[dict[str, Any]], recipes: Sequence[RecipeData],
                claims: dict[str, list[dict[str, Any]]]) -> str:
    h: list[str] = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                    f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    h.append("<p class='muted'>" + " · ".join(f"{html.escape(k)}: {html.escape(str(v))}" for k, v in meta.items())
             + "</p>")
    h.append("<h2>Inputs</h2><table><tr><th>recipe</th><th>role</th><th>checkpoint</th><th>model_type</th>"
             "<th>fingerprint</th></tr>")
    for r in recipes:
        for role, info in r.inputs.items():
            h.append(f"<tr><td>{html.escape(r.name)}</td><td>{role}</td><td>{html.escape(str(info.get('path')))}</td>"
                     f"<td>{html.escape(str(info.get('model_type')))}</td>"
                     f"<td><code>{html.escape(str(info.get('fingerprint')))}</code></td></tr>")
    h.append("</table>")
    h.append("<h2>Findings</h2><p class='muted'>One verdict per claim of the paper, decided by the stated rule from "
             "this study's tables.</p><table><tr><th>claim</th>"
             + "".join(f"<th>{html.escape(r.name)}</th>" for r in recipes) + "</tr>")
    ids = [c["claim"] for c in next(iter(claims.values()), [])]
    for i, cid in enumerate(ids):
        stmt = claims[recipes[0].name][i]["statement"]
        row = f"<tr><td><b>{html.escape(stmt)}</b><br><span class='muted'>{html.escape(cid)}</span></td>"
        for r in recipes:
            c = claims[r.name][i]
            color = _BADGE.get(c["verdict"], "#57606a")
            row += (f"<td style='text-align:left'><span class='badge' style='background:{color}'>{c['verdict']}"
                    f"</span><br><small>{html.escape(_evidence_text(c['evidence']))}</small><br>"
                    f"<small class='muted'>rule: {html.escape(c['rule'])}</small></td>")
        h.append(row + "</tr>")
    h.append("</table>")
    h.append("<h2>Stages</h2><table><tr><th>stage</th><th>recipe</th><th>status</th><th>seconds</th><th>note</th>"
             "</tr>")
    for o in outcomes:
        h.append(f"<tr><td>{o['stage']}</td><td>{html.escape(o['recipe'])}</td><td>{o['status']}</td>"
                 f"<td>{o['seconds']:.1f}</td><td>{html.escape(str(o.get('error') or ''))}</td></tr>")
    h.append("</table>")
    for title_s, stage, keys in SECTIONS:
        h.append(f"<h2>{html.escape(title_s)}</h2>")
        for r in recipes:
            if len(recipes) > 1:
                h.append(f"<h3>{html.escape(r.name)}</h3>")
            shown = False
            for key in keys:
                df = r.tables.get(key)
                if df is not None and not df.empty:
                    shown = True
                    long = len(df) > 16
                    label = key.replace("_", " ")
                    body = table_html(df, key)
                    h.append(f"<details><summary>{label} ({len(df)} rows)</summary>{body}</details>" if long
                             else f"<p><b>{label}</b></p>{body}")
            pngs = r.plots.get(stage, [])
            if pngs:
                shown = True
                h.append("<div class='plots'>" + "".join(_img(p) for p in pngs) + "</div>")
            if not shown:
                h.append("<p class='muted'>This stage produced no results for this recipe (see Stages).</p>")
    h.append("</body></html>")
    return "\n".join(h)


def render_markdown(title: str, meta: dict[str, Any], outcomes: Sequence[dict[str, Any]],
                    recipes: Sequence[RecipeData], claims: dict[str, list[dict[str, Any]]], root: Path) -> str:
    m: list[str] = [f"# {title}", "", " · ".join(f"{k}: {v}" for k, v in meta.items()), "", "## Inputs", "",
                    "| recipe | role | checkpoint | model_type | fingerprint |", "|---|---|---|---|---|"]
    for r in recipes:
        for role, info in r.inputs.items():
            cells = [r.name, role, info.get("path"), info.get("model_type"), info.get("fingerprint")]
            m.append("| " + " | ".join(str(c) for c in cells) + " |")
    m += ["", "## Findings", ""]
    for r in recipes:
        if len(recipes) > 1:
            m += [f"### {r.name}", ""]
        for c in claims[r.name]:
            m.append(f"- **{c['statement']}** — *{c['verdict']}*. {_evidence_text(c['evidence'])} "
                     f"(rule: {c['rule']})")
        m.append("")
    m += ["## Stages", "", "| stage | recipe | status | seconds | note |", "|---|---|---|---|---|"]
    for o in outcomes:
        m.append(f"| {o['stage']} | {o['recipe']} | {o['status']} | {o['seconds']:.1f} | {o.get('error') or ''} |")
    for title_s, stage, keys in SECTIONS:
        m += ["", f"## {title_s}", ""]
        for r in recipes:
            if len(recipes) > 1:
                m += [f"### {r.name}", ""]
            for key in keys:
                df = r.tables.get(key)
                if df is not None and not df.empty:
                    m += [f"**{key.replace('_', ' ')}**", "", table_md(df, key), ""]
            for p in r.plots.get(stage, []):
                rel = p.relative_to(root) if p.is_relative_to(root) else p
                m.append(f"![{p.name}]({rel.as_posix()})")
    return "\n".join(m) + "\n"
