"""Each claim's verdict on hand-made tables whose answer is known."""

from __future__ import annotations

import pandas as pd

from frankenlab.study.claims import (
    claim_attention_mid_late,
    claim_energy_in_late_rl_mid,
    claim_freeze_late_hurts_most,
    claim_localization_order,
    claim_rl_update_mid_late,
    claim_transfer_mid_late,
)

CUTS = (2, 4)  # 6 LLM layers: early 0-1, mid 2-3, late 4-5 → unified 1-2, 3-4, 5-6


def _layers(rl: list[float], inn: list[float] | None = None) -> pd.DataFrame:
    rows = [{"layer": u, "section": "llm", "phase": "rl", "fro_sum": v} for u, v in zip(range(1, 7), rl)]
    if inn:
        rows += [{"layer": u, "section": "llm", "phase": "in", "fro_sum": v} for u, v in zip(range(1, 7), inn)]
    rows.append({"layer": -1, "section": "vision", "phase": "rl", "fro_sum": 100.0})  # ignored: not LLM
    return pd.DataFrame(rows)


def test_rl_update_mid_late():
    assert claim_rl_update_mid_late(_layers([1, 1, 2, 2, 2, 2]), CUTS).verdict == "supported"
    assert claim_rl_update_mid_late(_layers([3, 3, 1, 1, 1, 1]), CUTS).verdict == "contradicted"
    c = claim_rl_update_mid_late(_layers([1, 1, 1, 1, 1.05, 1.05]), CUTS)
    assert c.verdict == "inconclusive" and c.evidence["mid_late_over_early"] == 1.025
    assert claim_rl_update_mid_late(None, CUTS).verdict == "inconclusive"


def test_energy_in_late_rl_mid():
    both = _layers([1, 1, 5, 5, 2, 2], inn=[1, 1, 2, 2, 6, 6])
    c = claim_energy_in_late_rl_mid(both, CUTS)
    assert c.verdict == "supported" and (c.evidence["top_in"], c.evidence["top_rl"]) == ("late", "mid")
    assert claim_energy_in_late_rl_mid(_layers([5, 5, 1, 1, 1, 1], inn=[6, 6, 1, 1, 1, 1]), CUTS).verdict == \
        "contradicted"
    no_base = claim_energy_in_late_rl_mid(_layers([1, 1, 5, 5, 2, 2]), CUTS)
    assert no_base.verdict == "inconclusive" and "BASE" in no_base.evidence["reason"]


def _vision(crit: dict[str, int]) -> pd.DataFrame:
    rows = []
    for task, last in crit.items():
        for u in range(1, 7):
            rows.append({"task": task, "unified_layer": u, "flip_rate": 0.8 if u <= last else 0.1})
    return pd.DataFrame(rows)


def _ablation(worst: int) -> pd.DataFrame:
    rows = [{"task": "math", "layer": -1, "unified_layer": 0, "gold_logprob": -1.0}]
    rows += [{"task": "math", "layer": u - 1, "unified_layer": u, "gold_logprob": -5.0 if u == worst else -1.2}
             for u in range(1, 7)]
    return pd.DataFrame(rows)


def test_localization_order():
    good = claim_localization_order(_vision({"recognition": 2, "ocr": 3, "counting": 4, "grounding": 3}),
                                    _ablation(6), CUTS)
    assert good.verdict == "supported"
    assert good.evidence["critical_layers"]["recognition"]["layer"] == 2
    assert good.evidence["critical_layers"]["reasoning:math"]["layer"] == 6
    bad = claim_localization_order(_vision({"recognition": 6, "ocr": 3, "counting": 4, "grounding": 3}),
                                   _ablation(2), CUTS)
    assert bad.verdict == "contradicted"
    flat = _vision({"recognition": 2, "ocr": 3})
    flat["flip_rate"] = 0.0
    assert claim_localization_order(flat, _ablation(6), CUTS).verdict == "inconclusive"


def _comparisons(vals: dict[str, tuple[float, float, float]], measure: str = "M_rea") -> pd.DataFrame:
    """Paired rows IN vs each model: diff = IN − model with its interval (as eval writes them)."""
    base = vals["IN"][0]
    return pd.DataFrame([{"model_a": "IN", "model_b": m, "task": "all", "measure": measure, "value_a": base,
                          "value_b": v, "diff": base - v, "ci_low": base - v - w, "ci_high": base - v + w,
                          "p_mcnemar": 0.01} for m, (v, w, _) in vals.items() if m != "IN"])


def test_transfer_mid_late():
    sup = _comparisons({"IN": (0.3, 0, 0), "RL": (0.6, 0.05, 0), "IN:RL:RL": (0.55, 0.05, 0),
                        "RL:IN:IN": (0.32, 0.05, 0)})
    c = claim_transfer_mid_late(None, sup)
    assert c.verdict == "supported" and c.evidence["M_rea"]["recovered_by_IN:RL:RL"] == 0.833
    rev = _comparisons({"IN": (0.3, 0, 0), "RL": (0.6, 0.05, 0), "IN:RL:RL": (0.31, 0.05, 0),
                        "RL:IN:IN": (0.58, 0.05, 0)})
    assert claim_transfer_mid_late(None, rev).verdict == "contradicted"
    no_gain = _comparisons({"IN": (0.3, 0, 0), "RL": (0.35, 0.1, 0), "IN:RL:RL": (0.35, 0.1, 0),
                            "RL:IN:IN": (0.3, 0.1, 0)})
    c = claim_transfer_mid_late(None, no_gain)
    assert c.verdict == "inconclusive" and c.evidence["M_rea"]["gain_significant"] is False
    assert claim_transfer_mid_late(None, None).verdict == "inconclusive"


def _necessity(gains: dict[str, tuple[float, float, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"model": f"RL-FROZEN-{k.upper()}", "family": "all", "gain": g, "gain_low": lo,
                          "gain_high": hi} for k, (g, lo, hi) in gains.items()]
                        + [{"model": "rl", "family": "all", "gain": 0.3, "gain_low": 0.25, "gain_high": 0.35}])


def test_freeze_late_hurts_most():
    assert claim_freeze_late_hurts_most(_necessity({"early": (0.3, 0.25, 0.35), "mid": (0.25, 0.2, 0.3),
                                                    "late": (0.05, 0.0, 0.1)})).verdict == "supported"
    assert claim_freeze_late_hurts_most(_necessity({"early": (0.02, 0.0, 0.05), "mid": (0.25, 0.2, 0.3),
                                                    "late": (0.28, 0.22, 0.33)})).verdict == "contradicted"
    assert claim_freeze_late_hurts_most(_necessity({"early": (0.3, 0.1, 0.5), "mid": (0.25, 0.05, 0.45),
                                                    "late": (0.2, 0.0, 0.4)})).verdict == "inconclusive"


def _diff(values: list[float], width: float) -> pd.DataFrame:
    return pd.DataFrame([{"mode": "shared", "layer": u - 1, "unified_layer": u, "diff": v, "diff_low": v - width,
                          "diff_high": v + width} for u, v in zip(range(1, 7), values)])


def test_attention_mid_late():
    assert claim_attention_mid_late(_diff([0, 0, 0.05, 0.06, 0.04, 0.05], 0.01), CUTS).verdict == "supported"
    assert claim_attention_mid_late(_diff([0, 0, -0.05, -0.06, -0.04, -0.05], 0.01), CUTS).verdict == "contradicted"
    assert claim_attention_mid_late(_diff([0, 0, 0.01, -0.01, 0.01, 0.0], 0.05), CUTS).verdict == "inconclusive"
