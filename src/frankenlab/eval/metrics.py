"""The paper's metrics from per-item outcomes, with the 2×2 counts behind them and their intervals.

An outcome is True (correct), False (wrong) or None (failed: an error or timeout). Failures stay in
every denominator and never count in a model's favour: for accuracy a failure is wrong, and an item
whose image or black/described run failed cannot count towards M_vis or M_v2r. The 2×2 table is over
the items where both runs gave an answer; ``n = n11 + n10 + n01 + n00 + n_failed``.

* M_vis = P(correct with the image ∧ wrong with a black image) = n10 / n   (a = image, b = black)
* M_v2r = P(correct with the image ∧ correct from the description) = n11 / n   (a = image, b = described)
* M_rea = accuracy on text-only items.

Each metric is the proportion of items with a binary event, so its interval is Wilson's score interval,
which keeps a positive width at 0 % and 100 % (a percentile bootstrap of an all-correct run is [1, 1]).
Differences between models on the same items stay paired bootstrap intervals (:func:`compare_paired`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from frankenlab.errors import EvalError
from frankenlab.stats import mcnemar_exact, paired_bootstrap_diff, two_by_two, wilson_interval

__all__ = ["Comparison", "MetricResult", "Outcome", "accuracy", "compare_paired", "events_of", "m_rea", "m_v2r",
           "m_vis"]

Outcome = bool | None


@dataclass(frozen=True)
class MetricResult:
    metric: str
    value: float
    ci_low: float
    ci_high: float
    n: int
    k: int  # items counted as a success of the metric
    n_failed: int
    n11: int | None = None
    n10: int | None = None
    n01: int | None = None
    n00: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Comparison:
    """Model A vs model B on the same items: mean(A) − mean(B), paired bootstrap CI and p, exact McNemar p."""

    n: int
    mean_a: float
    mean_b: float
    diff: float
    ci_low: float
    ci_high: float
    p_bootstrap: float
    b: int  # A succeeded, B did not
    c: int  # B succeeded, A did not
    p_mcnemar: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _split(outcomes: Sequence[Outcome], name: str) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """(correct, failed) boolean arrays."""
    bad = [o for o in outcomes if o not in (True, False, None)]
    if bad:
        raise EvalError(f"{name}: outcomes must be True, False or None (failed), got {bad[:3]!r}.")
    failed = np.array([o is None for o in outcomes], dtype=bool)
    correct = np.array([o is True for o in outcomes], dtype=bool)
    return correct, failed


def _ci(events: NDArray[np.bool_], confidence: float) -> tuple[float, float, float]:
    """(proportion, Wilson low, Wilson high) of a per-item binary event; NaNs for no items."""
    if events.size == 0:
        return math.nan, math.nan, math.nan
    k, n = int(events.sum()), int(events.size)
    low, high = wilson_interval(k, n, confidence)
    return k / n, low, high


def accuracy(outcomes: Sequence[Outcome], *, metric: str = "accuracy", n_boot: int = 2000,
             confidence: float = 0.95, seed: int = 0) -> MetricResult:
    """Share correct over all items, failures included as wrong; Wilson interval.

    ``n_boot`` and ``seed`` are accepted for a uniform signature with :func:`compare_paired` (unused here).
    """
    correct, failed = _split(outcomes, metric)
    value, low, high = _ci(correct, confidence)
    return MetricResult(metric, value, low, high, int(correct.size), int(correct.sum()), int(failed.sum()))


def _joint(metric: str, a: Sequence[Outcome], b: Sequence[Outcome], want_b: bool, n_boot: int,
           confidence: float, seed: int) -> MetricResult:
    if len(a) != len(b):
        raise EvalError(f"{metric}: {len(a)} and {len(b)} outcomes; both settings need the same items in order.")
    ca, fa = _split(a, metric)
    cb, fb = _split(b, metric)
    answered = ~(fa | fb)
    counts = two_by_two(ca[answered], cb[answered])
    events = answered & ca & (cb if want_b else ~cb)
    value, low, high = _ci(events, confidence)
    return MetricResult(metric, value, low, high, int(ca.size), int(events.sum()), int((~answered).sum()),
                        counts["n11"], counts["n10"], counts["n01"], counts["n00"])


def m_vis(image: Sequence[Outcome], black: Sequence[Outcome], *, n_boot: int = 2000, confidence: float = 0.95,
          seed: int = 0) -> MetricResult:
    """P(correct with the real image ∧ wrong with a black image of the same size)."""
    return _joint("M_vis", image, black, False, n_boot, confidence, seed)


def m_v2r(image: Sequence[Outcome], described: Sequence[Outcome], *, n_boot: int = 2000,
          confidence: float = 0.95, seed: int = 0) -> MetricResult:
    """P(correct with the real image ∧ correct from a black image plus the image's description)."""
    return _joint("M_v2r", image, described, True, n_boot, confidence, seed)


def m_rea(text: Sequence[Outcome], *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> MetricResult:
    """Accuracy on text-only (math) items."""
    return accuracy(text, metric="M_rea", n_boot=n_boot, confidence=confidence, seed=seed)


def compare_paired(a: Sequence[Outcome], b: Sequence[Outcome], *, n_boot: int = 2000, confidence: float = 0.95,
                   seed: int = 0) -> Comparison:
    """Two models' per-item successes (None = failed = no success) on the same items, in the same order."""
    if len(a) != len(b):
        raise EvalError(f"paired comparison needs the same items: {len(a)} vs {len(b)} outcomes.")
    sa, _ = _split(a, "model A")
    sb, _ = _split(b, "model B")
    if sa.size == 0:
        return Comparison(0, *(math.nan,) * 6, 0, 0, 1.0)
    diff, low, high, p = paired_bootstrap_diff(sa.astype(float), sb.astype(float), n_boot=n_boot,
                                               confidence=confidence, seed=seed)
    b_only, c_only = int((sa & ~sb).sum()), int((~sa & sb).sum())
    return Comparison(int(sa.size), float(sa.mean()), float(sb.mean()), diff, low, high, p, b_only, c_only,
                      mcnemar_exact(b_only, c_only))


def events_of(metric: str, a: Sequence[Outcome], b: Sequence[Outcome] | None = None) -> list[Outcome]:
    """Per-item success of a metric as outcomes, so metrics can be compared between models like accuracies."""
    ca, fa = _split(a, metric)
    if metric in ("accuracy", "M_rea"):
        return [None if f else bool(c) for c, f in zip(ca, fa)]
    if b is None:
        raise EvalError(f"{metric} needs two settings.")
    cb, fb = _split(b, metric)
    ok = ~(fa | fb)
    ev = ok & ca & (cb if metric == "M_v2r" else ~cb)
    return [bool(e) for e in ev]
