"""PNG figures from the probe tables (Agg canvas, no pyplot: nothing global is touched).

Each figure reads only a finished table, so it can be redrawn from an output directory. Sizes are chosen for
the report, which shows two figures side by side (about 540 px each): figures are at most ~7 in wide and
legends sit below the axes at 9 pt, so text stays readable after the browser scales the PNG down.
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

__all__ = ["ablation_figure", "ablation_plots", "attention_plots", "head_heatmap_figure", "head_limits",
           "model_label", "vision_plots"]

MODEL_COLORS = {"IN": "tab:blue", "RL": "tab:red"}
MODEL_ROLES = ("BASE", "IN", "RL")
LEGEND_PT = 9
LINE_FIGSIZE = (6.4, 3.9)


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


def _legend_below(ax: Axes, ncols: int = 3) -> None:
    """The legend under the axes (outside the data, never over a line), in columns so it stays short."""
    n = len(ax.get_legend_handles_labels()[1])
    if n:
        ax.legend(fontsize=LEGEND_PT, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncols=min(ncols, n),
                  frameon=False)


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
        fig = Figure(figsize=LINE_FIGSIZE, layout="constrained")
        ax = fig.add_subplot(1, 1, 1)
        for task, g in table[table["n"] > 0].groupby("task", sort=True):
            g = g.sort_values("unified_layer")
            label_n = f"{task} (n={g['n'].iloc[0]})"
            _band(ax, g["unified_layer"], g[col], g[f"{metric}_low"], g[f"{metric}_high"], label_n)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("unified layer L (LLM decoder layer + 1)")
        ax.set_ylabel(label)
        ax.set_title(_titled(f"Visual K/V swap ({'layers ≥ L' if mode == 'suffix' else 'layer L only'}): "
                             f"{label}, Wilson 95 %", model), fontsize=10)
        _legend_below(ax)
        written.append(_save(fig, out / f"vision_{metric}.png"))
    return written


def ablation_figure(table: pd.DataFrame, col: str, label: str, model: str | None = None) -> Figure | None:
    """One measure per skipped layer with its interval; layer −1 (nothing skipped) is the dashed baseline."""
    data = table[table[col].notna()]
    if data.empty:
        return None
    fig = Figure(figsize=LINE_FIGSIZE, layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    for task, g in data.groupby("task", sort=True):
        base = g[g["layer"] == -1]
        g = g[g["layer"] >= 0].sort_values("unified_layer")
        _band(ax, g["unified_layer"], g[col], g[f"{col}_low"], g[f"{col}_high"],
              f"{task} (n={int(g['n'].max()) if len(g) else 0})")
        if len(base):
            ax.axhline(float(base[col].iloc[0]), ls="--", lw=0.9, color=ax.lines[-1].get_color(),
                       label=f"{task} baseline (no layer skipped)")
    ax.set_xlabel("unified layer of the skipped decoder layer")
    ax.set_ylabel(label)
    ax.set_title(_titled(f"Layer ablation: {label}", model), fontsize=10)
    _legend_below(ax, ncols=2)  # pairs: a task's curve beside its baseline
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


def _head_grid(heads: pd.DataFrame, model: str) -> pd.DataFrame:
    return heads[heads["model"] == model].pivot(index="layer", columns="head", values="vision_share").sort_index()


def head_limits(heads: pd.DataFrame) -> tuple[float, float]:
    """(vmax, dmax): one colour scale [0, vmax] for every model and mode, and ±dmax for RL − IN.

    Shared over modes as well as models, so the `own` and `shared` heatmaps can be compared by colour too.
    """
    share = pd.to_numeric(heads["vision_share"], errors="coerce").to_numpy(float)
    vmax = float(np.nanmax(share)) if np.isfinite(share).any() else 1.0
    dmax = 0.0
    for _, h in heads.groupby("mode", sort=False):
        if {"IN", "RL"} <= set(h["model"]):
            d = (_head_grid(h, "RL") - _head_grid(h, "IN")).to_numpy(float)
            if np.isfinite(d).any():
                dmax = max(dmax, float(np.nanmax(np.abs(d))))
    return max(vmax, 1e-9), max(dmax, 1e-9)


def head_heatmap_figure(heads: pd.DataFrame, mode: str, limits: tuple[float, float] | None = None) -> Figure | None:
    """Layer × head vision share of each model on one colour bar, and RL − IN on a diverging one centred on 0.

    `limits` (default: `head_limits(heads)`) fixes the scales, so every heatmap of a study shares them.
    """
    h = heads[heads["mode"] == mode]
    models = sorted(set(h["model"]))
    if not models:
        return None
    vmax, dmax = limits or head_limits(heads)
    with_diff = {"IN", "RL"} <= set(models)
    n = len(models) + with_diff
    fig = Figure(figsize=(min(1.9 * n + 1.4, 7.4), 3.4), layout="constrained")
    axes = [fig.add_subplot(1, n, j + 1) for j in range(n)]
    ims = []
    for ax, model in zip(axes, models):
        grid = _head_grid(h, model)
        ims.append(ax.imshow(grid.to_numpy(float), aspect="auto", origin="lower", vmin=0.0, vmax=vmax,
                             cmap="viridis", extent=_extent(grid)))
        ax.set_title(f"{model}", fontsize=10)
    fig.colorbar(ims[0], ax=axes[:len(models)], shrink=0.9, label="vision share")  # one bar: one scale
    if with_diff:
        grid = _head_grid(h, "RL") - _head_grid(h, "IN")
        ax = axes[-1]
        imd = ax.imshow(grid.to_numpy(float), aspect="auto", origin="lower", vmin=-dmax, vmax=dmax, cmap="RdBu_r",
                        extent=_extent(grid))
        ax.set_title("RL − IN", fontsize=10)
        fig.colorbar(imd, ax=ax, shrink=0.9, label="RL − IN")
    for j, ax in enumerate(axes):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("head")
        if j == 0:
            ax.set_ylabel("decoder layer")
        else:
            ax.tick_params(labelleft=False)
    fig.suptitle(f"{mode} response: attention share on image tokens per layer × head", fontsize=10)
    return fig


def _extent(grid: pd.DataFrame) -> tuple[float, float, float, float]:
    """Cell centres on the head and layer numbers, so ticks name real heads and layers."""
    cols, rows = np.asarray(grid.columns, float), np.asarray(grid.index, float)
    return cols.min() - 0.5, cols.max() + 0.5, rows.min() - 0.5, rows.max() + 0.5


def attention_plots(layers: pd.DataFrame, heads: pd.DataFrame, diff: pd.DataFrame, out: Path) -> list[str]:
    """Per-layer vision share (IN vs RL, both modes), RL − IN with intervals, layer × head heatmaps."""
    written = []
    if layers.empty:
        return written
    modes = list(dict.fromkeys(layers["mode"]))
    fig = Figure(figsize=(6.4, 2.5 * len(modes) + 0.6), layout="constrained")
    for i, mode in enumerate(modes):
        ax = fig.add_subplot(len(modes), 1, i + 1)
        for model, g in layers[layers["mode"] == mode].groupby("model", sort=True):
            g = g.sort_values("unified_layer")
            _band(ax, g["unified_layer"], g["vision_share"], g["vision_share_low"], g["vision_share_high"],
                  str(model), MODEL_COLORS.get(str(model)))
        ax.set_ylabel("share on image tokens")
        ax.set_title(f"{mode} response", fontsize=10)
        if i == 0:
            ax.legend(fontsize=LEGEND_PT, loc="lower left", bbox_to_anchor=(1.01, 0.0), frameon=False)
    fig.axes[-1].set_xlabel("unified layer (LLM decoder layer + 1)")
    fig.suptitle("Share of response-token attention on image tokens, IN vs RL (bootstrap 95 %)", fontsize=10)
    written.append(_save(fig, out / "attention_layers.png"))
    if not diff.empty:
        fig = Figure(figsize=LINE_FIGSIZE, layout="constrained")
        ax = fig.add_subplot(1, 1, 1)
        for mode, g in diff.groupby("mode", sort=False):
            g = g.sort_values("unified_layer")
            _band(ax, g["unified_layer"], g["diff"], g["diff_low"], g["diff_high"], f"{mode} response")
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xlabel("unified layer (LLM decoder layer + 1)")
        ax.set_ylabel("RL − IN vision share")
        ax.set_title("RL − IN attention share on image tokens (paired bootstrap 95 %)", fontsize=10)
        _legend_below(ax)
        written.append(_save(fig, out / "attention_diff.png"))
    limits = head_limits(heads) if len(heads) else None
    for mode in modes:
        fig = head_heatmap_figure(heads, mode, limits)
        if fig is not None:
            written.append(_save(fig, out / f"attention_heads_{mode}.png"))
    return written
