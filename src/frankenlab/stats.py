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
    "holm",
    "mcnemar_exact",
    "paired_bootstrap_diff",
    "permutation_group_test",
    "sign_flip_test",
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


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm–Bonferroni adjusted p-values (step-down, monotone); None entries stay None and do not count."""
    idx = [i for i, p in enumerate(pvalues) if p is not None and not math.isnan(p)]
    m = len(idx)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda j: float(pvalues[j]))):  # type: ignore[arg-type]
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))  # type: ignore[arg-type]
        out[i] = running
    return out


def _group_means_diff(values: NDArray[np.float64], masks: NDArray[np.bool_]) -> NDArray[np.float64]:
    """mean(values[mask]) − mean(values[~mask]) for each row of `masks`."""
    k = masks.sum(axis=1)
    inside = masks @ values
    total = values.sum()
    return inside / k - (total - inside) / (values.size - k)


def permutation_group_test(
    values: ArrayLike,
    in_group: ArrayLike,
    *,
    n_perm: int = 20000,
    seed: int | np.random.Generator = 0,
) -> tuple[float, float, int]:
    """``(diff, p_two_sided, n_arrangements)`` for mean(group) − mean(rest) by relabelling the units.

    Exact (every arrangement of the group labels) when there are at most ``n_perm`` of them, else
    ``n_perm`` random ones plus the observed. p counts arrangements at least as extreme as observed,
    so the smallest attainable p is 1 / number of arrangements: with few units the test says so
    through a large p rather than by a false claim.
    """
    x = _as_1d(values, "values")
    g = _as_bool(in_group, "in_group")
    if g.shape != x.shape:
        raise FrankenlabError(f"values and in_group need equal lengths, got {x.shape[0]} and {g.shape[0]}")
    k, n = int(g.sum()), x.size
    if k == 0 or k == n:
        raise FrankenlabError("a permutation test needs units both inside and outside the group")
    observed = float(x[g].mean() - x[~g].mean())
    total = math.comb(n, k)
    if total <= n_perm:
        from itertools import combinations

        masks = np.zeros((total, n), dtype=bool)
        for row, chosen in enumerate(combinations(range(n), k)):
            masks[row, list(chosen)] = True
        stats = _group_means_diff(x, masks)
        count = int(np.count_nonzero(np.abs(stats) >= abs(observed) - 1e-12 * max(1.0, abs(observed))))
        return observed, count / total, total
    rng = _rng(seed)
    keys = rng.random((int(n_perm), n))
    masks = np.zeros((int(n_perm), n), dtype=bool)
    np.put_along_axis(masks, np.argsort(keys, axis=1)[:, :k], True, axis=1)
    stats = _group_means_diff(x, masks)
    count = int(np.count_nonzero(np.abs(stats) >= abs(observed) - 1e-12 * max(1.0, abs(observed))))
    return observed, (1 + count) / (int(n_perm) + 1), total


def sign_flip_test(
    differences: ArrayLike,
    *,
    n_perm: int = 20000,
    seed: int | np.random.Generator = 0,
) -> float:
    """Two-sided p for mean(d) == 0 over paired items by random sign flips (exact for n ≤ 14)."""
    d = _as_1d(differences, "differences")
    n = d.size
    if n == 0:
        return math.nan
    observed = abs(float(d.mean()))
    tol = 1e-12 * max(1.0, observed)
    if n <= 14:
        signs = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1) * 2 - 1
        stats = np.abs(signs @ d) / n
        return float(np.count_nonzero(stats >= observed - tol)) / 2**n
    rng = _rng(seed)
    count = 0
    for start in range(0, int(n_perm), max(1, _MAX_CHUNK_ELEMENTS // n)):
        m = min(int(n_perm) - start, max(1, _MAX_CHUNK_ELEMENTS // n))
        signs = rng.integers(0, 2, size=(m, n)) * 2 - 1
        count += int(np.count_nonzero(np.abs(signs @ d) / n >= observed - tol))
    return (1 + count) / (int(n_perm) + 1)
