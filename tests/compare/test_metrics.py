"""Every delta metric against an independent numpy (float64) computation on small tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from frankenlab.compare import metrics as M
from frankenlab.errors import CompareError


def bf16_to_numpy(t: torch.Tensor) -> np.ndarray:
    """Decode bf16 bits in numpy (upper 16 bits of a float32): independent of torch's casts."""
    bits = t.contiguous().view(torch.int16).numpy().view(np.uint16).astype(np.uint32) << 16
    return bits.view(np.float32).astype(np.float64).reshape(t.shape)


def np_metrics(old: np.ndarray, new: np.ndarray) -> dict[str, float]:
    d = new - old
    fro = float(np.sqrt((d ** 2).sum()))
    return {"fro": fro, "rel_fro": fro / float(np.sqrt((old ** 2).sum())), "max_abs": float(np.abs(d).max()),
            "unchanged_frac": float((new == old).mean())}


def np_ranks(d: np.ndarray) -> tuple[np.ndarray, float, float]:
    s = np.linalg.svd(d.reshape(d.shape[0], -1), compute_uv=False)
    p = s / s.sum()
    eff = float(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum()))
    return s, float((d ** 2).sum() / s[0] ** 2), eff


def facts(old: torch.Tensor, new: torch.Tensor, settings: M.SpectrumSettings | None = None) -> M.DeltaFacts:
    settings = settings or M.SpectrumSettings(svd="exact")
    delta = new.float() - old.float()
    return M.delta_facts(delta, M.frobenius(old.float()), settings.method_for(tuple(delta.shape)), settings)


def test_norm_metrics_match_numpy_with_exact_zeros() -> None:
    gen = torch.Generator().manual_seed(0)
    old = torch.randn(17, 23, generator=gen)
    new = old + torch.randn(17, 23, generator=gen) * 1e-3
    keep = torch.rand(17, 23, generator=gen) < 0.4
    new[keep] = old[keep]
    got = M.compute_metrics(facts(old, new))
    want = np_metrics(old.double().numpy(), new.double().numpy())
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-5), key
    assert 0.3 < got["unchanged_frac"] < 0.5


def test_bf16_deltas_that_fp16_would_flush_are_preserved() -> None:
    gen = torch.Generator().manual_seed(1)
    old = (torch.rand(8, 12, generator=gen) * 2e-8 + 5e-9).to(torch.bfloat16)  # below fp16's range
    new = (old.view(torch.int16) + 1).view(torch.bfloat16)  # the next bf16 value: Δ ≈ 1e-8 · 2⁻⁷
    assert torch.count_nonzero(new.half() - old.half()) == 0  # the reference's fp16 deltas lose all of it
    got = M.compute_metrics(facts(old, new))
    want = np_metrics(bf16_to_numpy(old), bf16_to_numpy(new))
    assert got["fro"] > 0
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-6), key
    assert got["unchanged_frac"] == 0.0


def test_exact_spectrum_and_ranks_match_numpy() -> None:
    gen = torch.Generator().manual_seed(2)
    old = torch.randn(20, 30, generator=gen).to(torch.bfloat16)
    new = (old.float() + torch.randn(20, 30, generator=gen) * 0.1).to(torch.bfloat16)
    f = facts(old, new)
    got = M.compute_metrics(f)
    s, stable, eff = np_ranks(bf16_to_numpy(new) - bf16_to_numpy(old))
    assert f.spectrum is not None and f.spectrum.scope == "full" and len(f.spectrum.values) == 20
    np.testing.assert_allclose(f.spectrum.values, s, rtol=1e-5)
    assert got["sigma1"] == pytest.approx(s[0], rel=1e-5)
    assert got["stable_rank"] == pytest.approx(stable, rel=1e-5)
    assert got["effective_rank"] == pytest.approx(eff, rel=1e-5)
    top = s[:5] / s[:5].sum()  # top_k = 5 below
    f5 = M.delta_facts(torch.from_numpy(bf16_to_numpy(new) - bf16_to_numpy(old)).float(), 1.0, "exact",
                       M.SpectrumSettings(svd="exact", top_k=5))
    assert M.compute_metrics(f5)["effective_rank_topk"] == pytest.approx(math.exp(-(top * np.log(top)).sum()), rel=1e-5)
    np.testing.assert_allclose(M.normalized_spectrum(f.spectrum.values, 5), s[:5] / s[0], rtol=1e-5)


def test_conv_kernels_are_flattened_to_out_by_rest() -> None:
    gen = torch.Generator().manual_seed(3)
    delta = torch.randn(6, 3, 2, 2, 2, generator=gen)
    f = M.delta_facts(delta, 1.0, "exact", M.SpectrumSettings(svd="exact"))
    s = np.linalg.svd(delta.double().numpy().reshape(6, 24), compute_uv=False)
    np.testing.assert_allclose(f.spectrum.values, s, rtol=1e-5)
    assert M.as_matrix_shape((6, 3, 2, 2, 2)) == (6, 24)


def _decaying(m: int, n: int, seed: int, noise: float = 1e-4) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, 40, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(n, 40, generator=gen))
    sig = torch.tensor([0.8 ** i for i in range(40)])
    return (u * sig) @ v.T + noise * torch.randn(m, n, generator=gen)


def test_lowrank_top_values_within_one_percent_and_scope_is_named() -> None:
    delta = _decaying(300, 500, seed=4)
    settings = M.SpectrumSettings(svd="lowrank", top_k=16, oversample=8, niter=4)
    assert settings.method_for((300, 500)) == "lowrank"
    f = M.delta_facts(delta, 1.0, "lowrank", settings)
    s = np.linalg.svd(delta.double().numpy(), compute_uv=False)
    assert f.spectrum.scope == "top16" and not f.spectrum.complete and len(f.spectrum.values) == 16
    np.testing.assert_allclose(f.spectrum.values[:8], s[:8], rtol=1e-2)
    got = M.compute_metrics(f)
    top = s[:16] / s[:16].sum()
    assert got["effective_rank"] == pytest.approx(math.exp(-(top * np.log(top)).sum()), rel=1e-2)
    assert got["effective_rank_topk"] == got["effective_rank"]
    assert got["stable_rank"] == pytest.approx((delta.double() ** 2).sum().item() / s[0] ** 2, rel=1e-2)
    again = M.delta_facts(delta, 1.0, "lowrank", settings)
    np.testing.assert_array_equal(f.spectrum.values, again.spectrum.values)  # seeded: reruns agree exactly


def test_method_choice() -> None:
    auto = M.SpectrumSettings(svd="auto", top_k=32, oversample=8, exact_max_dim=1024)
    assert auto.method_for((1024, 4096)) == "exact"
    assert auto.method_for((3584, 18944)) == "lowrank"
    assert auto.method_for((3584,)) is None
    assert M.SpectrumSettings(svd="none").method_for((64, 64)) is None
    assert M.SpectrumSettings(svd="exact").method_for((5000, 5000)) == "exact"
    assert M.SpectrumSettings(svd="lowrank", top_k=32, oversample=8).method_for((30, 500)) == "exact"


def test_zero_delta_and_vectors() -> None:
    w = torch.randn(5, 7)
    f = facts(w, w.clone())
    got = M.compute_metrics(f)
    assert got["fro"] == 0 and got["max_abs"] == 0 and got["unchanged_frac"] == 1.0 and got["rel_fro"] == 0
    assert got["sigma1"] == 0 and math.isnan(got["stable_rank"]) and math.isnan(got["effective_rank"])
    v_old, v_new = torch.ones(9), torch.ones(9)
    v_new[3] = 1.5
    fv = facts(v_old, v_new)
    gv = M.compute_metrics(fv)
    assert fv.spectrum is None and math.isnan(gv["sigma1"]) and math.isnan(gv["stable_rank"])
    assert gv["fro"] == pytest.approx(0.5) and gv["unchanged_frac"] == pytest.approx(8 / 9)
    assert gv["rel_fro"] == pytest.approx(0.5 / 3)


def test_negative_zero_counts_as_unchanged() -> None:
    old = torch.tensor([[0.0, 1.0], [2.0, -0.0]])
    new = torch.tensor([[-0.0, 1.0], [2.5, 0.0]])
    assert M.unchanged_fraction(new - old) == pytest.approx(float((new.numpy() == old.numpy()).mean()))


def test_cosine_and_chunked_dot_match_numpy() -> None:
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(1100, 1000, generator=gen)  # > one dot chunk
    b = 0.3 * a + torch.randn(1100, 1000, generator=gen)
    an, bn = a.double().numpy().ravel(), b.double().numpy().ravel()
    assert M.dot(a, b) == pytest.approx(float(an @ bn), rel=1e-7)
    assert M.cosine(a, b) == pytest.approx(float(an @ bn / np.linalg.norm(an) / np.linalg.norm(bn)), rel=1e-6)
    assert math.isnan(M.cosine(a, torch.zeros_like(a)))


def test_effective_rank_formula_on_hand_values() -> None:
    assert M.effective_rank_of(np.array([1.0, 1.0, 1.0, 1.0])) == pytest.approx(4.0)
    assert M.effective_rank_of(np.array([2.0, 0.0])) == pytest.approx(1.0)
    assert M.stable_rank_of(2.0, 1.0) == pytest.approx(4.0)
    assert math.isnan(M.effective_rank_of(np.zeros(3)))


def test_registry_and_validation() -> None:
    assert list(M.METRICS) == ["fro", "rel_fro", "max_abs", "unchanged_frac", "below_bf16_frac", "sigma1",
                               "stable_rank", "effective_rank", "effective_rank_topk", "update_rank",
                               "update_rank_frac", "subspace_angle_max_deg", "subspace_angle_mean_deg",
                               "projection_distance", "sigma_drift_topk", "principal_share", "principal_share_null"]
    assert {n for n, m in M.METRICS.items() if m.needs == "spectrum"} == {
        "sigma1", "stable_rank", "effective_rank", "effective_rank_topk", "update_rank", "update_rank_frac"}
    assert {n for n, m in M.METRICS.items() if m.needs == "geometry"} == {
        "subspace_angle_max_deg", "subspace_angle_mean_deg", "projection_distance", "sigma_drift_topk",
        "principal_share", "principal_share_null"}
    f = facts(torch.zeros(2, 2), torch.eye(2))
    assert M.compute_metrics(f, ("fro",)) == {"fro": pytest.approx(math.sqrt(2))}
    with pytest.raises(CompareError, match="unknown metric"):
        M.compute_metrics(f, ("nope",))
    with pytest.raises(CompareError, match="svd mode"):
        M.SpectrumSettings(svd="fast")
    with pytest.raises(CompareError, match="top_k"):
        M.SpectrumSettings(top_k=0)
    with pytest.raises(CompareError, match="--top-k-subspace"):
        M.SpectrumSettings(subspace_k=-1)
    with pytest.raises(CompareError, match="rank_tol"):
        M.SpectrumSettings(rank_tol=0.0)
    with pytest.raises(TypeError):
        M.METRICS["x"] = M.METRICS["fro"]  # frozen after import


def test_norms_stay_exact_on_many_entries() -> None:
    """A one-shot float32 reduction drifts by ~1e-4 on 4M entries (0.5 % on 7B-size matrices); ours must not."""
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2000, 2000, generator=gen) * 0.01 + 0.003
    y = torch.randn(2000, 2000, generator=gen) * 0.01 - 0.001
    xn, yn = x.double().numpy(), y.double().numpy()
    assert M.frobenius(x) == pytest.approx(float(np.sqrt((xn ** 2).sum())), rel=1e-7)
    assert M.dot(x, y) == pytest.approx(float((xn * yn).sum()), rel=1e-7)
    assert M.frobenius(torch.tensor([3.0, 4.0])) == 5.0 and M.frobenius(torch.zeros(0)) == 0.0
