"""PNG figures from the probe tables (Agg canvas, no pyplot: nothing global is touched).

Each figure reads only a finished table, so it can be redrawn from an output directory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from frankenlab.io import atomic_file

__all__ = ["ablation_figure", "ablation_plots", "attention_plots", "model_label", "vision_plots"]

MODEL_COLORS = {"IN": "tab:blue", "RL": "tab:red"}
MODEL_ROLES = ("BASE", "IN", "RL")


def _save(fig: Figure, path: Path) -> str:
    FigureCanvasAgg(fig)
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110, bbox_inches="tight")
    return path.name


def _band(ax: Axes, x: pd.Series, y: pd.Series, low: pd.Series, high: pd.Series, label: str,
          color: str | None = None) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    line = ax.plot(x, y, marker="o", ms=3, label=label, color=color)[0]
    ax.fill_between(x, low.astype(float), high.astype(float), color=line.get_color(), alpha=0.18, lw=0)


def model_label(out: Path) -> str | None:
    """The model a probe's plots belong to, from its output folder (a study writes .../IN/plots, .../RL/plots)."""
    for part in (out.name, out.parent.name):
        if part.upper() in MODEL_ROLES:
            return part.upper()
    return None


def _titled(title: str, model: str | None) -> str:
    return f"{model}: {title}" if model else title


def vision_plots(table: pd.DataFrame, out: Path, model: str | None = None) -> list[str]:
    """Change-rate and flip-rate curves per task over the unified layer index.

    `model` (default: from the folder name) prefixes the titles, so IN and RL panels cannot be confused.
    """
    if table.empty or table["n"].max() == 0:
        return []
    model = model or model_label(out)
    written = []
    mode = str(table["mode"].iloc[0])
    for metric, label in (("change", "change rate"), ("flip", "flip-to-source rate")):
        col = "change_rate" if metric == "change" else "flip_rate"
        fig = Figure(figsize=(8, 3.8))
        ax = fig.add_subplot(1, 1, 1)
        for task, g in table[table["n"] > 0].groupby("task", sort=True):
            g = g.sort_values("unified_layer")
            label_n = f"{task} (n={g['n'].iloc[0]})"
            _band(ax, g["unified_layer"], g[col], g[f"{metric}_low"], g[f"{metric}_high"], label_n)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("unified layer L (LLM decoder layer + 1)")
        ax.set_ylabel(label)
        ax.set_title(_titled(f"Visual K/V swap ({'layers ≥ L' if mode == 'suffix' else 'layer L only'}): "
                             f"{label}, Wilson 95 %", model))
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        written.append(_save(fig, out / f"vision_{metric}.png"))
    return written


def ablation_figure(table: pd.DataFrame, col: str, label: str, model: str | None = None) -> Figure | None:
    """One measure per skipped layer with its interval; layer −1 (nothing skipped) is the dashed baseline."""
    data = table[table[col].notna()]
    if data.empty:
        return None
    fig = Figure(figsize=(8, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    for task, g in data.groupby("task", sort=True):
        base = g[g["layer"] == -1]
        g = g[g["layer"] >= 0].sort_values("unified_layer")
        _band(ax, g["unified_layer"], g[col], g[f"{col}_low"], g[f"{col}_high"],
              f"{task} (n={int(g['n'].max()) if len(g) else 0})")
        if len(base):
            ax.axhline(float(base[col].iloc[0]), ls="--", lw=0.9, color=ax.lines[-1].get_color(),
                       label=f"{task} baseline (no layer skipped)")
    ax.set_xlabel("unified layer of the skipped decoder layer (dashed: baseline, no layer skipped)")
    ax.set_ylabel(label)
    ax.set_title(_titled(f"Layer ablation: {label}", model))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def ablation_plots(table: pd.DataFrame, out: Path, model: str | None = None) -> list[str]:
    """Accuracy (and gold log-prob) per skipped layer, the unablated baseline as a line.

    `model` (default: from the folder name) prefixes the titles, so IN and RL panels cannot be confused.
    """
    model = model or model_label(out)
    written = []
    for col, label, name in (
        ("accuracy", "accuracy", "ablation_accuracy.png"),
        ("gold_logprob", "mean log p(gold answer token)", "ablation_gold_logprob.png"),
    ):
        fig = ablation_figure(table, col, label, model)
        if fig is not None:
            written.append(_save(fig, out / name))
    return written


def attention_plots(layers: pd.DataFrame, heads: pd.DataFrame, diff: pd.DataFrame, out: Path) -> list[str]:
    """Per-layer vision share (IN vs RL, both modes), RL − IN with intervals, layer × head heatmaps."""
    written = []
    if layers.empty:
        return written
    modes = list(dict.fromkeys(layers["mode"]))
    fig = Figure(figsize=(8, 3.4 * len(modes)))
    for i, mode in enumerate(modes):
        ax = fig.add_subplot(len(modes), 1, i + 1)
        for model, g in layers[layers["mode"] == mode].groupby("model", sort=True):
            g = g.sort_values("unified_layer")
            _band(ax, g["unified_layer"], g["vision_share"], g["vision_share_low"], g["vision_share_high"],
                  str(model), MODEL_COLORS.get(str(model)))
        ax.set_ylabel("attention share on image tokens")
        ax.set_title(f"{mode} response: share of response-token attention on image tokens (bootstrap 95 %)")
        ax.legend(fontsize=8)
    fig.axes[-1].set_xlabel("unified layer (LLM decoder layer + 1)")
    written.append(_save(fig, out / "attention_layers.png"))
    if not diff.empty:
        fig = Figure(figsize=(8, 3.6))
        ax = fig.add_subplot(1, 1, 1)
        for mode, g in diff.groupby("mode", sort=False):
            g = g.sort_values("unified_layer")
            _band(ax, g["unified_layer"], g["diff"], g["diff_low"], g["diff_high"], str(mode))
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xlabel("unified layer")
        ax.set_ylabel("RL − IN vision share")
        ax.set_title("RL − IN attention share on image tokens (paired bootstrap 95 %)")
        ax.legend(fontsize=8)
        written.append(_save(fig, out / "attention_diff.png"))
    for mode in modes:
        h = heads[heads["mode"] == mode]
        models = sorted(set(h["model"]))
        if not models:
            continue
        fig = Figure(figsize=(4.2 * len(models), 3.8))
        vmax = float(np.nanmax(h["vision_share"])) if len(h) else 1.0
        for j, model in enumerate(models):
            ax = fig.add_subplot(1, len(models), j + 1)
            grid = h[h["model"] == model].pivot(index="layer", columns="head", values="vision_share").sort_index()
            im = ax.imshow(grid.to_numpy(), aspect="auto", origin="lower", vmin=0.0, vmax=max(vmax, 1e-9),
                           cmap="viridis")
            ax.set_xlabel("head")
            ax.set_ylabel("decoder layer")
            ax.set_title(f"{model}, {mode}")
            fig.colorbar(im, ax=ax, fraction=0.046)
        written.append(_save(fig, out / f"attention_heads_{mode}.png"))
    return written
