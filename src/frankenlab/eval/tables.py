"""summary / metrics / comparisons tables, recomputed from the records alone.

Outcomes are ordered by (model, task, item order of the selection, setting) before any bootstrap, so
a resumed run, whose records arrived in another order, gives exactly the same tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import pandas as pd

from frankenlab.eval.config import SETTINGS, TEXT_SETTING
from frankenlab.eval.metrics import Outcome, accuracy, compare_paired, events_of, m_rea, m_v2r, m_vis

__all__ = ["COMPARISON_COLUMNS", "METRIC_COLUMNS", "SUMMARY_COLUMNS", "RunOrder", "comparisons_table",
           "metrics_table", "outcome_of", "summary_table"]

SUMMARY_COLUMNS = ["model", "task", "setting", "n", "accuracy", "ci_low", "ci_high", "n_failed", "n_correct"]
METRIC_COLUMNS = ["model", "metric", "value", "ci_low", "ci_high", "n", "n11", "n10", "n01", "n00", "task", "k",
                  "n_failed"]
COMPARISON_COLUMNS = ["model_a", "model_b", "task", "measure", "n", "value_a", "value_b", "diff", "ci_low",
                      "ci_high", "p_bootstrap", "b", "c", "p_mcnemar"]
ALL_TASKS = "all"
_SETTING_ORDER = {s: i for i, s in enumerate((*SETTINGS, TEXT_SETTING))}
_PAIRS = {"M_vis": ("image", "black"), "M_v2r": ("image", "described")}


@dataclass(frozen=True)
class RunOrder:
    """Models in run order and each task's selected item ids in task order."""

    models: Sequence[str]
    tasks: Mapping[str, Sequence[str]]


@dataclass(frozen=True)
class Stats:
    n_boot: int = 2000
    confidence: float = 0.95
    seed: int = 0

    def kw(self) -> dict[str, Any]:
        return {"n_boot": self.n_boot, "confidence": self.confidence, "seed": self.seed}


def outcome_of(record: Mapping[str, Any]) -> Outcome:
    """None for a failed record (error or timeout), else its verdict."""
    return None if record.get("error") else bool(record.get("correct"))


def _grid(records: Sequence[Mapping[str, Any]], order: RunOrder) -> dict[tuple[str, str], dict[str, list]]:
    """{(model, task): {setting: [outcome per item in selection order, missing items skipped]}} plus ids."""
    by_key = {(r["model"], r["task"], r["item_id"], r["setting"]): outcome_of(r) for r in records}
    present = {(r["model"], r["task"], r["setting"]) for r in records}
    grid: dict[tuple[str, str], dict[str, list]] = {}
    for model in order.models:
        for task, ids in order.tasks.items():
            cell: dict[str, list] = {}
            for setting in sorted({s for (m, t, s) in present if m == model and t == task}, key=_SETTING_ORDER.get):
                cell[setting] = [(i, by_key[(model, task, i, setting)]) for i in ids
                                 if (model, task, i, setting) in by_key]
            if cell:
                grid[(model, task)] = cell
    return grid


def summary_table(records: Sequence[Mapping[str, Any]], order: RunOrder, stats: Stats = Stats()) -> pd.DataFrame:
    """Accuracy per model × task × setting (failed = wrong, and counted in n_failed)."""
    rows = []
    for (model, task), cell in _grid(records, order).items():
        for setting, pairs in cell.items():
            r = accuracy([o for _, o in pairs], **stats.kw())
            rows.append({"model": model, "task": task, "setting": setting, "n": r.n, "accuracy": r.value,
                         "ci_low": r.ci_low, "ci_high": r.ci_high, "n_failed": r.n_failed, "n_correct": r.k})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def _paired(cell: Mapping[str, list], a: str, b: str) -> tuple[list[Outcome], list[Outcome], list[str]]:
    """Outcomes of the items present in both settings, aligned."""
    right = dict(cell.get(b, []))
    pairs = [(i, o, right[i]) for i, o in cell.get(a, []) if i in right]
    return [o for _, o, _ in pairs], [o for _, _, o in pairs], [i for i, _, _ in pairs]


def _metric_inputs(records: Sequence[Mapping[str, Any]], order: RunOrder) -> dict[tuple[str, str, str], tuple]:
    """{(model, metric, task or "all"): (a outcomes, b outcomes or None, item keys)} for every computable metric."""
    out: dict[tuple[str, str, str], tuple] = {}
    grid = _grid(records, order)
    for model in order.models:
        pooled: dict[str, tuple[list, list, list]] = {}
        for task in order.tasks:
            cell = grid.get((model, task))
            if cell is None:
                continue
            for metric, (sa, sb) in _PAIRS.items():
                if sa in cell and sb in cell:
                    a, b, ids = _paired(cell, sa, sb)
                    out[(model, metric, task)] = (a, b, [(task, i) for i in ids])
                    pa, pb, pids = pooled.setdefault(metric, ([], [], []))
                    pa.extend(a)
                    pb.extend(b)
                    pids.extend((task, i) for i in ids)
            if TEXT_SETTING in cell:
                ids = [(task, i) for i, _ in cell[TEXT_SETTING]]
                a = [o for _, o in cell[TEXT_SETTING]]
                out[(model, "M_rea", task)] = (a, None, ids)
                pa, _, pids = pooled.setdefault("M_rea", ([], [], []))
                pa.extend(a)
                pids.extend(ids)
        for metric, (a, b, ids) in pooled.items():
            out[(model, metric, ALL_TASKS)] = (a, b if metric != "M_rea" else None, ids)
    return out


def metrics_table(records: Sequence[Mapping[str, Any]], order: RunOrder, stats: Stats = Stats()) -> pd.DataFrame:
    """M_vis, M_v2r, M_rea per model, per task and pooled over tasks ("all"), with the 2×2 counts."""
    rows = []
    rank = {"M_vis": 0, "M_v2r": 1, "M_rea": 2}
    inputs = _metric_inputs(records, order)
    for (model, metric, task), (a, b, _) in sorted(
            inputs.items(), key=lambda kv: (list(order.models).index(kv[0][0]), rank[kv[0][1]],
                                            kv[0][2] != ALL_TASKS, kv[0][2])):
        if metric == "M_vis":
            r = m_vis(a, b, **stats.kw())
        elif metric == "M_v2r":
            r = m_v2r(a, b, **stats.kw())
        else:
            r = m_rea(a, **stats.kw())
        rows.append({"model": model, "metric": metric, "value": r.value, "ci_low": r.ci_low, "ci_high": r.ci_high,
                     "n": r.n, "n11": r.n11, "n10": r.n10, "n01": r.n01, "n00": r.n00, "task": task, "k": r.k,
                     "n_failed": r.n_failed})
    df = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    for col in ("n11", "n10", "n01", "n00"):
        df[col] = df[col].astype("Int64")
    return df


def comparisons_table(records: Sequence[Mapping[str, Any]], order: RunOrder,
                      stats: Stats = Stats()) -> pd.DataFrame:
    """Every pair of models (in run order) on the same items: accuracies per task × setting and the metrics."""
    rows = []
    grid = _grid(records, order)
    inputs = _metric_inputs(records, order)
    for ma, mb in combinations(order.models, 2):
        measures: list[tuple[str, str, list[Outcome], list[Outcome]]] = []
        for task in order.tasks:
            ca, cb = grid.get((ma, task), {}), grid.get((mb, task), {})
            for setting in [s for s in ca if s in cb]:
                right = dict(cb[setting])
                common = [(o, right[i]) for i, o in ca[setting] if i in right]
                measures.append((task, f"accuracy:{setting}", [o for o, _ in common], [o for _, o in common]))
        for (model, metric, task), (a, b, ids) in inputs.items():
            other = inputs.get((mb, metric, task))
            if model != ma or other is None:
                continue
            ev_a = dict(zip(ids, events_of(metric, a, b)))
            ev_b = dict(zip(other[2], events_of(metric, other[0], other[1])))
            common = [k for k in ids if k in ev_b]
            measures.append((task, metric, [ev_a[k] for k in common], [ev_b[k] for k in common]))
        for task, measure, a, b in measures:
            c = compare_paired(a, b, **stats.kw())
            rows.append({"model_a": ma, "model_b": mb, "task": task, "measure": measure, "n": c.n,
                         "value_a": c.mean_a, "value_b": c.mean_b, "diff": c.diff, "ci_low": c.ci_low,
                         "ci_high": c.ci_high, "p_bootstrap": c.p_bootstrap, "b": c.b, "c": c.c,
                         "p_mcnemar": c.p_mcnemar})
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)
