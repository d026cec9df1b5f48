"""Geometry, rank and precision-aware sparsity metrics on matrices with a known answer, and against numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from frankenlab.compare import metrics as M

K = 4


def spectral_matrix(m: int, n: int, seed: int, decay: float = 0.8) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                          np.ndarray]:
    """W = U diag(s) Vᵀ with distinct, decaying s: a well-defined top-k subspace for every k."""
    rng = np.random.default_rng(seed)
    r = min(m, n)
    u, _ = np.linalg.qr(rng.standard_normal((m, r)))
    v, _ = np.linalg.qr(rng.standard_normal((n, r)))
    s = 10.0 * decay ** np.arange(r)
    return (u * s) @ v.T, u, s, v


def plane_rotation(a: np.ndarray, b: np.ndarray, theta: float) -> np.ndarray:
    """Rotation by theta in the plane of orthonormal a, b (identity elsewhere)."""
    p = np.outer(a, a) + np.outer(b, b)
    return np.eye(len(a)) - p + math.cos(theta) * p + math.sin(theta) * (np.outer(b, a) - np.outer(a, b))


def metrics(w_ref: np.ndarray, w_after: np.ndarray, k: int = K, svd: str = "exact", **kw: float) -> dict[str, float]:
    settings = M.SpectrumSettings(svd=svd, subspace_k=k, **kw)
    ref = torch.from_numpy(w_ref)
    delta = torch.from_numpy(w_after - w_ref)
    f = M.delta_facts(delta, M.frobenius(ref), settings.method_for(tuple(delta.shape)), settings, w_ref=ref)
    return M.compute_metrics(f)


def np_angles_deg(a: np.ndarray, b: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Principal angles of the top-k left and right singular subspaces, by numpy's SVD (independent)."""
    ua, _, vta = np.linalg.svd(a, full_matrices=False)
    ub, _, vtb = np.linalg.svd(b, full_matrices=False)

    def angles(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        c = np.clip(np.linalg.svd(x.T @ y, compute_uv=False), -1, 1)
        return np.degrees(np.arccos(c))

    return angles(ua[:, :k], ub[:, :k]), angles(vta[:k].T, vtb[:k].T)


@pytest.mark.parametrize("tall", [False, True])
def test_rotation_by_a_known_angle(tall: bool) -> None:
    w, u, _, _ = spectral_matrix(30, 50, seed=0)
    theta = math.radians(7.0)
    rot = plane_rotation(u[:, 0], u[:, K + 1], theta)  # tilts u_1 towards a direction outside the top k
    after = rot @ w  # left vectors rotate, right vectors and singular values stay
    if tall:  # the same update seen transposed: the rotation is now on the right side
        w, after = w.T.copy(), after.T.copy()
    got = metrics(w, after)
    assert got["subspace_angle_max_deg"] == pytest.approx(7.0, abs=1e-9)
    assert got["subspace_angle_mean_deg"] == pytest.approx(7.0 / (2 * K), abs=1e-9)  # one angle of 2k is θ
    assert got["projection_distance"] == pytest.approx(math.sqrt(2) * math.sin(theta), abs=1e-10)
    assert got["sigma_drift_topk"] == pytest.approx(0.0, abs=1e-12)
    assert got["update_rank"] == 2  # (R − I)W: a plane rotation minus the identity has rank 2
    left, right = np_angles_deg(w, after, K)
    assert max(left.max(), right.max()) == pytest.approx(got["subspace_angle_max_deg"], abs=1e-6)
    assert (right if not tall else left).max() < 1e-5  # the other side did not move


def test_right_rotation_and_a_random_update_match_numpy() -> None:
    w, _, _, v = spectral_matrix(24, 40, seed=1)
    after = w @ plane_rotation(v[:, 1], v[:, 10], math.radians(20.0)).T
    got = metrics(w, after)
    left, right = np_angles_deg(w, after, K)
    assert left.max() < 1e-5 and right.max() == pytest.approx(20.0, abs=1e-6)
    assert got["subspace_angle_max_deg"] == pytest.approx(20.0, abs=1e-9)

    rng = np.random.default_rng(2)
    after = w + 0.3 * rng.standard_normal(w.shape)
    got = metrics(w, after)
    left, right = np_angles_deg(w, after, K)
    both = np.concatenate([left, right])
    assert got["subspace_angle_max_deg"] == pytest.approx(both.max(), abs=1e-6)
    assert got["subspace_angle_mean_deg"] == pytest.approx(both.mean(), abs=1e-6)
    dist = max(math.sqrt(2 * np.sum(np.sin(np.radians(x)) ** 2)) for x in (left, right))
    assert got["projection_distance"] == pytest.approx(dist, abs=1e-8)
    s_ref = np.linalg.svd(w, compute_uv=False)[:K]
    s_after = np.linalg.svd(after, compute_uv=False)[:K]
    assert got["sigma_drift_topk"] == pytest.approx(np.mean(np.abs(s_after - s_ref) / s_ref), rel=1e-9)
    assert got["sigma_drift_topk"] > 0.01


def test_spectral_drift_of_known_singular_values() -> None:
    w, u, s, v = spectral_matrix(20, 35, seed=3)
    scale = np.ones_like(s)
    scale[:K] = [1.05, 0.97, 1.02, 0.99]  # keeps the order: 10.5, 7.76, 6.53, 5.07 > 4.10 …
    after = (u * (s * scale)) @ v.T
    got = metrics(w, after)
    assert got["sigma_drift_topk"] == pytest.approx(np.mean([0.05, 0.03, 0.02, 0.01]), rel=1e-9)
    assert got["subspace_angle_max_deg"] < 1e-6  # same singular vectors


def test_principal_share_inside_outside_random() -> None:
    m, n = 30, 45
    w, u, _, v = spectral_matrix(m, n, seed=4)
    rng = np.random.default_rng(5)
    inside = u[:, :K] @ rng.standard_normal((K, K)) @ v[:, :K].T * 0.01
    outside = u[:, K:2 * K] @ rng.standard_normal((K, K)) @ v[:, K:2 * K].T * 0.01
    got_in, got_out = metrics(w, w + inside), metrics(w, w + outside)
    assert got_in["principal_share"] == pytest.approx(1.0, abs=1e-9)
    assert got_out["principal_share"] == pytest.approx(0.0, abs=1e-9)
    assert got_in["principal_share_null"] == got_out["principal_share_null"] == pytest.approx(K * K / (m * n))
    d = 0.01 * rng.standard_normal((m, n))
    ua, _, vta = np.linalg.svd(w)
    want = np.sum((ua[:, :K].T @ d @ vta[:K].T) ** 2) / np.sum(d ** 2)
    assert metrics(w, w + d)["principal_share"] == pytest.approx(want, rel=1e-8)


def test_update_rank_of_a_rank_r_update_and_its_tolerance() -> None:
    m, n = 40, 64
    w, _, _, _ = spectral_matrix(m, n, seed=6)
    rng = np.random.default_rng(7)
    for r in (1, 3, 17):
        d = rng.standard_normal((m, r)) @ rng.standard_normal((r, n)) * 1e-3
        got = metrics(w, w + d)
        assert got["update_rank"] == r and got["update_rank_frac"] == pytest.approx(r / m)
    qa, _ = np.linalg.qr(rng.standard_normal((m, 3)))
    qb, _ = np.linalg.qr(rng.standard_normal((n, 3)))
    d = (qa * [1.0, 1e-2, 1e-4]) @ qb.T  # σ = 1, 1e-2, 1e-4
    assert metrics(w, w + d)["update_rank"] == 2  # default tol 1e-3
    assert metrics(w, w + d, rank_tol=1e-5)["update_rank"] == 3
    full = d + 1e-2 * np.linalg.qr(rng.standard_normal((n, m)))[0].T  # every σ ≥ 1e-2 − 1e-4 ≫ 1e-3
    assert metrics(w, w + full)["update_rank_frac"] == 1.0


def test_update_rank_is_not_capped_by_a_top_k_spectrum() -> None:
    w, _, _, _ = spectral_matrix(60, 90, seed=8)
    d = np.random.default_rng(9).standard_normal((60, 90)) * 1e-3  # full rank 60
    got = metrics(w, w + d, svd="lowrank", top_k=8, oversample=4)
    assert math.isnan(got["update_rank"]) and math.isnan(got["update_rank_frac"])  # unknown, not "8"
    assert metrics(w, w + d)["update_rank"] == 60


def test_below_bf16_frac_known_counts_and_numpy() -> None:
    rng = np.random.default_rng(10)
    w = rng.standard_normal((50, 80)).astype(np.float32)
    group = rng.integers(0, 4, size=w.shape)  # 0 unchanged, 1 below, 2 above, 3 above
    rel = np.where(group == 1, 0.25, np.where(group >= 2, 4.0, 0.0)) * 2.0 ** -8
    d = (np.abs(w) * rel * rng.choice([-1.0, 1.0], size=w.shape)).astype(np.float32)
    got = metrics(w.astype(np.float64), (w + d).astype(np.float64))
    assert got["below_bf16_frac"] == pytest.approx(float((group == 1).mean()))
    counts = M.RelativeCounts((0.0, 1e-3, 2.0 ** -7))
    counts.update(torch.from_numpy(d), torch.from_numpy(w))
    ad, aw = np.abs(d.astype(np.float64)), np.abs(w.astype(np.float64))
    for tol, frac in counts.frac_changed().items():
        assert frac == pytest.approx(float((ad > tol * aw).mean())), tol
    assert counts.frac_changed()[2.0 ** -7] == pytest.approx(float((group >= 2).mean()))  # 4·2⁻⁸ > 2⁻⁷
    assert counts.below_bf16_frac == pytest.approx(float(((ad > 0) & (ad < aw * 2.0 ** -8)).mean()))


def test_below_bf16_flags_every_update_bf16_absorbs_and_none_of_a_bf16_rounded_one() -> None:
    gen = torch.Generator().manual_seed(11)
    w = torch.randn(64, 96, generator=gen).to(torch.bfloat16).float()  # weights exactly representable in bf16
    u = torch.randn(64, 96, generator=gen) * w.abs() * torch.rand(64, 96, generator=gen) * 2.0 ** -6
    counts = M.RelativeCounts()
    counts.update(u, w)
    absorbed = ((w + u).to(torch.bfloat16).float() == w) & (u != 0)  # what a bf16 optimizer step would drop
    flagged = (u.abs() < w.abs() * 2.0 ** -8) & (u != 0)
    assert bool((flagged | ~absorbed).all())  # absorbed ⊆ below-threshold
    assert counts.below_bf16 == int(flagged.sum()) and 0.1 < counts.below_bf16_frac < 0.9
    stored = (w + u).to(torch.bfloat16).float()  # the same update saved in bf16
    rounded = M.RelativeCounts()
    rounded.update(stored - w, w)
    assert rounded.below_bf16 == 0  # a stored bf16 change is at least |w|·2⁻⁸: sparsity from rounding is gone
    assert 0 < rounded.frac_changed()[0.0] < 1


def test_unchanged_and_degenerate_weights() -> None:
    w, _, _, _ = spectral_matrix(12, 20, seed=12)
    same = metrics(w, w.copy())
    assert same["subspace_angle_max_deg"] == 0 and same["sigma_drift_topk"] == 0
    assert math.isnan(same["principal_share"]) and same["update_rank"] == 0 and same["below_bf16_frac"] == 0
    zero = metrics(np.zeros((12, 20)), w)  # W_ref = 0: no principal subspace to speak of
    assert math.isnan(zero["subspace_angle_max_deg"]) and math.isnan(zero["principal_share"])
    none = metrics(w, w + 1.0, svd="none")
    assert math.isnan(none["subspace_angle_max_deg"]) and math.isnan(none["update_rank"])
    assert not math.isnan(none["below_bf16_frac"])
    off = metrics(w, w + 1.0, k=0)
    assert math.isnan(off["principal_share"]) and off["update_rank"] == 1  # rank one: all-ones update
