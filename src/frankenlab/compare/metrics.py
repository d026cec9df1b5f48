"""Pure per-tensor statistics of a weight delta: energy, sparsity, spectra and ranks.

Everything here is a function of tensors (no checkpoints, no files). Inputs are float32 (or
float64) deltas formed *after* upcasting, so small bf16 differences are never flushed.

A metric is a small typed function registered with `@delta_metric`; `compute_metrics` evaluates
the registry on one `DeltaFacts`. Singular values are computed once per delta (`spectrum`) and
shared by every spectral metric.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import torch

from frankenlab.errors import CompareError

SVD_MODES = ("auto", "exact", "lowrank", "none")
_ROW = 4096


# -- spectra ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spectrum:
    """Singular values of one delta, descending, as float64.

    `complete` is True when `values` is the full spectrum (exact SVD); a randomized SVD gives only
    the top `len(values)` values, and rank measures computed from it are scoped accordingly.
    """

    values: np.ndarray
    complete: bool
    method: str  # "exact" or "lowrank"
    k: int  # the requested top k: `values[:k]` is comparable between exact and lowrank spectra

    @property
    def scope(self) -> str:
        return "full" if self.complete else f"top{len(self.values)}"

    @property
    def sigma1(self) -> float:
        return float(self.values[0]) if len(self.values) else 0.0


@dataclass(frozen=True)
class SpectrumSettings:
    """How to obtain singular values. `auto`: exact when min(shape) ≤ exact_max_dim, else lowrank."""

    svd: str = "auto"
    top_k: int = 32
    oversample: int = 8
    niter: int = 4
    exact_max_dim: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        if self.svd not in SVD_MODES:
            raise CompareError(f"svd mode {self.svd!r} is unknown; use one of {', '.join(SVD_MODES)}.")
        if self.top_k < 1:
            raise CompareError(f"top_k must be ≥ 1 (got {self.top_k}).")
        if self.oversample < 0 or self.niter < 0:
            raise CompareError(f"oversample and niter must be ≥ 0 (got {self.oversample}, {self.niter}).")
        if self.exact_max_dim < 1:
            raise CompareError(f"exact_max_dim must be ≥ 1 (got {self.exact_max_dim}).")

    def method_for(self, shape: tuple[int, ...]) -> str | None:
        """'exact', 'lowrank' or None (no spectrum) for a tensor of this shape."""
        if self.svd == "none" or len(shape) < 2:
            return None
        m, n = as_matrix_shape(shape)
        small = min(m, n)
        if self.svd == "exact":
            return "exact"
        if self.svd == "auto" and small <= self.exact_max_dim:
            return "exact"
        # A randomized SVD that would sample the whole range is just a slower exact one.
        return "exact" if self.top_k + self.oversample >= small else "lowrank"


def as_matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """Matrix view of a weight: (out, everything else), so conv kernels become out × (in·k·k)."""
    rest = 1
    for s in shape[1:]:
        rest *= s
    return int(shape[0]), int(rest)


def as_matrix(delta: torch.Tensor) -> torch.Tensor:
    return delta.reshape(delta.shape[0], -1) if delta.ndim != 2 else delta


def spectrum(delta: torch.Tensor, method: str, settings: SpectrumSettings) -> Spectrum:
    """Singular values of `delta` (≥ 2-D) by `method` ('exact' or 'lowrank').

    lowrank runs `torch.svd_lowrank` with q = top_k + oversample and `niter` power iterations
    under a fixed seed, so reruns (and resumed runs) give identical values.
    """
    mat = as_matrix(delta)
    if method == "exact":
        values = torch.linalg.svdvals(mat)
        return Spectrum(values.double().cpu().numpy(), True, "exact", settings.top_k)
    if method != "lowrank":
        raise CompareError(f"unknown spectrum method {method!r}.")
    q = min(settings.top_k + settings.oversample, min(mat.shape))
    devices = []
    if mat.device.type == "cuda":
        devices = [mat.device.index if mat.device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(settings.seed)
        _, values, _ = torch.svd_lowrank(mat, q=q, niter=settings.niter)
    top = values[: settings.top_k].double().cpu().numpy()
    return Spectrum(np.sort(top)[::-1].copy(), False, "lowrank", settings.top_k)


# -- elementary, independently testable pieces -----------------------------------------------
def _rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x flattened into (rows of _ROW entries, the remainder): partial sums stay short in float32."""
    v = x.reshape(-1)
    n = v.numel() // _ROW * _ROW
    return v[:n].view(-1, _ROW), v[n:]


def frobenius(x: torch.Tensor) -> float:
    """‖x‖_F: float32 norms of short rows, summed in float64.

    torch's one-shot float32 `vector_norm` is off by ~0.5 % on 10⁸ entries; this is as fast, exact
    to ~1e-8, and never makes a float64 copy of a big tensor.
    """
    stats = RunningStats()
    stats.update(x, norm_only=True)
    return stats.fro


def max_abs(x: torch.Tensor) -> float:
    """max |x| in one pass (aminmax), without materializing |x| as another full-size copy."""
    if x.numel() == 0:
        return 0.0
    lo, hi = torch.aminmax(x)
    return float(max(hi.item(), -lo.item()))


def count_nonzero(x: torch.Tensor) -> int:
    """Entries ≠ 0 (-0.0 counts as zero). On CPU numpy's vectorized count is ~10× faster than torch's."""
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        return int(np.count_nonzero(x.detach().contiguous().numpy()))
    return int(torch.count_nonzero(x))


def unchanged_fraction(delta: torch.Tensor) -> float:
    """Share of entries whose stored value did not change (delta exactly zero)."""
    if delta.numel() == 0:
        return float("nan")
    return 1.0 - count_nonzero(delta) / delta.numel()


def dot(a: torch.Tensor, b: torch.Tensor) -> float:
    """⟨a, b⟩: float32 dot products of short rows (one batched matmul), summed in float64."""
    ab, at = _rows(a)
    bb, bt = _rows(b)
    total = torch.bmm(ab.unsqueeze(1), bb.unsqueeze(2)).to(torch.float64).sum()
    return float(total + (at.to(torch.float64) * bt.to(torch.float64)).sum())


def cosine(a: torch.Tensor, b: torch.Tensor, norm_a: float | None = None, norm_b: float | None = None) -> float:
    """cos(a, b) over flattened tensors; NaN when either is all zero."""
    na = frobenius(a) if norm_a is None else norm_a
    nb = frobenius(b) if norm_b is None else norm_b
    if na == 0.0 or nb == 0.0:
        return float("nan")
    return dot(a, b) / (na * nb)


@dataclass
class RunningStats:
    """‖x‖², min, max and the nonzero count of one tensor, accumulated block by block.

    Streaming a tensor through cache-sized blocks touches each byte once instead of once per
    statistic, and never needs the whole float32 tensor unless a spectrum is wanted.
    """

    sumsq: float = 0.0
    lo: float = math.inf
    hi: float = -math.inf
    nonzero: int = 0
    numel: int = 0

    def update(self, x: torch.Tensor, *, norm_only: bool = False) -> None:
        body, tail = _rows(x)
        total = torch.linalg.vector_norm(body, dim=1).to(torch.float64).square().sum()
        self.sumsq += float(total + tail.to(torch.float64).square().sum())
        self.numel += x.numel()
        if norm_only or x.numel() == 0:
            return
        lo, hi = torch.aminmax(x)
        self.lo, self.hi = min(self.lo, float(lo)), max(self.hi, float(hi))
        self.nonzero += count_nonzero(x)

    @property
    def fro(self) -> float:
        return math.sqrt(self.sumsq)

    @property
    def max_abs(self) -> float:
        return max(self.hi, -self.lo) if self.numel else 0.0

    @property
    def unchanged_frac(self) -> float:
        return 1.0 - self.nonzero / self.numel if self.numel else float("nan")


def stable_rank_of(fro: float, sigma1: float) -> float:
    """‖Δ‖_F² / σ1²: how many directions carry the energy (1 for rank one)."""
    return fro * fro / (sigma1 * sigma1) if sigma1 > 0 else float("nan")


def effective_rank_of(values: np.ndarray) -> float:
    """exp(H(p)), p_i = σ_i / Σσ (Roy & Vetterli 2007); NaN for an all-zero spectrum."""
    s = np.asarray(values, dtype=np.float64)
    s = s[s > 0]
    if s.size == 0:
        return float("nan")
    p = s / s.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def normalized_spectrum(values: np.ndarray, k: int) -> np.ndarray:
    """σ_i / σ1 for the top k values (empty when σ1 is zero)."""
    s = np.asarray(values, dtype=np.float64)[:k]
    if s.size == 0 or s[0] <= 0:
        return np.zeros(0)
    return s / s[0]


# -- the registry ----------------------------------------------------------------------------
@dataclass(frozen=True)
class DeltaFacts:
    """What metrics see for one delta: its elementwise statistics, ‖W_ref‖_F and the spectrum.

    `delta` is the float32 delta when it was kept whole (it is, whenever a spectrum is computed);
    a streamed `--svd none` run never materializes it and passes None.
    """

    stats: RunningStats
    ref_fro: float
    spectrum: Spectrum | None
    delta: torch.Tensor | None = None

    @property
    def fro(self) -> float:
        return self.stats.fro


@dataclass(frozen=True)
class DeltaMetric:
    name: str
    fn: Callable[[DeltaFacts], float]
    spectral: bool
    description: str
    cite: str = ""


def delta_metric(name: str, *, spectral: bool = False, description: str = "",
                 cite: str = "") -> Callable[[Callable[[DeltaFacts], float]], Callable[[DeltaFacts], float]]:
    """Mark a pure `DeltaFacts → float` function as a metric; collected into METRICS below."""

    def wrap(fn: Callable[[DeltaFacts], float]) -> Callable[[DeltaFacts], float]:
        fn.__delta_metric__ = DeltaMetric(name, fn, spectral, description or (fn.__doc__ or "").strip(), cite)
        return fn

    return wrap


@delta_metric("fro", description="‖Δ‖_F, the update's energy.")
def _fro(f: DeltaFacts) -> float:
    return f.fro


@delta_metric("rel_fro", description="‖Δ‖_F / ‖W_ref‖_F with W_ref the phase's starting weights.")
def _rel_fro(f: DeltaFacts) -> float:
    return f.fro / f.ref_fro if f.ref_fro > 0 else float("nan")


@delta_metric("max_abs", description="max |Δ_ij|.")
def _max_abs(f: DeltaFacts) -> float:
    return f.stats.max_abs


@delta_metric("unchanged_frac", description="Share of entries left exactly unchanged (update sparsity).")
def _unchanged(f: DeltaFacts) -> float:
    return f.stats.unchanged_frac


@delta_metric("sigma1", spectral=True, description="Spectral norm σ1 of Δ.")
def _sigma1(f: DeltaFacts) -> float:
    return f.spectrum.sigma1 if f.spectrum is not None else float("nan")


@delta_metric("stable_rank", spectral=True, description="‖Δ‖_F² / σ1².",
              cite="Rudelson & Vershynin 2007, https://arxiv.org/abs/math/0503442")
def _stable_rank(f: DeltaFacts) -> float:
    return stable_rank_of(f.fro, f.spectrum.sigma1) if f.spectrum is not None else float("nan")


@delta_metric("effective_rank", spectral=True,
              description="exp(H(p)), p_i = σ_i/Σσ; over the top k values only when the SVD was lowrank.",
              cite="Roy & Vetterli 2007, https://infoscience.epfl.ch/record/110188")
def _effective_rank(f: DeltaFacts) -> float:
    return effective_rank_of(f.spectrum.values) if f.spectrum is not None else float("nan")


@delta_metric("effective_rank_topk", spectral=True,
              description="exp(H(p)) over the top k singular values only, whatever the SVD: comparable between "
                          "exact and lowrank tensors (use it to compare across an --svd auto run).")
def _effective_rank_topk(f: DeltaFacts) -> float:
    return effective_rank_of(f.spectrum.values[: f.spectrum.k]) if f.spectrum is not None else float("nan")


METRICS: MappingProxyType[str, DeltaMetric] = MappingProxyType({
    fn.__delta_metric__.name: fn.__delta_metric__
    for fn in (_fro, _rel_fro, _max_abs, _unchanged, _sigma1, _stable_rank, _effective_rank, _effective_rank_topk)
})


def compute_metrics(facts: DeltaFacts, names: tuple[str, ...] | None = None) -> dict[str, float]:
    """Evaluate registered metrics (all by default) on one delta; spectral ones are NaN without a spectrum."""
    chosen = tuple(METRICS) if names is None else names
    unknown = [n for n in chosen if n not in METRICS]
    if unknown:
        raise CompareError(f"unknown metric(s) {', '.join(unknown)}; available: {', '.join(METRICS)}.")
    out = {}
    for name in chosen:
        value = METRICS[name].fn(facts)
        out[name] = float(value) if value is not None and not math.isnan(value) else float("nan")
    return out


def spectrum_if_wanted(delta: torch.Tensor, fro: float, method: str | None,
                       settings: SpectrumSettings) -> Spectrum | None:
    """The spectrum for `method` (None: no spectrum). A zero delta gets no SVD: all-zero values, NaN ranks."""
    if method is None:
        return None
    if fro == 0.0:
        k = min(settings.top_k, min(as_matrix_shape(tuple(delta.shape))))
        return Spectrum(np.zeros(k), method == "exact", method, settings.top_k)
    return spectrum(delta, method, settings)


def delta_facts(delta: torch.Tensor, ref_fro: float, method: str | None,
                settings: SpectrumSettings) -> DeltaFacts:
    """Everything the metrics need, from one whole delta tensor."""
    stats = RunningStats()
    stats.update(delta)
    return DeltaFacts(stats, ref_fro, spectrum_if_wanted(delta, stats.fro, method, settings), delta)
