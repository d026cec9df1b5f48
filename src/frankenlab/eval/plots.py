"""Bar charts with 95 % intervals from summary.csv and metrics.csv, pass@k curves from passk.csv (Agg canvas,
no pyplot state)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from frankenlab.io import atomic_file

__all__ = ["grouped_bars", "plot_metrics", "plot_passk", "plot_summary"]


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
    fig = Figure(figsize=(max(5.0, 1.2 * len(groups) * max(1, len(models)) ** 0.5 + 2), 3.8))
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
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
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
    fig = Figure(figsize=(3.6 * cols + 1.6, 3.0 * rows))
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
    fig.axes[cols - 1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # right of the top row
    fig.suptitle("pass@k (unbiased estimator, 95 % bootstrap over items)", fontsize=10, y=1.0 + 0.06 / rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, path)
