"""pass@k from N sampled answers per item: the unbiased estimator, per-sample seeds, and the table.

pass@k is the chance that at least one of k answers drawn without replacement from an item's n samples
is correct. With c correct among n it is 1 − C(n−c, k) / C(n, k) (Chen et al., 2021, "Evaluating large
language models trained on code"), the unbiased estimate of the probability that k fresh samples
contain a correct one. It is averaged over items, with a percentile-bootstrap interval over items.

RL can raise pass@1 and still lower pass@k at large k ("Does RL really incentivize reasoning beyond the
base model?", arXiv 2504.13837): the table reports k = 1, 2, 4, … and N itself, so that crossing shows.
A failed sample (generation error, timeout, ungradable) counts as wrong, as failed greedy answers do.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from frankenlab.errors import EvalError
from frankenlab.eval.config import SETTINGS, TEXT_SETTING
from frankenlab.eval.tables import RunOrder, Stats
from frankenlab.stats import bootstrap_mean_ci

__all__ = ["PASSK_COLUMNS", "k_values", "pass_at_k", "passk_table", "sample_seed"]

PASSK_COLUMNS = ["model", "task", "setting", "k", "pass_at_k", "low", "high", "n", "n_samples", "n_failed"]
_SETTING_ORDER = {s: i for i, s in enumerate((*SETTINGS, TEXT_SETTING))}


def pass_at_k(n: int, c: int, k: int) -> float:
    """1 − C(n−c, k)/C(n, k) for ``c`` correct of ``n`` samples, as the product ∏_{i=n−c+1}^{n} (1 − k/i).

    The product form never forms a binomial coefficient, so n in the thousands stays exact to rounding.
    """
    for name, v in (("n", n), ("c", c), ("k", k)):
        if isinstance(v, bool) or int(v) != v:
            raise EvalError(f"pass_at_k: {name} must be an integer, got {v!r}.")
    n, c, k = int(n), int(c), int(k)
    if not 0 <= c <= n or not 1 <= k <= n:
        raise EvalError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}.")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def k_values(n_samples: int) -> list[int]:
    """1, 2, 4, … up to ``n_samples``, and ``n_samples`` itself."""
    if n_samples < 1:
        raise EvalError(f"pass@k needs at least one sample per item, got {n_samples}.")
    ks = [1 << p for p in range(n_samples.bit_length()) if 1 << p <= n_samples]
    return ks if ks[-1] == n_samples else [*ks, n_samples]


def sample_seed(seed: int, task: str, item_id: str, setting: str, index: int) -> int:
    """The seed of sample ``index`` of one item in one setting: the same in every run, batch and model
    (common random numbers between IN and RL), independent of N."""
    h = hashlib.sha256(f"{seed}\x00{task}\x00{item_id}\x00{setting}\x00{index}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def passk_table(records: Sequence[Mapping[str, Any]], order: RunOrder, n_samples: int,
                stats: Stats = Stats()) -> pd.DataFrame:
    """pass@k per model × task × setting × k from sample records (``sample`` index, ``correct``, ``error``).

    Only samples with index < ``n_samples`` count; an item enters a k when it has at least k of them
    (after a complete run, every item has all N). ``n`` is the number of items, ``n_failed`` the failed
    samples among them (counted as wrong). The bootstrap resamples items, with the same seed for every k.
    """
    ks = k_values(n_samples)
    counts: dict[tuple[str, str, str], dict[str, list[int]]] = {}  # → {item: [n, c, failed]}
    for r in records:
        if not 0 <= int(r["sample"]) < n_samples:
            continue
        cell = counts.setdefault((r["model"], r["task"], r["setting"]), {})
        ncf = cell.setdefault(r["item_id"], [0, 0, 0])
        ncf[0] += 1
        ncf[1] += int(bool(r.get("correct")) and not r.get("error"))
        ncf[2] += int(bool(r.get("error")))
    rows = []
    for model in order.models:
        for task, ids in order.tasks.items():
            for setting in sorted({s for (m, t, s) in counts if m == model and t == task}, key=_SETTING_ORDER.get):
                cell = counts[(model, task, setting)]
                items = [cell[i] for i in ids if i in cell]
                for k in ks:
                    used = [(n, c, f) for n, c, f in items if n >= k]
                    values = np.array([pass_at_k(n, c, k) for n, c, _ in used], dtype=float)
                    mean, low, high = (bootstrap_mean_ci(values, **stats.kw()) if values.size
                                       else (math.nan, math.nan, math.nan))
                    rows.append({"model": model, "task": task, "setting": setting, "k": k, "pass_at_k": mean,
                                 "low": low, "high": high, "n": len(used), "n_samples": n_samples,
                                 "n_failed": sum(f for _, _, f in used)})
    return pd.DataFrame(rows, columns=PASSK_COLUMNS)
