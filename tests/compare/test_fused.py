"""The compiled one-read pass equals the torch path: counts exactly, sums to float64 rounding, any thread count."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from frankenlab.compare import fused
from frankenlab.compare.metrics import DEFAULT_SPARSITY_TOLS, RelativeCounts, RunningStats

pytestmark = pytest.mark.skipif(not fused.available(), reason="numba is not installed (pip install 'frankenlab[fast]')")
TOLS = (*DEFAULT_SPARSITY_TOLS, 2.0 ** -8, 1e-2)


def _pair(n: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, generator=g)
    scale = 10.0 ** torch.randint(-7, -1, (n,), generator=g).float()  # changes across every tolerance
    d = torch.randn(n, generator=g) * scale * w.abs()
    d[torch.rand(n, generator=g) < 0.5] = 0
    w[:50] = 0  # a zero reference: any change is above every tolerance
    d[:25] = 1e-3
    w[50:60] = 1e-40  # subnormal references
    after = (w + d).to(dtype)
    before = w.to(dtype)
    after[60:70] = before[60:70] * (1 + 2.0 ** -7)  # |Δ| exactly |w|·2⁻⁷: on a tolerance boundary
    return after, before


def _torch_path(after, before, tols):
    a, b = after.float(), before.float()
    d = a - b
    ref, st, rc = RunningStats(), RunningStats(), RelativeCounts(tols)
    ref.update(b, norm_only=True)
    st.update(d)
    rc.update(d, b)
    return ref, st, rc


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("n", [1, fused.CHUNK - 1, 3 * fused.CHUNK + 17])
def test_matches_the_torch_path(dtype, n):
    after, before = _pair(n, dtype)
    f = fused.fused_stats(after, before, TOLS)
    ref, st, rc = _torch_path(after, before, TOLS)
    assert list(f.changed) == rc.changed and f.below_bf16 == rc.below_bf16 and f.nonzero == st.nonzero
    assert (f.lo, f.hi, f.numel) == (st.lo, st.hi, n)
    d64 = after.double() - before.double()  # Δ of float32 values is exact in float64
    assert f.sumsq == pytest.approx(float(d64.square().sum()), rel=1e-12)
    assert f.ref_sumsq == pytest.approx(float(before.double().square().sum()), rel=1e-12)
    assert f.sumsq == pytest.approx(st.sumsq, rel=1e-5) and f.ref_sumsq == pytest.approx(ref.sumsq, rel=1e-5)


def test_counts_by_hand_on_a_boundary():
    """|Δ| > tol·|w| is strict; 0 < |Δ| < |w|·2⁻⁸ is what bf16 absorbs; a zero reference counts as changed."""
    before = torch.tensor([1.0, 1.0, 1.0, 0.0, 2.0, 4.0])
    after = before + torch.tensor([2.0 ** -8, 2.0 ** -9, 0.0, 1e-30, -2.0 ** -6, 1.0])
    f = fused.fused_stats(after, before, (0.0, 2.0 ** -8, 0.1))
    assert f.changed == (5, 3, 2)  # > 0: five; > 2⁻⁸·|w|: the zero reference, 2⁻⁶ on 2, 1 on 4; > 0.1·|w|: the
    # zero reference and 1 on 4
    assert f.below_bf16 == 1 and f.nonzero == 5
    assert (f.lo, f.hi) == (-2.0 ** -6, 1.0)


def test_thread_count_does_not_change_a_bit():
    import numba

    after, before = _pair(5 * fused.CHUNK + 3, torch.bfloat16, seed=1)
    old = torch.get_num_threads()
    try:
        got = []
        for threads in (1, numba.config.NUMBA_NUM_THREADS):
            torch.set_num_threads(threads)
            got.append(fused.fused_stats(after, before, TOLS))
    finally:
        torch.set_num_threads(old)
    assert got[0] == got[1]


def test_refuses_what_it_cannot_read():
    a = torch.zeros(4, dtype=torch.float16)
    assert not fused.supports(a) and fused.supports(torch.zeros(4), torch.zeros(4, dtype=torch.bfloat16))
    assert not fused.supports(torch.zeros(4, 4)[:, 0])  # not contiguous
    with pytest.raises(ValueError):
        fused.fused_stats(torch.zeros(3), torch.zeros(4), TOLS)


def test_compare_records_equal_with_and_without_the_kernel(tmp_path, monkeypatch):
    """Whole comparisons of a bf16 pair: the same table whichever pass 1 ran."""
    from frankenlab.compare import compare_checkpoints
    from frankenlab.testing.models import save_tiny_checkpoint

    in_ = save_tiny_checkpoint("qwen2_5_vl", tmp_path / "in", seed=0, n_llm_layers=2, n_vision_blocks=2,
                               dtype=torch.bfloat16)
    rl = save_tiny_checkpoint("qwen2_5_vl", tmp_path / "rl", seed=1, n_llm_layers=2, n_vision_blocks=2,
                              dtype=torch.bfloat16)
    calls = []
    real = fused.fused_stats
    monkeypatch.setattr(fused, "fused_stats", lambda *a: calls.append(1) or real(*a))
    fast = compare_checkpoints(in_, rl, out_dir=tmp_path / "fast", svd="none", plots=False).tensors
    assert len(calls) == len(fast)  # every tensor went through the kernel
    monkeypatch.setattr(fused, "supports", lambda *t: False)
    slow = compare_checkpoints(in_, rl, out_dir=tmp_path / "slow", svd="none", plots=False).tensors
    assert len(fast) == len(slow) > 0
    for col in fast.columns:
        a, b = fast[col].to_numpy(), slow[col].to_numpy()
        if a.dtype.kind == "f":
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-12, err_msg=col)
        else:
            assert list(a) == list(b), col
