"""Numerical kernels: Gram spectra vs svdvals, block Krylov on a flat spectrum, subspace iteration, small angles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from frankenlab.compare import spectra as S


def known_spectrum(m: int, n: int, s: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((m, len(s))))
    v, _ = np.linalg.qr(rng.standard_normal((n, len(s))))
    return (u * s) @ v.T


@pytest.mark.parametrize("shape", [(120, 700), (700, 120), (200, 200)])
def test_gram_spectrum_matches_svdvals(shape: tuple[int, int]) -> None:
    m, n = shape
    small = min(m, n)
    s = np.concatenate([np.geomspace(1.0, 1e-4, small // 2), np.zeros(small - small // 2)])  # half rank, 4 decades
    x32 = torch.from_numpy(known_spectrum(m, n, s, seed=0)).float()
    ref = np.linalg.svd(x32.double().numpy(), compute_uv=False)  # numpy, float64, of the same float32 data
    got = S.gram_singular_values(x32)
    assert got.shape == (small,) and np.all(np.diff(got) <= 0)
    assert np.max(np.abs(got - ref)) / ref[0] < 1e-7
    torch_sv = torch.linalg.svdvals(x32).double().numpy()
    assert np.max(np.abs(got - torch_sv)) / ref[0] < 1e-5  # and agrees with float32 svdvals to its own precision
    np.testing.assert_allclose(got[:10], s[:10], rtol=1e-5)  # the planted values


def test_gram_is_streamed_from_stored_bf16_without_a_float32_copy() -> None:
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(48, 300, generator=gen).to(torch.bfloat16)
    ref = np.linalg.svd(w.double().numpy(), compute_uv=False)
    x = S.oriented(w.reshape(-1), (48, 300))
    old = S._BLOCK_ENTRIES
    try:
        S._BLOCK_ENTRIES = 48 * 7  # 7 columns per block, ragged end
        got = S.singular_values_from_gram(S.gram(x, torch.device("cpu")))
    finally:
        S._BLOCK_ENTRIES = old
    np.testing.assert_allclose(got, ref, rtol=1e-10)


def test_block_krylov_is_accurate_on_a_flat_spectrum() -> None:
    """A Gaussian matrix has a flat top spectrum, the hard case: σ1 within 0.5 % with the default settings."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1000, 4000, generator=gen)
    exact = S.gram_singular_values(x)
    got = S.krylov_singular_values(x, 32, 40, 8, seed=0)  # SpectrumSettings defaults: top 32, block 40, depth 8
    assert abs(got[0] - exact[0]) / exact[0] < 5e-3
    assert np.max(np.abs(got / exact[:32] - 1)) < 1e-2
    assert np.all(got <= exact[:32] * (1 + 1e-6))  # Ritz values are lower bounds
    np.testing.assert_array_equal(got, S.krylov_singular_values(x, 32, 40, 8, seed=0))  # seeded


def test_top_eigenpairs_subspace_iteration_and_fallback() -> None:
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.standard_normal((400, 400)))
    lam = 0.9 ** np.arange(400)
    g = torch.from_numpy((q * lam) @ q.T)
    values, vectors, how = S.top_eigenpairs(g, 8)
    assert how == "subspace"
    np.testing.assert_allclose(values.numpy(), lam[:8], rtol=1e-10)
    assert np.degrees(S.principal_angles(torch.from_numpy(q[:, :8]), vectors)).max() < 1e-6
    values, vectors, how = S.top_eigenpairs(g, 8, max_iter=2)  # not converged: full eigh
    assert how == "eigh"
    np.testing.assert_allclose(values.numpy(), lam[:8], rtol=1e-10)


def test_principal_angles_resolve_tiny_rotations() -> None:
    """arccos(cos θ) is 0 below ~1e-8 rad in float64; the sine-based angle keeps a 1e-10 rad rotation."""
    rng = np.random.default_rng(4)
    basis, _ = np.linalg.qr(rng.standard_normal((50, 6)))
    a, b = basis[:, :3], basis[:, 3]
    for theta in (1e-10, 1e-4, 0.3):
        rotated = a.copy()
        rotated[:, 0] = math.cos(theta) * a[:, 0] + math.sin(theta) * b
        got = S.principal_angles(torch.from_numpy(a), torch.from_numpy(rotated))
        assert got[-1] == pytest.approx(theta, rel=1e-6) and np.all(got[:-1] < 1e-12)
