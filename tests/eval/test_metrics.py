from __future__ import annotations

import math
import random

import numpy as np
import pytest

from frankenlab.errors import EvalError
from frankenlab.eval.metrics import accuracy, compare_paired, m_rea, m_v2r, m_vis
from frankenlab.eval.tables import RunOrder, Stats, comparisons_table, metrics_table, summary_table

T, F, X = True, False, None  # X = failed item

IMAGE = [T, T, T, F, F, T, X, T]
OTHER = [F, T, F, F, T, X, T, F]


def test_m_vis_against_hand_counted_table():
    r = m_vis(IMAGE, OTHER, n_boot=500)
    # pairs: (T,F) (T,T) (T,F) (F,F) (F,T) (T,X) (X,T) (T,F) -> n10=3 n11=1 n01=1 n00=1, 2 failed
    assert (r.n11, r.n10, r.n01, r.n00, r.n_failed, r.n) == (1, 3, 1, 1, 2, 8)
    assert r.value == pytest.approx(3 / 8) and r.k == 3
    assert r.n == r.n11 + r.n10 + r.n01 + r.n00 + r.n_failed
    assert r.ci_low <= r.value <= r.ci_high


def test_m_v2r_against_hand_counted_table():
    r = m_v2r(IMAGE, OTHER, n_boot=500)
    assert (r.n11, r.n10, r.n01, r.n00, r.n_failed) == (1, 3, 1, 1, 2)
    assert r.value == pytest.approx(1 / 8) and r.k == 1


def test_failures_stay_in_denominators_and_never_help():
    acc = accuracy(IMAGE, n_boot=200)
    assert (acc.k, acc.n, acc.n_failed) == (5, 8, 1) and acc.value == pytest.approx(5 / 8)
    # an image-correct item whose black run failed is not a perception success
    assert m_vis([T], [X], n_boot=200).value == 0.0
    assert m_v2r([T], [X], n_boot=200).value == 0.0
    assert m_rea([X, T], n_boot=200).value == pytest.approx(0.5)
    with pytest.raises(EvalError, match="same items"):
        m_vis([T, F], [T], n_boot=200)
    with pytest.raises(EvalError, match="True, False or None"):
        accuracy([1, 0, 2], n_boot=200)
    empty = m_vis([], [], n_boot=200)
    assert empty.n == 0 and math.isnan(empty.value)


def test_paired_comparison_and_mcnemar_by_hand():
    a = [T, T, T, T, T, T, F, T, F, F]
    b = [F, F, F, F, F, T, T, T, F, X]
    c = compare_paired(a, b, n_boot=500)
    assert (c.b, c.c, c.n) == (5, 1, 10)  # A-only successes, B-only successes
    assert c.p_mcnemar == pytest.approx(2 * (math.comb(6, 0) + math.comb(6, 1)) / 2**6)
    assert c.diff == pytest.approx(0.7 - 0.3) and c.mean_a == pytest.approx(0.7)
    assert c.ci_low <= c.diff <= c.ci_high and 0 < c.p_bootstrap <= 1


def _simulate(rng: np.random.Generator, n: int) -> tuple[list[bool], list[bool], list[bool]]:
    image = rng.random(n) < 0.6
    black = np.where(image, rng.random(n) < 0.5, rng.random(n) < 0.2)  # M_vis = 0.6 * 0.5 = 0.3
    described = np.where(image, rng.random(n) < 0.7, rng.random(n) < 0.3)  # M_v2r = 0.6 * 0.7 = 0.42
    return image.tolist(), black.tolist(), described.tolist()


def test_intervals_cover_known_values_in_simulation():
    rng = np.random.default_rng(1234)
    sims, covered_vis, covered_v2r, covered_acc = 200, 0, 0, 0
    for s in range(sims):
        image, black, described = _simulate(rng, 100)
        v = m_vis(image, black, n_boot=500, seed=s)
        w = m_v2r(image, described, n_boot=500, seed=s)
        a = accuracy(image, n_boot=500, seed=s)
        covered_vis += v.ci_low <= 0.3 <= v.ci_high
        covered_v2r += w.ci_low <= 0.42 <= w.ci_high
        covered_acc += a.ci_low <= 0.6 <= a.ci_high
    for covered in (covered_vis, covered_v2r, covered_acc):
        assert 0.88 <= covered / sims <= 0.99


def _records():
    """Two models, one task: 4 image items (3 settings) and 2 text items; one failure."""
    rows = []
    outcomes = {
        "A": {"image": [T, T, F, T], "black": [F, T, F, F], "described": [T, F, F, T], "text": [T, F]},
        "B": {"image": [T, F, F, T], "black": [F, F, T, X], "described": [T, T, F, F], "text": [T, T]},
    }
    for model, by_setting in outcomes.items():
        for setting, outs in by_setting.items():
            ids = [f"i{k}" for k in range(4)] if setting != "text" else ["t0", "t1"]
            for item, o in zip(ids, outs):
                rows.append({"model": model, "task": "mw", "item_id": item, "setting": setting,
                             "correct": bool(o), "error": "boom" if o is None else None})
    return rows


ORDER = RunOrder(models=["A", "B"], tasks={"mw": ["i0", "i1", "i2", "i3", "t0", "t1"]})


def test_tables_from_records_match_hand_counts_and_ignore_record_order():
    rows = _records()
    stats = Stats(n_boot=300)
    summary = summary_table(rows, ORDER, stats)
    metrics = metrics_table(rows, ORDER, stats)
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    assert summary.equals(summary_table(shuffled, ORDER, stats))
    assert metrics.equals(metrics_table(shuffled, ORDER, stats))
    b_black = summary.set_index(["model", "setting"]).loc[("B", "black")]
    assert (b_black["n"], b_black["n_correct"], b_black["n_failed"]) == (4, 1, 1)
    m = metrics[metrics["task"] == "all"].set_index(["model", "metric"])
    # A: image TTFT vs black FTFF -> n10 = i0, i3 = 2, n11 = i1
    assert (m.loc[("A", "M_vis"), "value"], m.loc[("A", "M_vis"), "n10"], m.loc[("A", "M_vis"), "n11"]) == (0.5, 2, 1)
    # A: image TTFT vs described TFFT -> n11 = i0, i3
    assert m.loc[("A", "M_v2r"), "value"] == 0.5
    assert m.loc[("A", "M_rea"), "value"] == 0.5 and m.loc[("B", "M_rea"), "value"] == 1.0
    # B: image TFFT vs black FFTX -> i0 counts, i3 failed
    assert (m.loc[("B", "M_vis"), "k"], m.loc[("B", "M_vis"), "n_failed"]) == (1, 1)
    comp = comparisons_table(rows, ORDER, stats).set_index(["task", "measure"])
    img = comp.loc[("mw", "accuracy:image")]
    assert (img["b"], img["c"], img["n"]) == (1, 0, 4)
    assert comp.loc[("all", "M_vis"), "diff"] == pytest.approx(0.5 - 0.25)
