"""Bar charts with 95 % intervals from summary.csv and metrics.csv, pass@k curves from passk.csv (Agg canvas,
no pyplot state).

Figures stay at most ~7.4 in wide with their legends below the axes at 9 pt: the study report shows them about
540 px wide, and a wider PNG would be scaled down until its text cannot be read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from frankenlab.io import atomic_file

__all__ = ["grouped_bars", "plot_metrics", "plot_passk", "plot_summary"]

LEGEND_PT = 9
MAX_WIDTH_IN = 7.4


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110, bbox_inches="tight")
    return path


def grouped_bars(df: pd.DataFrame, group: str, value: str, title: str, ylabel: str, path: Path) -> Path | None:
    """One group of bars per ``group`` value, one bar per model, error bars from ci_low/ci_high."""
    data = df[df[value].notna()]
    if data.empty:
        return None
    groups = list(dict.fromkeys(data[group]))
    models = list(dict.fromkeys(data["model"]))
    width = 0.8 / len(models)
    fig = Figure(figsize=(min(MAX_WIDTH_IN, max(5.0, 1.2 * len(groups) * max(1, len(models)) ** 0.5 + 2)), 4.2),
                 layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(groups))
    for j, model in enumerate(models):
        sub = data[data["model"] == model].set_index(group)
        vals = np.array([sub[value].get(g, np.nan) for g in groups], dtype=float)
        lo = np.array([sub["ci_low"].get(g, np.nan) for g in groups], dtype=float)
        hi = np.array([sub["ci_high"].get(g, np.nan) for g in groups], dtype=float)
        err = np.vstack([np.clip(vals - lo, 0, None), np.clip(hi - vals, 0, None)])
        ax.bar(x + (j - (len(models) - 1) / 2) * width, vals, width, yerr=np.nan_to_num(err), capsize=3, label=model)
    ax.set_xticks(x)
    ax.set_xticklabels(groups, rotation=20 if len(groups) > 4 else 0, ha="right" if len(groups) > 4 else "center")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=LEGEND_PT, loc="upper center", bbox_to_anchor=(0.5, -0.16 if len(groups) <= 4 else -0.3),
              ncols=min(len(models), 5), frameon=False)
    return _save(fig, path)


def plot_summary(summary: pd.DataFrame, path: str | Path) -> Path | None:
    df = summary.assign(group=summary["task"] + "\n" + summary["setting"])
    return grouped_bars(df, "group", "accuracy", "Accuracy per task and setting (95 % bootstrap CI)", "accuracy",
                        Path(path))


def plot_metrics(metrics: pd.DataFrame, path: str | Path) -> Path | None:
    """The pooled ("all") M_vis, M_v2r, M_rea per model."""
    df = metrics[metrics["task"] == "all"]
    return grouped_bars(df, "metric", "value", "Perception, vision-to-reasoning, reasoning (95 % bootstrap CI)",
                        "probability", Path(path))


def plot_passk(passk: pd.DataFrame, path: str | Path) -> Path | None:
    """pass@k against k (log2 axis), one line per model with its 95 % band, one panel per task × setting."""
    data = passk[passk["pass_at_k"].notna()]
    if data.empty:
        return None
    facets = list(dict.fromkeys(zip(data["task"], data["setting"])))
    models = list(dict.fromkeys(data["model"]))
    cols = min(3, len(facets))
    rows = -(-len(facets) // cols)
    fig = Figure(figsize=(min(MAX_WIDTH_IN, 2.6 * cols + 0.6), 2.5 * rows + 1.0), layout="constrained")
    for j, (task, setting) in enumerate(facets):
        ax = fig.add_subplot(rows, cols, j + 1)
        for model in models:
            sub = data[(data["model"] == model) & (data["task"] == task) & (data["setting"] == setting)]
            sub = sub.sort_values("k")
            if sub.empty:
                continue
            (line,) = ax.plot(sub["k"], sub["pass_at_k"], marker="o", ms=3, label=model)
            ax.fill_between(sub["k"], sub["low"], sub["high"], color=line.get_color(), alpha=0.15, lw=0)
        ax.set_xscale("log", base=2)
        ks = sorted(set(data["k"]))
        ax.set_xticks(ks)
        ax.set_xticklabels([str(k) for k in ks])
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{task} / {setting}", fontsize=9)
        ax.set_xlabel("k")
        if j % cols == 0:
            ax.set_ylabel("pass@k")
    handles, labels = fig.axes[0].get_legend_handles_labels()
    for ax in fig.axes[1:]:  # every model once, even one missing from the first panel
        for h, lbl in zip(*ax.get_legend_handles_labels()):
            if lbl not in labels:
                handles.append(h)
                labels.append(lbl)
    fig.legend(handles, labels, fontsize=LEGEND_PT, loc="outside lower center", ncols=min(len(labels), 4),
               frameon=False)
    fig.suptitle("pass@k (unbiased estimator, 95 % bootstrap over items)", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, path)
