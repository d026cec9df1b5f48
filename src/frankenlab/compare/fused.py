"""Pass 1 of a comparison in one read of the stored bytes: a compiled kernel, used when numba is installed.

The torch path (:func:`frankenlab.compare.stream.compare_tensor`) upcasts each block, subtracts, then
walks it once per statistic: norm, min/max, nonzero count, and per tolerance a multiply, a compare and
a count. On a 7B pair that made `compare --svd none` CPU-bound at 1.7× the time `cat` needs to read
the files. This kernel reads the raw bf16 (or float32) bits of W_ref and W_after once, widens them
exactly (bf16 → float32 is a 16-bit shift), and accumulates every pass-1 statistic in the same
float32 arithmetic as the torch path: Δ = f32(W_after) − f32(W_ref), |Δ| > f32(tol)·|W_ref| for the
tolerance sweep, 0 < |Δ| < |W_ref|·2⁻⁸ for what bf16 absorbs. Sums of squares are float64 per chunk
of :data:`CHUNK` entries, combined in chunk order, so the result does not depend on the thread count.

``pip install 'frankenlab[fast]'`` brings numba; without it (or with ``FRANKENLAB_FUSED=0``) the torch path
runs, with the same results (counts exactly, sums of squares to float64 rounding; tests compare the two).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger(__name__)

__all__ = ["CHUNK", "FusedAccumulator", "FusedStats", "available", "fused_stats", "STORED", "raw_bits", "supports"]

CHUNK = 1 << 14  # entries per partial sum (4 × 64 KB of scratch, in L2): fixed, so sums are reproducible
_BITS = {torch.bfloat16: (torch.int16, np.uint16, 16), torch.float32: (torch.int32, np.uint32, 0)}
STORED = {"BF16": (np.uint16, 16), "F32": (np.uint32, 0)}  # safetensors dtype → (bits, widening shift)

try:  # numba is optional (the `fast` extra)
    import numba
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None

_kernel = None


@dataclass(frozen=True)
class FusedStats:
    """Pass-1 facts of one update Δ = W_after − W_ref (see the module docstring)."""

    ref_sumsq: float
    sumsq: float
    lo: float
    hi: float
    nonzero: int
    below_bf16: int
    changed: tuple[int, ...]  # per tolerance, in the order given
    numel: int


def available() -> bool:
    """numba is installed and ``FRANKENLAB_FUSED`` is not ``0`` (the switch benchmarks use for the torch path)."""
    return numba is not None and os.environ.get("FRANKENLAB_FUSED", "1") != "0"


def supports(*tensors: torch.Tensor) -> bool:
    """Whether the kernel can read these stored tensors (bf16 or float32, on the CPU, contiguous)."""
    return available() and all(t.dtype in _BITS and t.device.type == "cpu" and t.is_contiguous() for t in tensors)


def _compile():  # noqa: ANN202 - a numba dispatcher
    global _kernel
    if _kernel is not None:
        return _kernel
    assert numba is not None

    @numba.njit(parallel=True, cache=True, nogil=True)
    def kernel(after, ref, shift_after, shift_ref, tols, out_f, out_i):  # noqa: ANN001, ANN202
        # Branch-free passes over one L2-sized chunk (LLVM vectorizes the counts); float64 sums in four
        # interleaved partials, combined in a fixed order.
        n = after.size
        n_chunks = (n + CHUNK - 1) // CHUNK
        rel = np.float32(2.0 ** -8)
        for c in numba.prange(n_chunks):
            lo = c * CHUNK
            m = min(n, lo + CHUNK) - lo
            ua = np.empty(m, np.uint32)
            ur = np.empty(m, np.uint32)
            for i in range(m):  # exact widening: bf16 bits are the high half of the float32's
                ua[i] = np.uint32(after[lo + i]) << shift_after
                ur[i] = np.uint32(ref[lo + i]) << shift_ref
            fa = ua.view(np.float32)
            fr = ur.view(np.float32)
            ad = np.empty(m, np.float32)
            ar = np.empty(m, np.float32)
            mn = np.float32(np.inf)
            mx = np.float32(-np.inf)
            nz = 0
            below = 0
            for i in range(m):
                d = fa[i] - fr[i]
                mn = min(mn, d)
                mx = max(mx, d)
                ad[i] = abs(d)
                ar[i] = abs(fr[i])
                nz += ad[i] > 0
                below += (ad[i] > 0) & (ad[i] < ar[i] * rel)
            s0 = s1 = s2 = s3 = 0.0
            r0 = r1 = r2 = r3 = 0.0
            k = 0
            while k + 4 <= m:
                x0 = np.float64(fa[k] - fr[k])
                x1 = np.float64(fa[k + 1] - fr[k + 1])
                x2 = np.float64(fa[k + 2] - fr[k + 2])
                x3 = np.float64(fa[k + 3] - fr[k + 3])
                s0 += x0 * x0
                s1 += x1 * x1
                s2 += x2 * x2
                s3 += x3 * x3
                y0 = np.float64(fr[k])
                y1 = np.float64(fr[k + 1])
                y2 = np.float64(fr[k + 2])
                y3 = np.float64(fr[k + 3])
                r0 += y0 * y0
                r1 += y1 * y1
                r2 += y2 * y2
                r3 += y3 * y3
                k += 4
            while k < m:
                x0 = np.float64(fa[k] - fr[k])
                y0 = np.float64(fr[k])
                s0 += x0 * x0
                r0 += y0 * y0
                k += 1
            for t in range(tols.size):
                tol = tols[t]
                cnt = 0
                if tol == 0:
                    for i in range(m):
                        cnt += ad[i] > 0
                else:
                    for i in range(m):
                        cnt += ad[i] > ar[i] * tol
                out_i[c, 2 + t] = cnt
            out_f[c, 0] = (r0 + r1) + (r2 + r3)
            out_f[c, 1] = (s0 + s1) + (s2 + s3)
            out_f[c, 2] = mn
            out_f[c, 3] = mx
            out_i[c, 0] = nz
            out_i[c, 1] = below

    _kernel = kernel
    return kernel


def _bits(t: torch.Tensor) -> tuple[np.ndarray, int]:
    int_dtype, np_dtype, shift = _BITS[t.dtype]
    return t.reshape(-1).view(int_dtype).numpy().view(np_dtype), shift


def raw_bits(data: memoryview | bytes, dtype: str) -> tuple[np.ndarray, int]:
    """Stored bytes of a safetensors 'BF16' or 'F32' tensor as the kernel reads them (no copy)."""
    if dtype not in STORED:
        raise ValueError(f"the fused kernel reads BF16 or F32 tensors, not {dtype}")
    np_dtype, shift = STORED[dtype]
    return np.frombuffer(data, dtype=np_dtype), shift


class FusedAccumulator:
    """Pass-1 statistics over a tensor fed in consecutive blocks, each a whole number of :data:`CHUNK`
    entries but the last: chunk partials are folded in chunk order, so the result is bit-identical
    to one call on the whole tensor (and so to :func:`fused_stats`)."""

    def __init__(self, tols: tuple[float, ...]) -> None:
        self._tols = np.asarray(tols, dtype=np.float32)
        self._n_tols = len(tols)
        self.ref_ss = self.ss = 0.0
        self.lo, self.hi = float("inf"), float("-inf")
        self.nonzero = self.below = self.numel = 0
        self.changed = [0] * len(tols)
        self._ragged = False

    def add(self, after: np.ndarray, shift_after: int, ref: np.ndarray, shift_ref: int) -> None:
        n = after.size
        if n != ref.size:
            raise ValueError(f"block sizes differ ({n} vs {ref.size})")
        if n == 0:
            return
        if self._ragged:
            raise ValueError(f"only the last block may hold a partial chunk of {CHUNK} entries")
        self._ragged = n % CHUNK != 0
        kernel = _compile()
        n_chunks = (n + CHUNK - 1) // CHUNK
        out_f = np.zeros((n_chunks, 4), np.float64)
        out_i = np.zeros((n_chunks, 2 + self._n_tols), np.int64)
        numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
        kernel(after, ref, np.uint32(shift_after), np.uint32(shift_ref), self._tols, out_f, out_i)
        for c in range(n_chunks):  # chunk order: independent of how prange shared the chunks out
            self.ref_ss += float(out_f[c, 0])
            self.ss += float(out_f[c, 1])
        self.lo = min(self.lo, float(out_f[:, 2].min()))
        self.hi = max(self.hi, float(out_f[:, 3].max()))
        self.nonzero += int(out_i[:, 0].sum())
        self.below += int(out_i[:, 1].sum())
        for t, v in enumerate(out_i[:, 2:].sum(axis=0)):
            self.changed[t] += int(v)
        self.numel += n

    def result(self) -> FusedStats:
        return FusedStats(self.ref_ss, self.ss, self.lo, self.hi, self.nonzero, self.below, tuple(self.changed),
                          self.numel)


def fused_stats(after: torch.Tensor, ref: torch.Tensor, tols: tuple[float, ...]) -> FusedStats:
    """Every pass-1 statistic of after − ref in one read; needs :func:`supports` (after, ref)."""
    if not supports(after, ref) or after.numel() != ref.numel():
        raise ValueError("fused_stats needs two CPU bf16/float32 tensors of the same size")
    acc = FusedAccumulator(tols)
    a, sa = _bits(after)
    r, sr = _bits(ref)
    acc.add(a, sa, r, sr)
    return acc.result()
