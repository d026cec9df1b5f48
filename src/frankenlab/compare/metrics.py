"""Pure per-tensor statistics of a weight delta: energy, sparsity, spectra, ranks and subspace geometry.

Everything here is a function of tensors (no checkpoints, no files). Inputs are float32 (or
float64) deltas formed *after* upcasting, so small bf16 differences are never flushed.

A metric is a small typed function registered with `@delta_metric`; `compute_metrics` evaluates
the registry on one `DeltaFacts`. Singular values of Δ are computed once per delta (`spectrum`)
and shared by every spectral metric; the top-k singular subspaces of W_ref and W_after are
computed once per weight (`spectra.phase_geometry`) and shared by every geometry metric.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import torch

from frankenlab.compare import spectra as S
from frankenlab.errors import CompareError

SVD_MODES = ("auto", "exact", "lowrank", "none")
BF16_REL = 2.0 ** -8  # a bf16 weight absorbs an update |Δ| < |w|·2⁻⁸ (8 significant bits)
DEFAULT_SPARSITY_TOLS = (0.0, 1e-8, 1e-6, 1e-4)
_ROW = 4096
_CHUNK = 1 << 20  # entries per scratch chunk of the precision-aware counts (4 MB in float32)


# -- spectra ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spectrum:
    """Singular values of one delta, descending, as float64.

    `complete` is True when `values` is the full spectrum (exact); a randomized SVD gives only
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
    """How to obtain singular values and subspaces.

    `svd`: `exact` (full spectrum from the float64 Gram matrix), `lowrank` (top `top_k` by block
    Krylov with block top_k + oversample and `niter` iterations), `auto` (exact when min(shape) ≤
    exact_max_dim, else lowrank) or `none`. `subspace_k`: k of the top-k singular subspaces of
    W_ref / W_after for the geometry metrics (0: no geometry). `rank_tol`: update_rank counts
    σ_i > rank_tol·σ1.
    """

    svd: str = "auto"
    top_k: int = 32
    oversample: int = 8
    niter: int = 8
    exact_max_dim: int = 1024
    seed: int = 0
    subspace_k: int = 16
    rank_tol: float = 1e-3

    def __post_init__(self) -> None:
        if self.svd not in SVD_MODES:
            raise CompareError(f"svd mode {self.svd!r} is unknown; use one of {', '.join(SVD_MODES)}.")
        if self.top_k < 1:
            raise CompareError(f"top_k must be ≥ 1 (got {self.top_k}).")
        if self.oversample < 0 or self.niter < 0:
            raise CompareError(f"oversample and niter must be ≥ 0 (got {self.oversample}, {self.niter}).")
        if self.exact_max_dim < 1:
            raise CompareError(f"exact_max_dim must be ≥ 1 (got {self.exact_max_dim}).")
        if self.subspace_k < 0:
            raise CompareError(f"subspace_k (--top-k-subspace) must be ≥ 0 (got {self.subspace_k}); "
                               "0 turns the geometry metrics off.")
        if not 0.0 < self.rank_tol < 1.0:
            raise CompareError(f"rank_tol must lie in (0, 1) (got {self.rank_tol}); the default 1e-3 counts "
                               "σ_i > σ1·1e-3.")

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

    def geometry_for(self, shape: tuple[int, ...]) -> bool:
        """Subspace geometry of W_ref/W_after: for matrices, unless --svd none or subspace_k = 0."""
        return self.svd != "none" and self.subspace_k > 0 and len(shape) >= 2


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

    exact: eigenvalues of the float64 Gram matrix (all of them). lowrank: block Krylov under a
    fixed seed (reruns and resumed runs give identical values), top `top_k` values.
    """
    if method == "exact":
        return Spectrum(S.gram_singular_values(delta), True, "exact", settings.top_k)
    if method != "lowrank":
        raise CompareError(f"unknown spectrum method {method!r}.")
    values = S.krylov_singular_values(as_matrix(delta), settings.top_k, settings.top_k + settings.oversample,
                                      settings.niter, settings.seed)
    return Spectrum(np.asarray(values, dtype=np.float64), False, "lowrank", settings.top_k)


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
    """Entries ≠ 0 (-0.0 counts as zero; True for bool). On CPU numpy's count is ~10× faster than torch's."""
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64, torch.bool):
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


Take = Callable[[str, int, torch.dtype], torch.Tensor]


def _alloc(name: str, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.empty(numel, dtype=dtype, device=device)


@dataclass
class RelativeCounts:
    """Entries changed by more than tol·|w_ref| (one count per tolerance) and entries a bf16 weight
    would absorb (0 < |Δ| < |w_ref|·2⁻⁸), accumulated block by block.

    A reference entry of 0 counts any nonzero change as above every tolerance.
    """

    tols: tuple[float, ...] = DEFAULT_SPARSITY_TOLS
    changed: list[int] = field(default_factory=list)
    below_bf16: int = 0
    numel: int = 0

    def __post_init__(self) -> None:
        if not self.changed:
            self.changed = [0] * len(self.tols)

    def update(self, delta: torch.Tensor, ref: torch.Tensor, take: Take | None = None) -> None:
        """Count one block; scratch buffers (from `take`) cover `_CHUNK` entries, not the whole block."""
        d, r = delta.reshape(-1), ref.reshape(-1)
        take = take or (lambda name, k, dt: _alloc(name, k, dt, delta.device))
        for lo in range(0, d.numel(), _CHUNK):
            self._update(d[lo:lo + _CHUNK], r[lo:lo + _CHUNK], take)

    def _update(self, d: torch.Tensor, r: torch.Tensor, take: Take) -> None:
        n = d.numel()
        ad = torch.abs(d, out=take("rc_abs_d", n, d.dtype))
        ar = torch.abs(r, out=take("rc_abs_r", n, d.dtype))
        thr = take("rc_thr", n, d.dtype)
        flag = take("rc_flag", n, torch.bool)
        other = take("rc_flag2", n, torch.bool)
        torch.mul(ar, BF16_REL, out=thr)  # exact: a power-of-two scaling
        torch.lt(ad, thr, out=flag)
        torch.gt(ad, 0, out=other)
        flag &= other
        self.below_bf16 += count_nonzero(flag)
        for i, tol in enumerate(self.tols):
            if tol == 0.0:
                self.changed[i] += count_nonzero(other)
                continue
            torch.mul(ar, tol, out=thr)
            torch.gt(ad, thr, out=flag)
            self.changed[i] += count_nonzero(flag)
        self.numel += n

    def frac_changed(self) -> dict[float, float]:
        return {t: (c / self.numel if self.numel else float("nan")) for t, c in zip(self.tols, self.changed)}

    @property
    def below_bf16_frac(self) -> float:
        return self.below_bf16 / self.numel if self.numel else float("nan")


def update_rank_of(values: np.ndarray, tol: float) -> int:
    """Numerical rank: how many σ_i exceed tol·σ1 (0 for an all-zero spectrum)."""
    s = np.asarray(values, dtype=np.float64)
    if s.size == 0 or s[0] <= 0:
        return 0
    return int((s > tol * s[0]).sum())


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
    """What metrics see for one delta: its elementwise statistics, ‖W_ref‖_F, the spectrum of Δ and
    the geometry of W_ref → W_after.

    `delta` is the float32 delta when it was kept whole (only for a lowrank spectrum); streamed
    runs never materialize it and pass None. `relative` holds the precision-aware counts (None when
    not computed), `geometry` the subspace measures (None without SVDs or for 1-D tensors).
    """

    stats: RunningStats
    ref_fro: float
    spectrum: Spectrum | None
    delta: torch.Tensor | None = None
    relative: RelativeCounts | None = None
    geometry: S.Geometry | None = None
    shape: tuple[int, ...] = ()
    rank_tol: float = 1e-3

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
    needs: str = ""  # "" (elementwise), "spectrum" (of Δ) or "geometry" (of W_ref, W_after)


def delta_metric(name: str, *, spectral: bool = False, geometric: bool = False, description: str = "",
                 cite: str = "") -> Callable[[Callable[[DeltaFacts], float]], Callable[[DeltaFacts], float]]:
    """Mark a pure `DeltaFacts → float` function as a metric; collected into METRICS below."""

    def wrap(fn: Callable[[DeltaFacts], float]) -> Callable[[DeltaFacts], float]:
        needs = "geometry" if geometric else "spectrum" if spectral else ""
        fn.__delta_metric__ = DeltaMetric(name, fn, spectral or geometric,
                                          description or (fn.__doc__ or "").strip(), cite, needs)
        return fn

    return wrap


_NAN = float("nan")


@delta_metric("fro", description="‖Δ‖_F, the update's energy.")
def _fro(f: DeltaFacts) -> float:
    return f.fro


@delta_metric("rel_fro", description="‖Δ‖_F / ‖W_ref‖_F with W_ref the phase's starting weights.")
def _rel_fro(f: DeltaFacts) -> float:
    return f.fro / f.ref_fro if f.ref_fro > 0 else _NAN


@delta_metric("max_abs", description="max |Δ_ij|.")
def _max_abs(f: DeltaFacts) -> float:
    return f.stats.max_abs


@delta_metric("unchanged_frac", description="Share of entries left exactly unchanged (update sparsity).")
def _unchanged(f: DeltaFacts) -> float:
    return f.stats.unchanged_frac


@delta_metric("below_bf16_frac", description="Share of entries with 0 < |Δ| < |w_ref|·2⁻⁸: changes a bf16 "
                                             "weight would absorb (sparsity that is a precision effect).",
              cite="Mukherjee et al. 2025, https://arxiv.org/abs/2505.11711")
def _below_bf16(f: DeltaFacts) -> float:
    return f.relative.below_bf16_frac if f.relative is not None else _NAN


@delta_metric("sigma1", spectral=True, description="Spectral norm σ1 of Δ.")
def _sigma1(f: DeltaFacts) -> float:
    return f.spectrum.sigma1 if f.spectrum is not None else _NAN


@delta_metric("stable_rank", spectral=True, description="‖Δ‖_F² / σ1².",
              cite="Rudelson & Vershynin 2007, https://arxiv.org/abs/math/0503442")
def _stable_rank(f: DeltaFacts) -> float:
    return stable_rank_of(f.fro, f.spectrum.sigma1) if f.spectrum is not None else _NAN


@delta_metric("effective_rank", spectral=True,
              description="exp(H(p)), p_i = σ_i/Σσ; over the top k values only when the SVD was lowrank.",
              cite="Roy & Vetterli 2007, https://infoscience.epfl.ch/record/110188")
def _effective_rank(f: DeltaFacts) -> float:
    return effective_rank_of(f.spectrum.values) if f.spectrum is not None else _NAN


@delta_metric("effective_rank_topk", spectral=True,
              description="exp(H(p)) over the top k singular values only, whatever the SVD: comparable between "
                          "exact and lowrank tensors (use it to compare across an --svd auto run).")
def _effective_rank_topk(f: DeltaFacts) -> float:
    return effective_rank_of(f.spectrum.values[: f.spectrum.k]) if f.spectrum is not None else _NAN


@delta_metric("update_rank", spectral=True,
              description="Numerical rank of Δ: #σ_i > rank_tol·σ1 (default 1e-3). Needs the full spectrum: "
                          "empty for a lowrank (top-k) spectrum rather than capped at k.",
              cite="Mukherjee et al. 2025, https://arxiv.org/abs/2505.11711")
def _update_rank(f: DeltaFacts) -> float:
    if f.spectrum is None or not f.spectrum.complete:
        return _NAN
    return float(update_rank_of(f.spectrum.values, f.rank_tol))


@delta_metric("update_rank_frac", spectral=True, description="update_rank / min(m, n): 1 is a full-rank update.")
def _update_rank_frac(f: DeltaFacts) -> float:
    if f.spectrum is None or not f.spectrum.complete or len(f.shape) < 2:
        return _NAN
    return update_rank_of(f.spectrum.values, f.rank_tol) / min(as_matrix_shape(f.shape))


def _angles_deg(f: DeltaFacts) -> np.ndarray | None:
    g = f.geometry
    if g is None or g.k == 0:
        return None
    return np.degrees(np.concatenate([g.angles_left, g.angles_right]))


@delta_metric("subspace_angle_max_deg", geometric=True,
              description="Largest principal angle (degrees) between the top-k left or right singular subspaces "
                          "of W_ref and W_after.", cite="Zhu et al. 2025, https://arxiv.org/abs/2511.08567")
def _angle_max(f: DeltaFacts) -> float:
    a = _angles_deg(f)
    return float(np.max(a)) if a is not None else _NAN


@delta_metric("subspace_angle_mean_deg", geometric=True,
              description="Mean of the 2k principal angles (k left, k right), degrees.")
def _angle_mean(f: DeltaFacts) -> float:
    a = _angles_deg(f)
    return float(np.mean(a)) if a is not None else _NAN


@delta_metric("projection_distance", geometric=True,
              description="√(2k − 2‖U_refᵀU_after‖_F²) = √(2 Σ sin²θ_i), the larger of the left and right sides.")
def _projection_distance(f: DeltaFacts) -> float:
    g = f.geometry
    if g is None or g.k == 0:
        return _NAN
    return float(max(math.sqrt(2.0 * float(np.sum(np.sin(a) ** 2))) for a in (g.angles_left, g.angles_right)))


@delta_metric("sigma_drift_topk", geometric=True,
              description="Mean over i ≤ k of |σ_i(W_after) − σ_i(W_ref)| / σ_i(W_ref): spectral drift of W.")
def _sigma_drift(f: DeltaFacts) -> float:
    g = f.geometry
    if g is None or g.k == 0:
        return _NAN
    return float(np.mean(np.abs(g.sigma_after - g.sigma_ref) / g.sigma_ref))


@delta_metric("principal_share", geometric=True,
              description="‖U_kᵀ Δ V_k‖_F² / ‖Δ‖_F² with U_k, V_k W_ref's top-k singular vectors: the share of the "
                          "update's energy inside W_ref's principal k × k block.")
def _principal_share(f: DeltaFacts) -> float:
    g = f.geometry
    if g is None or g.k == 0 or g.delta_energy <= 0:
        return _NAN
    return min(1.0, g.inside_energy / g.delta_energy)


@delta_metric("principal_share_null", geometric=True,
              description="k² / (m·n): principal_share expected for a random update of the same shape.")
def _principal_share_null(f: DeltaFacts) -> float:
    g = f.geometry
    if g is None or g.k == 0:
        return _NAN
    return g.k * g.k / (g.shape[0] * g.shape[1])


METRICS: MappingProxyType[str, DeltaMetric] = MappingProxyType({
    fn.__delta_metric__.name: fn.__delta_metric__
    for fn in (_fro, _rel_fro, _max_abs, _unchanged, _below_bf16, _sigma1, _stable_rank, _effective_rank,
               _effective_rank_topk, _update_rank, _update_rank_frac, _angle_max, _angle_mean, _projection_distance,
               _sigma_drift, _principal_share, _principal_share_null)
})


def compute_metrics(facts: DeltaFacts, names: tuple[str, ...] | None = None) -> dict[str, float]:
    """Evaluate registered metrics (all by default) on one delta; spectral / geometric ones are NaN without
    their inputs."""
    chosen = tuple(METRICS) if names is None else names
    unknown = [n for n in chosen if n not in METRICS]
    if unknown:
        raise CompareError(f"unknown metric(s) {', '.join(unknown)}; available: {', '.join(METRICS)}.")
    out = {}
    for name in chosen:
        value = METRICS[name].fn(facts)
        out[name] = float(value) if value is not None and not math.isnan(value) else _NAN
    return out


def zero_spectrum(shape: tuple[int, ...], method: str, settings: SpectrumSettings) -> Spectrum:
    """The spectrum of an all-zero delta, without an SVD."""
    small = min(as_matrix_shape(shape))
    n = small if method == "exact" else min(settings.top_k, small)
    return Spectrum(np.zeros(n), method == "exact", method, settings.top_k)


def spectrum_if_wanted(delta: torch.Tensor, fro: float, method: str | None,
                       settings: SpectrumSettings) -> Spectrum | None:
    """The spectrum for `method` (None: no spectrum). A zero delta gets no SVD: all-zero values, NaN ranks."""
    if method is None:
        return None
    if fro == 0.0:
        return zero_spectrum(tuple(delta.shape), method, settings)
    return spectrum(delta, method, settings)


def geometry_of_weights(w_ref: torch.Tensor, w_after: torch.Tensor, k: int, seed: int = 0) -> S.Geometry:
    """Subspace geometry of one in-memory pair of weights (≥ 2-D), as the streamed walk computes it."""
    mats = {"ref": S.oriented(w_ref.reshape(-1), tuple(w_ref.shape)),
            "after": S.oriented(w_after.reshape(-1), tuple(w_after.shape))}
    unchanged = {"p"} if torch.equal(w_ref, w_after) else set()
    return S.phase_geometry(mats, {"p": ("ref", "after")}, k, w_ref.device, unchanged, seed)["p"]


def delta_facts(delta: torch.Tensor, ref_fro: float, method: str | None, settings: SpectrumSettings,
                w_ref: torch.Tensor | None = None) -> DeltaFacts:
    """Everything the metrics need, from one whole delta tensor (and, for the precision-aware and
    geometry metrics, the reference weights W_ref; W_after = W_ref + Δ)."""
    stats = RunningStats()
    stats.update(delta)
    relative = geometry = None
    if w_ref is not None:
        relative = RelativeCounts()
        relative.update(delta, w_ref)
        if settings.geometry_for(tuple(delta.shape)) and method is not None:
            ref64 = w_ref.double()
            geometry = geometry_of_weights(ref64, ref64 + delta.double(), settings.subspace_k, settings.seed)
    return DeltaFacts(stats, ref_fro, spectrum_if_wanted(delta, stats.fro, method, settings), delta, relative,
                      geometry, tuple(delta.shape), settings.rank_tol)
