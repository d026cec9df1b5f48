"""Figures the report draws itself from the tables (Agg canvas, no pyplot state), returned as PNG bytes.

They are rendered in memory so a stage that only copied a table (freeze.table, a finished eval) still
gets its plot, and the HTML can inline them.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = ["PHASE_STYLE", "gain_panels", "layer_lines", "png_bytes"]

#: Widest figure (inches): the report shows figures about 540 px wide, so a wider one loses its text.
MAX_WIDTH_IN = 7.4
LEGEND_PT = 9
#: Update phase → (legend label, colour), in drawing order.
PHASE_STYLE = {"rl": ("ΔRL (IN → RL)", "tab:blue"), "in": ("ΔIN (BASE → IN)", "tab:orange")}


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG, through its own Agg canvas."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def gain_panels(df: pd.DataFrame, panel: str, label: str, title: str, xlabel: str) -> bytes | None:
    """One panel per `panel` value; per row of `label`, the gain as a dot with its interval, 0 marked.

    `df` holds the columns `panel`, `label`, `gain`, `gain_low`, `gain_high`; rows without a gain are
    left out, and None is returned when nothing is left to draw.
    """
    data = df[pd.to_numeric(df["gain"], errors="coerce").notna()]
    if data.empty:
        return None
    panels = list(dict.fromkeys(data[panel]))
    labels = list(dict.fromkeys(data[label]))
    cols = len(panels) if len(panels) <= 2 else 2  # the report shows a figure ~540 px wide: no row of four
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(min(3.0 * cols + 1.6, MAX_WIDTH_IN), (0.32 * len(labels) + 1.1) * rows + 0.4),
                 layout="constrained")
    first = None
    for j, name in enumerate(panels):
        ax = fig.add_subplot(rows, cols, j + 1, sharey=first)
        first = first or ax
        sub = data[data[panel] == name].set_index(label)
        y = np.arange(len(labels))
        vals = np.array([_num(sub["gain"].get(m)) for m in labels])
        lo = np.array([_num(sub["gain_low"].get(m)) for m in labels])
        hi = np.array([_num(sub["gain_high"].get(m)) for m in labels])
        err = np.vstack([np.clip(vals - lo, 0, None), np.clip(hi - vals, 0, None)])
        colors = ["tab:green" if a > 0 else "tab:red" if b < 0 else "tab:gray" for a, b in zip(lo, hi)]
        ax.axvline(0.0, color="black", lw=0.8)
        for k in range(len(labels)):
            if np.isfinite(vals[k]):
                ax.errorbar(vals[k], y[k], xerr=np.nan_to_num(err[:, k:k + 1]), fmt="o", ms=5, capsize=3,
                            color=colors[k])
        ax.set_yticks(y)
        ax.set_yticklabels(labels)
        ax.set_ylim(len(labels) - 0.5, -0.5)
        ax.set_title(str(name), fontsize=10)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))  # narrow panels: fewer ticks, none overlapping
        if j % cols:
            ax.tick_params(labelleft=False)
    fig.suptitle(title, fontsize=10)
    return png_bytes(fig)


def layer_lines(per_layer: pd.DataFrame, series: Sequence[tuple[str, str, str]], title: str, ylabel: str, *,
                logy: bool = False, ylim: tuple[float, float] | None = None) -> bytes | None:
    """Per LLM decoder layer, one line per update phase and `series` entry (column, label, line style).

    `per_layer` holds `phase`, `layer` (0-based decoder index) and the series' columns; a series with no
    finite value in a phase is not drawn, and None is returned when nothing is.
    """
    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    drawn = False
    for phase, (label, color) in PHASE_STYLE.items():
        sub = per_layer[per_layer["phase"] == phase].sort_values("layer")
        for col, what, style in series:
            if col not in sub.columns:
                continue
            y = pd.to_numeric(sub[col], errors="coerce").to_numpy(float)
            ok = np.isfinite(y) & ((y > 0) if logy else True)
            if not ok.any():
                continue
            ax.plot(sub["layer"].to_numpy()[ok], y[ok], style, color=color, marker="o", ms=3, lw=1.4,
                    label=f"{label}: {what}")
            drawn = True
    if not drawn:
        return None
    if logy:
        ax.set_yscale("log")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel("LLM decoder layer", fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    n = len(ax.get_legend_handles_labels()[1])
    ax.legend(fontsize=LEGEND_PT, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncols=min(n, 2), frameon=False)
    return png_bytes(fig)


def _num(x: object) -> float:
    v = pd.to_numeric(x, errors="coerce")
    return float(v) if v is not None and not pd.isna(v) else float("nan")
