"""Small, dependency-light statistics for accuracy comparisons (numpy + stdlib only).

Every random procedure takes ``seed`` (an int or a ``numpy.random.Generator``) so that results are
reproducible and no global RNG state is read or changed. Intervals are two-sided at ``confidence``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from statistics import NormalDist

import numpy as np
from numpy.typing import ArrayLike, NDArray

from frankenlab.errors import FrankenlabError

__all__ = [
    "bootstrap_mean_ci",
    "bootstrap_statistic_ci",
    "mcnemar_exact",
    "paired_bootstrap_diff",
    "two_by_two",
    "wilson_interval",
]

# Resample in chunks so n_boot x n indices never need more than this many int64s (~32 MiB).
_MAX_CHUNK_ELEMENTS = 4_000_000


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    """A Generator from an int seed, or the caller's own Generator (never numpy's global state)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, (bool, float)) or not isinstance(seed, (int, np.integer)):
        raise FrankenlabError(f"seed must be an int or numpy.random.Generator, got {type(seed).__name__}")
    return np.random.default_rng(int(seed))


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise FrankenlabError(f"confidence must be strictly between 0 and 1, got {confidence!r}")


def _check_n_boot(n_boot: int) -> None:
    if int(n_boot) != n_boot or n_boot < 1:
        raise FrankenlabError(f"n_boot must be a positive integer, got {n_boot!r}")


def _as_1d(values: ArrayLike, name: str) -> NDArray[np.float64]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise FrankenlabError(f"{name} must be 1-D, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise FrankenlabError(f"{name} contains NaN or inf; drop or fill them before computing statistics")
    return arr


def _as_bool(values: ArrayLike, name: str) -> NDArray[np.bool_]:
    """Boolean view of 0/1 or True/False data; anything else is an error rather than a silent cast."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise FrankenlabError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype != np.bool_:
        if arr.size and not np.all((arr == 0) | (arr == 1)):
            raise FrankenlabError(f"{name} must hold booleans or 0/1, got other values")
        arr = arr.astype(bool)
    return arr


def _percentile_bounds(samples: NDArray[np.float64], confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    finite = samples[~np.isnan(samples)]
    if finite.size == 0:
        return math.nan, math.nan
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _resample_means(
    columns: Sequence[NDArray[np.float64]], n_boot: int, rng: np.random.Generator
) -> list[NDArray[np.float64]]:
    """Means of each column over ``n_boot`` joint row-resamples (same rows for every column)."""
    n = columns[0].shape[0]
    chunk = max(1, _MAX_CHUNK_ELEMENTS // max(n, 1))
    out = [np.empty(n_boot) for _ in columns]
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        for col, dest in zip(columns, out, strict=True):
            dest[start:stop] = col[idx].mean(axis=1)
    return out


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials; (nan, nan) when n == 0.

    Wilson rather than the normal approximation because accuracies near 0 or 1 on small probe
    sets are common, where the normal interval collapses or leaves [0, 1].
    """
    _check_confidence(confidence)
    if int(k) != k or int(n) != n or n < 0 or not 0 <= k <= n:
        raise FrankenlabError(f"need integers 0 <= k <= n, got k={k!r}, n={n!r}")
    if n == 0:
        return math.nan, math.nan
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    p = k / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low = 0.0 if k == 0 else max(0.0, center - half)
    high = 1.0 if k == n else min(1.0, center + half)
    return low, high


def bootstrap_mean_ci(
    values: ArrayLike,
    *,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int | np.random.Generator = 0,
) -> tuple[float, float, float]:
    """``(mean, low, high)``: percentile bootstrap CI of the mean of 1-D 0/1 or real scores."""
    _check_confidence(confidence)
    _check_n_boot(n_boot)
    arr = _as_1d(values, "values")
    if arr.size == 0:
        return math.nan, math.nan, math.nan
    (means,) = _resample_means([arr], int(n_boot), _rng(seed))
    low, high = _percentile_bounds(means, confidence)
    return float(arr.mean()), low, high


def bootstrap_statistic_ci(
    data_columns: Sequence[ArrayLike],
    statistic: Callable[..., float],
    *,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int | np.random.Generator = 0,
) -> tuple[float, float, float]:
    """``(value, low, high)`` for ``statistic(*columns)``, resampling rows jointly across columns.

    Joint resampling keeps each item's outcomes together, which is what a per-item statistic such
    as M_vis = mean(a & ~b) needs: ``bootstrap_statistic_ci([a, b], lambda a, b: np.mean(a & ~b))``.
    Columns keep their dtype (booleans stay booleans). Resamples where the statistic is NaN (e.g. an
    empty subgroup) are left out of the percentiles.
    """
    _check_confidence(confidence)
    _check_n_boot(n_boot)
    if len(data_columns) == 0:
        raise FrankenlabError("bootstrap_statistic_ci needs at least one data column")
    cols = [np.asarray(c) for c in data_columns]
    if any(c.ndim != 1 for c in cols):
        raise FrankenlabError(f"every data column must be 1-D, got shapes {[c.shape for c in cols]}")
    n = cols[0].shape[0]
    if any(c.shape[0] != n for c in cols):
        raise FrankenlabError(f"data columns differ in length: {[c.shape[0] for c in cols]}")
    if n == 0:
        return math.nan, math.nan, math.nan
    rng = _rng(seed)
    value = float(statistic(*cols))
    samples = np.empty(int(n_boot))
    for i in range(int(n_boot)):
        idx = rng.integers(0, n, size=n)
        samples[i] = float(statistic(*(c[idx] for c in cols)))
    low, high = _percentile_bounds(samples, confidence)
    return value, low, high


def paired_bootstrap_diff(
    a: ArrayLike,
    b: ArrayLike,
    *,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int | np.random.Generator = 0,
) -> tuple[float, float, float, float]:
    """``(diff, low, high, p_two_sided)`` for mean(a) - mean(b) over the same items, paired.

    Items are resampled jointly, so per-item difficulty cancels. The p-value tests diff == 0 with the
    shifted-bootstrap null: p = (1 + #{|d* - d| >= |d|}) / (n_boot + 1), so it is never exactly 0.
    """
    _check_confidence(confidence)
    _check_n_boot(n_boot)
    x = _as_1d(a, "a")
    y = _as_1d(b, "b")
    if x.shape != y.shape:
        raise FrankenlabError(f"paired scores need equal lengths, got {x.shape[0]} and {y.shape[0]}")
    if x.size == 0:
        return math.nan, math.nan, math.nan, math.nan
    d = x - y
    diff = float(d.mean())
    (boot,) = _resample_means([d], int(n_boot), _rng(seed))
    low, high = _percentile_bounds(boot, confidence)
    extreme = int(np.count_nonzero(np.abs(boot - diff) >= abs(diff) - 1e-12))
    p = min(1.0, (1 + extreme) / (int(n_boot) + 1))
    return diff, low, high, p


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts.

    ``b`` = items A got right and B wrong, ``c`` = A wrong and B right. Under H0 each discordant
    item is a fair coin, so p = min(1, 2 * P[Binom(b + c, 1/2) <= min(b, c)]), computed exactly
    with integers (no scipy, no float underflow for large counts).
    """
    if int(b) != b or int(c) != c or b < 0 or c < 0:
        raise FrankenlabError(f"discordant counts must be non-negative integers, got b={b!r}, c={c!r}")
    b, c = int(b), int(c)
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def two_by_two(a: ArrayLike, b: ArrayLike) -> dict[str, int]:
    """Joint correctness counts of two models on the same items: n11, n10, n01, n00.

    ``n10`` = a right and b wrong, ``n01`` = a wrong and b right; these are McNemar's b and c.
    """
    x = _as_bool(a, "a")
    y = _as_bool(b, "b")
    if x.shape != y.shape:
        raise FrankenlabError(f"paired outcomes need equal lengths, got {x.shape[0]} and {y.shape[0]}")
    return {
        "n11": int(np.count_nonzero(x & y)),
        "n10": int(np.count_nonzero(x & ~y)),
        "n01": int(np.count_nonzero(~x & y)),
        "n00": int(np.count_nonzero(~x & ~y)),
    }
