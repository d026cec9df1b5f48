"""One verdict per claim of the paper, decided from the stage tables with the numbers that decided it.

Each rule is deliberately simple and stated in `rule`, so a reader can check it by hand against the
tables. Missing stages or underpowered data give `inconclusive` with the reason, never a guess.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
PARTS = ("early", "mid", "late")


@dataclass
class Claim:
    claim: str  # id
    statement: str
    verdict: str
    rule: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _r(x: float | None, nd: int = 4) -> float | None:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    return round(float(x), nd)


def _part_of(block: int, cuts: tuple[int, int]) -> str:
    return "early" if block < cuts[0] else "mid" if block < cuts[1] else "late"


def _llm_part_means(layers: pd.DataFrame, phase: str, column: str, cuts: tuple[int, int]) -> dict[str, float]:
    df = layers[(layers["phase"] == phase) & (layers["section"] == "llm")].copy()
    if df.empty:
        return {}
    df["part"] = [(_part_of(int(u) - 1, cuts)) for u in df["layer"]]
    return {p: float(df[df["part"] == p][column].mean()) for p in PARTS if (df["part"] == p).any()}


def claim_rl_update_mid_late(layers: pd.DataFrame | None, cuts: tuple[int, int]) -> Claim:
    c = Claim("rl_refines_mid_late", "RL's weight update concentrates in mid-to-late LLM layers.", INCONCLUSIVE,
              "per-layer mean ‖ΔRL‖_F: mean over mid+late layers vs early layers; supported if ≥ 1.1× early, "
              "contradicted if ≤ 0.9× early")
    if layers is None or layers.empty:
        c.evidence["reason"] = "compare stage has no results"
        return c
    means = _llm_part_means(layers, "rl", "fro_sum", cuts)
    if len(means) < 3:
        c.evidence["reason"] = "no per-layer RL energy for all three parts"
        return c
    ml = (means["mid"] + means["late"]) / 2
    ratio = ml / means["early"] if means["early"] > 0 else math.inf
    c.evidence = {"fro_per_layer": {k: _r(v) for k, v in means.items()}, "mid_late_over_early": _r(ratio, 3)}
    c.verdict = SUPPORTED if ratio >= 1.1 else CONTRADICTED if ratio <= 0.9 else INCONCLUSIVE
    return c


def claim_energy_in_late_rl_mid(layers: pd.DataFrame | None, cuts: tuple[int, int]) -> Claim:
    c = Claim("energy_in_late_rl_mid", "IN's update puts most energy in late layers, RL's in mid layers.",
              INCONCLUSIVE, "argmax over early/mid/late of the per-layer mean ‖Δ‖_F, for ΔIN (needs BASE) and ΔRL")
    if layers is None or layers.empty:
        c.evidence["reason"] = "compare stage has no results"
        return c
    rl = _llm_part_means(layers, "rl", "fro_sum", cuts)
    inn = _llm_part_means(layers, "in", "fro_sum", cuts)
    c.evidence = {"rl": {k: _r(v) for k, v in rl.items()}, "in": {k: _r(v) for k, v in inn.items()}}
    if not inn:
        c.evidence["reason"] = "no BASE checkpoint: ΔIN = IN − BASE is unavailable"
        return c
    top_in, top_rl = max(inn, key=inn.get), max(rl, key=rl.get)
    c.evidence.update(top_in=top_in, top_rl=top_rl)
    if top_in == "late" and top_rl == "mid":
        c.verdict = SUPPORTED
    elif top_in != "late" and top_rl != "mid":
        c.verdict = CONTRADICTED
    return c


def _critical_layer(df: pd.DataFrame, rate: str) -> tuple[float | None, float]:
    """Last unified layer from which a suffix swap still achieves half the maximum rate."""
    df = df.sort_values("unified_layer")
    peak = float(df[rate].max()) if not df.empty else 0.0
    if peak <= 0:
        return None, peak
    above = df[df[rate] >= 0.5 * peak]
    return float(above["unified_layer"].max()), peak


def claim_localization_order(vision: pd.DataFrame | None, ablation: pd.DataFrame | None,
                             cuts: tuple[int, int]) -> Claim:
    c = Claim("localization_order", "Recognition localizes early, OCR/counting/grounding mid, reasoning late.",
              INCONCLUSIVE, "vision tasks: the last LLM layer whose suffix swap still reaches half the peak "
              "flip-to-source rate (RL model); reasoning: the layer whose ablation lowers gold log-prob most; "
              "supported if recognition ≤ the others ≤ reasoning in that order, contradicted if recognition comes "
              "after reasoning")
    crit: dict[str, Any] = {}
    if vision is not None and not vision.empty:
        for task, g in vision.groupby("task"):
            layer, peak = _critical_layer(g[g["unified_layer"] > 0], "flip_rate")
            crit[str(task)] = {"layer": layer, "peak_flip_rate": _r(peak)}
    if ablation is not None and not ablation.empty:
        base = ablation[ablation["layer"] == -1]
        abl = ablation[ablation["layer"] >= 0]
        for task, g in abl.groupby("task"):
            b = base[base["task"] == task]["gold_logprob"]
            if b.empty or g.empty:
                continue
            drop = float(b.iloc[0]) - g["gold_logprob"]
            i = int(drop.values.argmax())
            crit[f"reasoning:{task}"] = {"layer": float(g["unified_layer"].iloc[i]), "max_logprob_drop": _r(drop.max())}
    c.evidence["critical_layers"] = crit
    rec = crit.get("recognition", {}).get("layer")
    mids = [crit[t]["layer"] for t in ("ocr", "counting", "grounding") if crit.get(t, {}).get("layer") is not None]
    reas = [v["layer"] for k, v in crit.items() if k.startswith("reasoning:") and v["layer"] is not None]
    if rec is None or not mids or not reas:
        c.evidence["reason"] = "missing probe results, or swaps never flip the answer (the model ignores the swap)"
        return c
    reason_layer = max(reas)
    parts = {"recognition": _part_of(int(rec) - 1, cuts), "perception_mid": [_part_of(int(m) - 1, cuts) for m in mids],
             "reasoning": _part_of(int(reason_layer) - 1, cuts)}
    c.evidence["parts"] = parts
    if rec <= min(mids) and max(mids) <= reason_layer and rec < reason_layer:
        c.verdict = SUPPORTED
    elif rec > reason_layer:
        c.verdict = CONTRADICTED
    return c


def _paired(comparisons: pd.DataFrame, model_b: str, measure: str) -> dict[str, float] | None:
    """IN vs `model_b` on one measure (pooled task `all` when present), from eval's paired table."""
    rows = comparisons[(comparisons["model_a"] == "IN") & (comparisons["model_b"] == model_b)
                       & (comparisons["measure"] == measure)]
    if rows.empty:
        return None
    pooled = rows[rows["task"] == "all"]
    if pooled.empty:
        if rows["task"].nunique() != 1:
            return None
        pooled = rows
    r = pooled.iloc[0]
    # comparisons hold IN − model_b; flip to model_b − IN (the gain)
    return {"in": float(r["value_a"]), "value": float(r["value_b"]), "gain": -float(r["diff"]),
            "gain_low": -float(r["ci_high"]), "gain_high": -float(r["ci_low"]), "p": float(r["p_mcnemar"])}


def claim_transfer_mid_late(metrics: pd.DataFrame | None, comparisons: pd.DataFrame | None = None) -> Claim:
    c = Claim("transfer_mid_late", "RL's gains transfer through mid-to-late blocks (IN:RL:RL keeps them, RL:IN:IN "
              "does not).", INCONCLUSIVE, "for M_rea, M_v2r and accuracy with the image: RL's paired gain over IN "
              "must have a 95 % interval above 0; supported if IN:RL:RL recovers ≥ half of it and RL:IN:IN less "
              "than half, contradicted if the reverse")
    if comparisons is None or comparisons.empty:
        c.evidence["reason"] = "merge/eval stage has no paired comparisons (it needs IN, RL and the variants)"
        return c
    votes = []
    for m in ("M_rea", "M_v2r", "accuracy:image"):
        rl, late, early = (_paired(comparisons, b, m) for b in ("RL", "IN:RL:RL", "RL:IN:IN"))
        if rl is None or late is None or early is None:
            continue
        g = rl["gain"]
        sig = rl["gain_low"] > 0
        rec_late = late["gain"] / g if g else float("nan")
        rec_early = early["gain"] / g if g else float("nan")
        c.evidence[m] = {"IN": _r(rl["in"], 3), "RL": _r(rl["value"], 3), "IN:RL:RL": _r(late["value"], 3),
                         "RL:IN:IN": _r(early["value"], 3), "rl_gain": _r(g, 3),
                         "rl_gain_ci": [_r(rl["gain_low"], 3), _r(rl["gain_high"], 3)],
                         "gain_significant": bool(sig), "recovered_by_IN:RL:RL": _r(rec_late, 3),
                         "recovered_by_RL:IN:IN": _r(rec_early, 3)}
        if not sig:
            continue
        if rec_late >= 0.5 and rec_early < 0.5:
            votes.append(SUPPORTED)
        elif rec_late < 0.5 and rec_early >= 0.5:
            votes.append(CONTRADICTED)
        else:
            votes.append(INCONCLUSIVE)
    if not votes:
        c.evidence.setdefault("reason", "RL shows no significant paired gain over IN on M_rea, M_v2r or image "
                              "accuracy, so there is nothing to transfer")
    elif all(v == SUPPORTED for v in votes):
        c.verdict = SUPPORTED
    elif all(v == CONTRADICTED for v in votes):
        c.verdict = CONTRADICTED
    return c


def claim_freeze_late_hurts_most(necessity: pd.DataFrame | None) -> Claim:
    c = Claim("freeze_late_hurts_most", "Freezing late layers during RL hurts the gain most.", INCONCLUSIVE,
              "overall gain over IN of each frozen variant; supported if late's is the lowest and its interval lies "
              "below the best frozen variant's, contradicted if another is lowest with separated intervals")
    if necessity is None or necessity.empty:
        c.evidence["reason"] = "no freezing results (run `frankenlab miniworld build` or configure freeze.table)"
        return c
    df = necessity
    if "family" in df.columns:
        df = df[df["family"] == "all"] if (df["family"] == "all").any() else df
    rows = {}
    for _, r in df.iterrows():
        name = str(r["model"]).lower()
        if "frozen" in name:
            rows[name.split("frozen-")[-1]] = (float(r["gain"]), float(r["gain_low"]), float(r["gain_high"]))
    c.evidence["gains"] = {k: [_r(x, 3) for x in v] for k, v in rows.items()}
    if not {"early", "mid", "late"} <= set(rows):
        c.evidence["reason"] = "need frozen early, mid and late variants"
        return c
    lowest = min(rows, key=lambda k: rows[k][0])
    best = max(rows, key=lambda k: rows[k][0])
    separated = rows[lowest][2] < rows[best][1]
    c.evidence.update(lowest=lowest, separated=bool(separated))
    if lowest == "late" and separated:
        c.verdict = SUPPORTED
    elif lowest != "late" and separated and rows["late"][1] > rows[lowest][2]:
        c.verdict = CONTRADICTED
    return c


def claim_attention_mid_late(diff: pd.DataFrame | None, cuts: tuple[int, int]) -> Claim:
    c = Claim("rl_attention_vision_mid_late", "RL raises the attention that answer tokens pay to visual tokens in "
              "mid-to-late layers.", INCONCLUSIVE, "teacher-forced on a shared response: per-layer RL − IN share "
              "of attention on image tokens with a paired bootstrap interval; supported if the mean over mid+late "
              "layers is > 0 and most mid+late layers have intervals entirely above 0; contradicted if the reverse")
    if diff is None or diff.empty:
        c.evidence["reason"] = "attention probe has no results"
        return c
    d = diff[diff["mode"] == "shared"] if "mode" in diff.columns else diff
    d = d[d["unified_layer"] > 0].copy()
    d["part"] = [_part_of(int(u) - 1, cuts) for u in d["unified_layer"]]
    ml = d[d["part"].isin(["mid", "late"])]
    if ml.empty:
        c.evidence["reason"] = "no mid/late layers in the attention table"
        return c
    up = int((ml["diff_low"] > 0).sum())
    down = int((ml["diff_high"] < 0).sum())
    mean = float(ml["diff"].mean())
    c.evidence = {"mean_diff_mid_late": _r(mean, 5), "layers_up": up, "layers_down": down, "n_layers": len(ml),
                  "mean_diff_early": _r(float(d[d["part"] == "early"]["diff"].mean()), 5)}
    if mean > 0 and up > len(ml) / 2:
        c.verdict = SUPPORTED
    elif mean < 0 and down > len(ml) / 2:
        c.verdict = CONTRADICTED
    return c


def decide_all(tables: dict[str, pd.DataFrame | None], cuts: tuple[int, int]) -> list[Claim]:
    return [
        claim_rl_update_mid_late(tables.get("compare_layers"), cuts),
        claim_energy_in_late_rl_mid(tables.get("compare_layers"), cuts),
        claim_localization_order(tables.get("vision_rl"), tables.get("ablation_rl"), cuts),
        claim_transfer_mid_late(tables.get("eval_metrics"), tables.get("eval_comparisons")),
        claim_freeze_late_hurts_most(tables.get("necessity")),
        claim_attention_mid_late(tables.get("attention_diff"), cuts),
    ]
