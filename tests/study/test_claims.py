"""Each claim's test on stage outputs whose truth is known: null, uniform over depth, planted in one part."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from frankenlab.regions import Partition
from frankenlab.study.claims import (
    ALPHA,
    claim_attention_mid_late,
    claim_energy_in_late_rl_mid,
    claim_freeze_late_hurts_most,
    claim_localization_order,
    claim_rl_update_mid_late,
    claim_transfer_mid_late,
    decide_all,
)
from frankenlab.testing.claims import (
    ablation_records,
    attention_records,
    energy_layers,
    eval_records,
    freeze_records,
    vision_records,
)

P28 = Partition.make(28)  # 0-8 / 9-17 / 18-27
P6 = Partition.make(6)  # 0-1 / 2-3 / 4-5


def _interface(c) -> dict:
    d = c.to_dict()
    json.dumps(d, allow_nan=False)  # findings.json must be strict JSON
    assert d["verdict"] in ("supported", "contradicted", "inconclusive")
    assert d["reason"] and d["rule"]
    for key in ("effect", "ci_low", "ci_high", "n", "p", "test"):
        assert key in d
    return d


# -- energy ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_energy_null_and_uniform_never_decide(seed):
    zero = claim_rl_update_mid_late(energy_layers("zero", seed=seed), P28)
    assert zero.verdict == "inconclusive" and "no update" in zero.reason
    uniform = claim_rl_update_mid_late(energy_layers("uniform", seed=seed), P28)
    assert uniform.verdict == "inconclusive", uniform.reason
    _interface(uniform)


def test_energy_planted_parts():
    late = claim_rl_update_mid_late(energy_layers("late"), P28)
    assert late.verdict == "supported" and late.ci_low > 0 and late.p < ALPHA
    early = claim_rl_update_mid_late(energy_layers("early"), P28)
    assert early.verdict == "contradicted" and early.ci_high < 0
    d = _interface(late)
    assert d["evidence"]["subtests"][0]["p_holm"] == pytest.approx(d["p"])


def test_energy_effect_and_p_match_an_independent_computation():
    layers = energy_layers({"early": 1.0, "mid": 1.3, "late": 1.6}, n_layers=6, seed=4)
    c = claim_rl_update_mid_late(layers, P6)
    e = layers[layers["section"] == "llm"].sort_values("layer")["rel_fro_total"].to_numpy()
    observed = e[2:].mean() - e[:2].mean()
    assert c.effect == pytest.approx(observed, abs=1e-5)
    stats = [e[[i for i in range(6) if i not in g]].mean() - e[list(g)].mean()
             for g in itertools.combinations(range(6), 2)]
    p = np.mean([abs(s) >= abs(observed) - 1e-12 for s in stats])
    assert c.p == pytest.approx(p, abs=1e-5)
    # six layers: two early ones give 15 arrangements, so p ≥ 1/15 > α and no verdict is possible
    assert c.verdict == "inconclusive" and "15 arrangements" in c.test


def test_energy_in_late_rl_mid():
    both = energy_layers("mid", in_="late")
    assert claim_energy_in_late_rl_mid(both, P28).verdict == "supported"
    assert claim_energy_in_late_rl_mid(energy_layers("early", in_="early"), P28).verdict == "contradicted"
    for seed in range(3):  # a null may be contradicted at rate ≤ α (the benchmark measures it), never supported
        assert claim_energy_in_late_rl_mid(energy_layers("uniform", in_="uniform", seed=seed), P28).verdict != \
            "supported"
    no_base = claim_energy_in_late_rl_mid(energy_layers("mid"), P28)
    assert no_base.verdict == "inconclusive" and "BASE" in no_base.reason
    zero = claim_energy_in_late_rl_mid(energy_layers("zero", in_="late"), P28)
    assert zero.verdict == "inconclusive" and "no update" in zero.reason
    assert len(_interface(claim_energy_in_late_rl_mid(both, P28))["evidence"]["subtests"]) == 2


# -- transfer -------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_transfer_uniform_gain_is_not_localized(seed):
    c = claim_transfer_mid_late(eval_records("uniform", seed=seed), P28, 28)
    assert c.verdict != "supported", c.reason


def test_transfer_null_has_nothing_to_transfer():
    c = claim_transfer_mid_late(eval_records("null"), P28, 28)
    assert c.verdict == "inconclusive" and "nothing to transfer" in c.reason


@pytest.mark.parametrize("pattern", ["late", "mid_late"])
def test_transfer_planted_late(pattern):
    c = claim_transfer_mid_late(eval_records(pattern), P28, 28)
    assert c.verdict == "supported", c.reason
    d = _interface(c)
    a = [t for t in d["evidence"]["subtests"] if "(A)" in t["name"]]
    assert a and {t["verdict"] for t in a} == {"supported"}  # mid+late beats the other two-thirds per layer
    assert "contradicted" not in {t["verdict"] for t in d["evidence"]["subtests"]}
    assert all(t["p_holm"] >= t["p"] for t in d["evidence"]["subtests"])


def test_transfer_planted_early_contradicts():
    assert claim_transfer_mid_late(eval_records("early"), P28, 28).verdict == "contradicted"


def test_transfer_contrast_matches_hand_computation():
    records = eval_records("late", n_items=200, seed=3)
    c = claim_transfer_mid_late(records, P28, 28)
    ok = {}
    for r in records:
        if r["setting"] == "image":
            ok.setdefault(r["model"], {})[r["item_id"]] = float(r["correct"])
    ids = sorted(ok["IN"])
    share = {"IN:RL:RL": 19 / 28, "RL:IN:RL": 19 / 28, "RL:RL:IN": 18 / 28}
    g = {v: np.array([(ok[v][i] - ok["IN"][i]) / s for i in ids]) for v, s in share.items()}
    a = (g["IN:RL:RL"] - (g["RL:IN:RL"] + g["RL:RL:IN"]) / 2).mean()
    sub = {t["name"]: t for t in c.evidence["subtests"]}
    assert sub["accuracy:image (A): IN:RL:RL − RL:IN:RL/RL:RL:IN, gain per layer share"]["effect"] == \
        pytest.approx(a, abs=1e-4)


def test_transfer_needs_equal_sized_variants():
    records = [r for r in eval_records("late") if r["model"] in ("IN", "RL", "IN:RL:RL")]
    c = claim_transfer_mid_late(records, P28, 28)
    assert c.verdict == "inconclusive" and "equal-sized" in c.reason


# -- localization ---------------------------------------------------------------------------------
def _loc(critical, breaks_reason, control=True, seed=0):
    """Skipping layer 0 breaks every task (as in real LLMs); `breaks_reason` layers cost half of reasoning."""
    vision = vision_records(critical, seed=seed)
    abl = ablation_records("math", {0: 1.0} | {L: 0.5 for L in breaks_reason if L}, seed=seed)
    if control:
        abl += ablation_records("perception_control", {0: 1.0}, seed=seed + 1)
    return claim_localization_order(vision, abl, P28, ["perception_control"] if control else [])


def test_localization_planted_order_is_supported():
    c = _loc({"recognition": 5, "ocr": 13, "counting": 14, "grounding": 12}, {0, 22, 23})
    assert c.verdict == "supported", c.reason
    d = _interface(c)
    assert d["evidence"]["excluded_layers"] == "0"  # layer 0 breaks both tasks: not a reasoning layer
    assert d["effect"] == 23 - 5 and d["ci_low"] > 0


def test_localization_first_layer_effect_does_not_place_reasoning_early():
    # reasoning is hurt only by the first layer, which breaks perception as well: no reasoning layer remains
    c = _loc({"recognition": 5, "ocr": 13}, {0})
    assert c.verdict != "supported"
    rows = {r[0]: r for r in c.evidence["table"]["rows"]}
    assert rows["reasoning"][6] != "early"


def test_localization_without_control_excludes_breaking_layers():
    c = _loc({"recognition": 5, "ocr": 13}, {22}, control=False)
    assert c.evidence["excluded_layers"] == "0"  # it breaks reasoning entirely: excluded, and named
    assert "no control task" in c.evidence["reasoning_profile"]
    rows = {r[0]: r for r in c.evidence["table"]["rows"]}
    assert rows["reasoning"][2] == 22 and rows["reasoning"][6] == "late"


def test_localization_contradicted_and_null():
    c = _loc({"recognition": 24, "ocr": 13}, {22})
    assert c.verdict == "contradicted" and "recognition" in c.reason
    same = _loc({"recognition": 14, "ocr": 14, "counting": 14}, {14})
    assert same.verdict != "supported"
    assert claim_localization_order(None, None, P28).verdict == "inconclusive"


# -- freezing -------------------------------------------------------------------------------------
def test_freeze_rules():
    table, items = freeze_records({"in": 0.4, "rl": 0.6, "rl-frozen-early": 0.58, "rl-frozen-mid": 0.57,
                                   "rl-frozen-late": 0.45})
    c = claim_freeze_late_hurts_most(table, items)
    assert c.verdict == "supported", c.reason
    assert "paired" in c.test
    same, same_items = freeze_records({"in": 0.4, "rl": 0.6, "rl-frozen-early": 0.58, "rl-frozen-mid": 0.58,
                                       "rl-frozen-late": 0.58})
    assert claim_freeze_late_hurts_most(same, same_items).verdict == "inconclusive"
    worse_early, we_items = freeze_records({"in": 0.4, "rl": 0.6, "rl-frozen-early": 0.45, "rl-frozen-mid": 0.58,
                                            "rl-frozen-late": 0.58})
    assert claim_freeze_late_hurts_most(worse_early, we_items).verdict == "contradicted"
    no_gain, ng_items = freeze_records({"in": 0.4, "rl": 0.4, "rl-frozen-early": 0.4, "rl-frozen-mid": 0.4,
                                        "rl-frozen-late": 0.3})
    c = claim_freeze_late_hurts_most(no_gain, ng_items)
    assert c.verdict == "inconclusive" and "no gain" in c.reason
    table_only = claim_freeze_late_hurts_most(table, None)  # unpaired fallback from the intervals
    assert table_only.verdict in ("supported", "inconclusive") and "interval" in table_only.test


# -- attention ------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(3))
def test_attention_uniform_rise_is_not_mid_late(seed):
    c = claim_attention_mid_late(attention_records("uniform", seed=seed), P28)
    assert c.verdict == "inconclusive", c.reason
    subs = {t["name"]: t for t in c.evidence["subtests"]}
    assert subs["mid+late shift (RL − IN)"]["verdict"] == "supported"  # the rise itself is real


def test_attention_planted_and_null():
    assert claim_attention_mid_late(attention_records("mid_late"), P28).verdict == "supported"
    assert claim_attention_mid_late(attention_records({"early": 0, "mid": -1, "late": -1}), P28).verdict == \
        "contradicted"
    null = claim_attention_mid_late(attention_records("null"), P28)
    assert null.verdict == "inconclusive"
    answer = claim_attention_mid_late(attention_records("mid_late"), P28, tokens="answer")
    assert "answer" in answer.rule and answer.verdict == "supported"


def test_attention_effect_matches_numpy():
    recs = attention_records("mid_late", n_items=10, seed=5)
    c = claim_attention_mid_late(recs, P28)
    by = {(r["model"], r["id"]): np.asarray(r["own"]["image"]).mean(-1) for r in recs}
    d = np.array([(by[("RL", str(i))] - by[("IN", str(i))])[9:].mean() for i in range(10)])
    assert c.evidence["mean_shift_mid_late"] == pytest.approx(d.mean(), abs=1e-6)


# -- all together ---------------------------------------------------------------------------------
def test_decide_all_on_a_null_pair_supports_nothing():
    tables = {"compare_layers": energy_layers("zero"), "necessity": None}
    items = {"eval": eval_records("null"), "attention": attention_records("null"),
             "vision_rl": vision_records({"recognition": 14, "ocr": 14}), "ablation_rl": None}
    claims = decide_all(tables, P28, items, n_layers=28)
    assert [c.claim for c in claims] == ["rl_refines_mid_late", "energy_in_late_rl_mid", "localization_order",
                                         "transfer_mid_late", "freeze_late_hurts_most",
                                         "rl_attention_vision_mid_late", "rl_update_sparse_full_rank",
                                         "rl_off_principal", "rl_rotates_less_than_sft", "rl_answer_emerges_earlier",
                                         "rl_gain_survives_rank_k"]
    assert all(c.verdict != "supported" for c in claims)
    for c in claims:
        _interface(c)
    assert all(c.p is None or (0 <= c.p <= 1 and not math.isnan(c.p)) for c in claims)
