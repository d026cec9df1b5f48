"""Statistics helpers checked against hand-computed values and a small coverage simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from frankenlab.errors import FrankenlabError
from frankenlab.stats import (
    bootstrap_mean_ci,
    bootstrap_statistic_ci,
    mcnemar_exact,
    paired_bootstrap_diff,
    two_by_two,
    wilson_interval,
)

Z95 = 1.959963984540054  # Phi^{-1}(0.975)


def _wilson_by_hand(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    p = k / n
    center = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = (z / (1 + z**2 / n)) * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    return center - half, center + half


def test_wilson_k0_n10() -> None:
    low, high = wilson_interval(0, 10)
    assert low == 0.0
    # k = 0: upper bound is z^2 / (n + z^2)
    assert high == pytest.approx(Z95**2 / (10 + Z95**2), abs=1e-12)
    assert high == pytest.approx(0.27753, abs=1e-5)


def test_wilson_k5_n10_matches_closed_form() -> None:
    low, high = wilson_interval(5, 10)
    exp_low, exp_high = _wilson_by_hand(5, 10)
    assert low == pytest.approx(exp_low, abs=1e-12)
    assert high == pytest.approx(exp_high, abs=1e-12)
    assert (low, high) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    assert low + high == pytest.approx(1.0)  # symmetric around 1/2


def test_wilson_other_confidence_and_edges() -> None:
    low90, high90 = wilson_interval(5, 10, confidence=0.90)
    low95, high95 = wilson_interval(5, 10)
    assert low95 < low90 < high90 < high95
    assert wilson_interval(10, 10)[1] == 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    with pytest.raises(FrankenlabError):
        wilson_interval(11, 10)
    with pytest.raises(FrankenlabError):
        wilson_interval(1, 10, confidence=1.5)


def test_mcnemar_exact_hand_computed() -> None:
    # b=1, c=5: n=6, P[X<=1] = (1 + 6)/64, two-sided = 14/64
    assert mcnemar_exact(1, 5) == pytest.approx(14 / 64)
    assert mcnemar_exact(5, 1) == pytest.approx(14 / 64)
    # b=0, c=6: 2 * 1/64
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    # b=2, c=8: n=10, P[X<=2] = (1 + 10 + 45)/1024 -> 112/1024
    assert mcnemar_exact(2, 8) == pytest.approx(112 / 1024)
    # balanced and empty tables are not evidence of anything
    assert mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(0, 0) == 1.0
    # large counts stay finite and tiny (no float underflow in the binomial sum)
    assert 0.0 < mcnemar_exact(100, 400) < 1e-40
    with pytest.raises(FrankenlabError):
        mcnemar_exact(-1, 2)


def test_two_by_two_hand_table() -> None:
    a = np.array([1, 1, 1, 0, 0, 1, 0, 0, 1, 1], dtype=bool)
    b = np.array([1, 0, 1, 1, 0, 0, 0, 1, 1, 0], dtype=bool)
    # rows: (1,1) x3 [0,2,8]; (1,0) x3 [1,5,9]; (0,1) x2 [3,7]; (0,0) x2 [4,6]
    assert two_by_two(a, b) == {"n11": 3, "n10": 3, "n01": 2, "n00": 2}
    assert two_by_two([1, 0], [0, 1]) == {"n11": 0, "n10": 1, "n01": 1, "n00": 0}
    with pytest.raises(FrankenlabError):
        two_by_two([1, 2], [0, 1])
    with pytest.raises(FrankenlabError):
        two_by_two([1, 0, 1], [0, 1])


def test_bootstrap_mean_ci_is_seeded_and_brackets_mean() -> None:
    values = np.array([1, 0, 1, 1, 0, 1, 1, 1, 0, 1] * 5)
    mean, low, high = bootstrap_mean_ci(values, seed=3)
    assert mean == pytest.approx(0.7)
    assert low < mean < high
    assert bootstrap_mean_ci(values, seed=3) == (mean, low, high)
    gen_result = bootstrap_mean_ci(values, seed=np.random.default_rng(3))
    assert gen_result == (mean, low, high)
    assert all(math.isnan(v) for v in bootstrap_mean_ci([]))
    # a constant sample has a degenerate interval
    assert bootstrap_mean_ci(np.ones(20)) == (1.0, 1.0, 1.0)


def test_bootstrap_statistic_ci_resamples_rows_jointly() -> None:
    rng = np.random.default_rng(0)
    a = rng.random(400) < 0.7
    b = a & (rng.random(400) < 0.8)  # b is only ever right where a is right
    value, low, high = bootstrap_statistic_ci([a, b], lambda x, y: float(np.mean(x & ~y)), n_boot=500)
    assert value == pytest.approx(float(np.mean(a & ~b)))
    assert low <= value <= high
    # joint resampling keeps the pairing: mean(~a & b) is 0 in every resample
    v0, l0, h0 = bootstrap_statistic_ci([a, b], lambda x, y: float(np.mean(~x & y)), n_boot=200)
    assert (v0, l0, h0) == (0.0, 0.0, 0.0)
    with pytest.raises(FrankenlabError):
        bootstrap_statistic_ci([a, b[:-1]], lambda x, y: 0.0)


def test_paired_bootstrap_diff() -> None:
    rng = np.random.default_rng(1)
    base = rng.random(300) < 0.5
    better = base | (rng.random(300) < 0.3)
    diff, low, high, p = paired_bootstrap_diff(better, base, seed=0)
    assert diff == pytest.approx(better.mean() - base.mean())
    assert 0 < low <= diff <= high
    assert p < 0.01
    same = paired_bootstrap_diff(base, base, n_boot=200)
    assert same[0] == 0.0 and same[3] == 1.0
    with pytest.raises(FrankenlabError):
        paired_bootstrap_diff([1, 0], [1])


def test_interval_coverage_simulation() -> None:
    """95 % intervals should cover the true p in roughly 95 % of draws (accept 90-99 % of 300)."""
    rng = np.random.default_rng(2024)
    p_true, n, draws = 0.3, 100, 300
    wilson_hits = boot_hits = 0
    for i in range(draws):
        sample = rng.random(n) < p_true
        low, high = wilson_interval(int(sample.sum()), n)
        wilson_hits += low <= p_true <= high
        _, blow, bhigh = bootstrap_mean_ci(sample, n_boot=1000, seed=i)
        boot_hits += blow <= p_true <= bhigh
    assert 0.90 <= wilson_hits / draws <= 0.99
    assert 0.90 <= boot_hits / draws <= 0.99


def test_holm_matches_hand_computation():
    from frankenlab.stats import holm

    # sorted p: 0.01 (×3), 0.02 (×2), 0.04 (×1) → 0.03, 0.04, 0.04 (monotone); None is skipped
    assert holm([0.04, 0.01, None, 0.02]) == pytest.approx([0.04, 0.03, None, 0.04])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])


def test_permutation_group_test_exact_against_itertools():
    import itertools

    from frankenlab.stats import permutation_group_test

    x = np.array([0.3, 0.1, 0.9, 1.2, 0.8, 1.1])
    g = np.array([False, False, True, True, True, True])
    diff, p, n = permutation_group_test(x, g)
    assert n == 15 and diff == pytest.approx(x[g].mean() - x[~g].mean())
    stats = []
    for chosen in itertools.combinations(range(6), 4):
        m = np.zeros(6, bool)
        m[list(chosen)] = True
        stats.append(x[m].mean() - x[~m].mean())
    assert p == pytest.approx(np.mean(np.abs(stats) >= abs(diff) - 1e-12))
    assert p == pytest.approx(1 / 15)  # the most extreme arrangement: the smallest attainable p


def test_permutation_group_test_monte_carlo_is_calibrated():
    from frankenlab.stats import permutation_group_test

    rng = np.random.default_rng(0)
    g = np.arange(28) >= 9
    ps = [permutation_group_test(rng.standard_normal(28), g, n_perm=400, seed=s)[1] for s in range(200)]
    assert 0.01 <= np.mean(np.array(ps) < 0.05) <= 0.10


def test_sign_flip_exact_and_monte_carlo():
    import itertools

    from frankenlab.stats import sign_flip_test

    d = np.array([1.0, 2.0, -0.5, 3.0])
    flips = [abs(np.dot(s, d)) / 4 for s in itertools.product([-1, 1], repeat=4)]
    assert sign_flip_test(d) == pytest.approx(np.mean(np.array(flips) >= abs(d.mean()) - 1e-12))
    big = np.r_[np.ones(30), -np.ones(10)]
    p = sign_flip_test(big, n_perm=4000, seed=1)
    assert 0.0005 < p < 0.01  # binomial two-sided P(≥30 of 40) ≈ 0.0022
    assert sign_flip_test(np.zeros(20)) == 1.0
