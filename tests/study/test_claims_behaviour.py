"""Behaviour verdicts (logit-lens emergence, rank-K retention) on inputs whose truth is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from frankenlab.study.claims_behaviour import RETAIN, claim_answer_emerges_earlier, claim_rank_k_keeps_gain
from frankenlab.testing.claims import eval_records


def _lens(shift: float, n: int = 80, seed: int = 0, p_shift: float = 0.7) -> pd.DataFrame:
    """IN emerges at a random layer 2..6; RL at IN + `shift` on a share p_shift of the items, else the same."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        base = int(rng.integers(2, 7))
        moved = base + (int(shift) if rng.random() < p_shift else 0)
        rows += [{"model": "in", "item": f"t/{i}", "emergence_layer": float(base), "task": "t"},
                 {"model": "rl", "item": f"t/{i}", "emergence_layer": float(max(0, moved)), "task": "t"}]
    rows += [{"model": "in", "item": "t/none", "emergence_layer": np.nan, "task": "t"},
             {"model": "rl", "item": "t/none", "emergence_layer": 3.0, "task": "t"}]
    return pd.DataFrame(rows)


def test_identical_emergence_is_inconclusive():
    c = claim_answer_emerges_earlier(_lens(0))
    assert c.verdict == "inconclusive" and "same in RL and IN" in c.reason
    assert c.evidence["n_emerge_rl_only"] == 1


@pytest.mark.parametrize(("shift", "verdict"), [(-1, "supported"), (1, "contradicted")])
def test_planted_shift_is_found_in_its_direction(shift, verdict):
    c = claim_answer_emerges_earlier(_lens(shift))
    assert c.verdict == verdict
    d = _lens(shift)
    wide = d.pivot_table(index="item", columns="model", values="emergence_layer").dropna()
    assert c.n == len(wide) == 80
    assert c.effect == pytest.approx(float((wide["rl"] - wide["in"]).mean()), abs=1e-5)
    assert c.ci_low < c.effect < c.ci_high and c.p < 0.05


def test_lens_without_a_pair_or_data():
    assert "no IN/RL results" in claim_answer_emerges_earlier(None).reason
    one = _lens(-1)
    assert "no IN/RL pair" in claim_answer_emerges_earlier(one[one["model"] == "rl"]).reason


def _with_variant(records: list[dict], label: str, acc_of: dict[str, float], seed: int) -> list[dict]:
    """Add `label`'s answers: correct where IN is, plus where RL gains, with probability `keep`."""
    rng = np.random.default_rng(seed)
    by = {(r["model"], r["task"], r["item_id"], r["setting"]): r for r in records}
    out = list(records)
    for (model, task, item, setting), r in list(by.items()):
        if model != "IN":
            continue
        rl = by[("RL", task, item, setting)]
        gained = rl["correct"] and not r["correct"]
        correct = r["correct"] or (gained and rng.random() < acc_of["keep"])
        out.append({**r, "model": label, "correct": bool(correct)})
    return out


@pytest.mark.parametrize(("keep", "verdict"), [(0.95, "supported"), (0.05, "contradicted")])
def test_rank_k_retention_is_decided_against_half_the_gain(keep, verdict):
    records = _with_variant(eval_records("late", n_items=400, seed=3), "rank8", {"keep": keep}, seed=4)
    c = claim_rank_k_keeps_gain(records, {"rank8": {"late": 8}})
    assert c.verdict == verdict, c.reason
    kept = [row[5] for row in c.evidence["table"]["rows"]]
    assert all((k > RETAIN) == (verdict == "supported") for k in kept)


def test_rank_k_needs_a_variant_and_a_gain():
    assert "no rank-K variant" in claim_rank_k_keeps_gain(eval_records("late"), {}).reason
    null = _with_variant(eval_records("null", n_items=400), "rank8", {"keep": 1.0}, seed=0)
    c = claim_rank_k_keeps_gain(null, {"rank8": {"late": 8}})
    assert c.verdict == "inconclusive" and "no significant paired gain" in c.reason
    assert "were not evaluated" in claim_rank_k_keeps_gain(eval_records("late"), {"rank4": {"late": 4}}).reason
