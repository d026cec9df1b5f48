"""Bar charts with 95 % intervals from summary.csv and metrics.csv (Agg canvas, no pyplot state)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from frankenlab.io import atomic_file

__all__ = ["grouped_bars", "plot_metrics", "plot_summary"]


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
