"""PNG figures from the compare tables (Agg canvas, no pyplot: nothing global is touched).

Every figure reads only the tables, so it can be redrawn from a finished output directory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.figure import Figure

from frankenlab.io import atomic_file

PHASE_STYLE = {"in": ("ΔIN (IN − BASE)", "tab:blue"), "rl": ("ΔRL (RL − IN)", "tab:red")}
SECTION_SHADE = {"vision": ("vision", "#dbe9f6"), "projector": ("projector", "#fde2c4"), "llm": ("LLM", "#e2f0d9")}


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110, bbox_inches="tight")
    return path


def _shade(ax: Axes, layers: pd.DataFrame, spans: list[tuple[str, int, int]]) -> None:
    """Shade vision | projector | LLM like the paper, and mark the LLM partition's borders."""
    for section, (label, color) in SECTION_SHADE.items():
        idx = layers.loc[layers["section"] == section, "layer"].dropna()
        if len(idx):
            ax.axvspan(int(idx.min()) - 0.5, int(idx.max()) + 0.5, color=color, alpha=0.6, lw=0, label=label)
    for name, lo, hi in spans:
        ax.axvline(lo - 0.5, color="grey", ls="--", lw=0.8)
        ax.text((lo + hi) / 2, 1.0, name, transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8)


def _per_layer(layers: pd.DataFrame, column: str, ylabel: str, title: str, path: Path,
               spans: list[tuple[str, int, int]], log: bool = False) -> Path | None:
    data = layers[layers[column].notna()]
    if data.empty:
        return None
    fig = Figure(figsize=(10, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    _shade(ax, layers, spans)
    for phase, g in data.groupby("phase", sort=False):
        label, color = PHASE_STYLE.get(str(phase), (str(phase), None))
        ax.plot(g["layer"].astype(int), g[column], marker="o", ms=3, color=color, label=label)
    if log and (data[column] > 0).any():
        ax.set_yscale("symlog", linthresh=max(float(data.loc[data[column] > 0, column].min()), 1e-12))
    ax.set_xlabel("unified layer (vision < 0, projector 0, LLM > 0)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, pad=14)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def _ranks(layers: pd.DataFrame, path: Path, spans: list[tuple[str, int, int]]) -> Path | None:
    if layers["stable_rank_mean"].notna().sum() == 0:
        return None
    fig = Figure(figsize=(10, 6))
    scopes = sorted(set(layers["effective_rank_scope"].dropna()))
    partial = "effective_rank_n" in layers and bool((layers["effective_rank_n"] < layers["n_matrices"]).any())
    # One scope covering every matrix: plot it as is. Mixed (--svd auto): the top-k variant is comparable.
    eff = ("effective_rank_mean", f"effective rank exp(H) [{scopes[0]}]") if len(scopes) == 1 and not partial \
        else ("effective_rank_topk_mean", "effective rank exp(H) over the top k")
    for i, (col, label) in enumerate((("stable_rank_mean", "stable rank ‖Δ‖²_F/σ1²"), eff)):
        ax = fig.add_subplot(2, 1, i + 1)
        _shade(ax, layers, spans)
        for phase, g in layers.groupby("phase", sort=False):
            name, color = PHASE_STYLE.get(str(phase), (str(phase), None))
            ax.plot(g["layer"].astype(int), g[col], marker="o", ms=3, color=color, label=name)
        ax.set_ylabel(label, fontsize=9)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.axes[-1].set_xlabel("unified layer")
    fig.suptitle("Rank of the update per layer (mean over the layer's matrices)")
    return _save(fig, path)


def _panels(layers: pd.DataFrame, panels: list[tuple[str, str, str | None]], title: str, path: Path,
            spans: list[tuple[str, int, int]]) -> Path | None:
    """Stacked per-layer panels (column, y label, optional dashed reference column), one line per phase."""
    panels = [p for p in panels if p[0] in layers and layers[p[0]].notna().any()]
    if not panels:
        return None
    fig = Figure(figsize=(10, 2.8 * len(panels)))
    for i, (col, label, ref) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, i + 1)
        _shade(ax, layers, spans)
        for phase, g in layers.groupby("phase", sort=False):
            name, color = PHASE_STYLE.get(str(phase), (str(phase), None))
            ax.plot(g["layer"].astype(int), g[col], marker="o", ms=3, color=color, label=name)
            if ref is not None:
                ax.plot(g["layer"].astype(int), g[ref], ls="--", lw=0.8, color=color, label=f"{name}: random update")
        ax.set_ylabel(label, fontsize=9)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.axes[-1].set_xlabel("unified layer")
    fig.suptitle(title)
    return _save(fig, path)


def _spectra(region_spectra: pd.DataFrame, path: Path) -> Path | None:
    if region_spectra.empty:
        return None
    phases = [p for p in PHASE_STYLE if p in set(region_spectra["phase"])]
    names = list(dict.fromkeys(region_spectra["region"]))
    fig = Figure(figsize=(3.2 * len(names), 2.8 * len(phases)))
    kinds = sorted(set(region_spectra["kind"]))
    colors = {k: f"C{i % 10}" for i, k in enumerate(kinds)}
    for r, phase in enumerate(phases):
        for c, region in enumerate(names):
            ax = fig.add_subplot(len(phases), len(names), r * len(names) + c + 1)
            g = region_spectra[(region_spectra["phase"] == phase) & (region_spectra["region"] == region)]
            for kind, h in g.groupby("kind"):
                ax.plot(h["i"], h["mean"], color=colors[kind], lw=1.2, label=f"{kind} (n={int(h['n'].max())})")
                ax.fill_between(h["i"], h["q25"], h["q75"], color=colors[kind], alpha=0.15, lw=0)
            if len(g) and (g["mean"] > 0).all():
                ax.set_yscale("log")
            ax.set_title(f"{region} · {PHASE_STYLE.get(phase, (phase,))[0]}", fontsize=8)
            if len(g):
                ax.legend(fontsize=6)
            if c == 0:
                ax.set_ylabel("σ_i / σ1 (mean, IQR)", fontsize=8)
            if r == len(phases) - 1:
                ax.set_xlabel("i", fontsize=8)
    fig.suptitle("Normalized spectra per region, aggregated over the region's matrices of each kind")
    fig.tight_layout()
    return _save(fig, path)


def _heatmap(tensors: pd.DataFrame, phase: str, path: Path) -> Path | None:
    t = tensors[(tensors["phase"] == phase) & tensors["is_matrix"] & tensors["layer"].notna()]
    if t.empty:
        return None
    grid = t.pivot_table(index="layer", columns="kind", values="fro", aggfunc="sum")
    order = [k for k in ("q", "k", "v", "o", "qkv", "proj", "gate", "up", "down", "fc1", "fc2", "projector")
             if k in grid.columns]
    grid = grid[order + [k for k in grid.columns if k not in order]].sort_index()
    values = grid.to_numpy(dtype=float)
    positive = values[np.isfinite(values) & (values > 0)]
    fig = Figure(figsize=(1.0 + 0.7 * grid.shape[1], 1.5 + 0.22 * grid.shape[0]))
    ax = fig.add_subplot(1, 1, 1)
    ax.set_facecolor("#d9d9d9")  # grey: the layer has no matrix of this kind
    zeros = np.ma.masked_where(~(np.isfinite(values) & (values == 0)), np.zeros_like(values))
    ax.imshow(zeros, aspect="auto", cmap=ListedColormap(["white"]), interpolation="nearest")
    shown = np.ma.masked_where(~np.isfinite(values) | (values <= 0), values)
    norm = LogNorm(vmin=positive.min(), vmax=positive.max()) if positive.size and positive.max() > positive.min() \
        else None
    im = ax.imshow(shown, aspect="auto", cmap="viridis", norm=norm, interpolation="nearest")
    ax.set_xticks(range(grid.shape[1]), grid.columns, fontsize=8)
    ax.set_yticks(range(grid.shape[0]), [str(i) for i in grid.index], fontsize=6)
    ax.set_xlabel("module kind")
    ax.set_ylabel("unified layer")
    ax.set_title(f"‖Δ‖_F per layer × kind, {PHASE_STYLE.get(phase, (phase,))[0]} (white: unchanged, grey: absent)",
                 fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.05)
    return _save(fig, path)


def write_plots(out: Path, tensors: pd.DataFrame, layers: pd.DataFrame, region_spectra: pd.DataFrame,
                spans: list[tuple[str, int, int]]) -> list[Path]:
    """All figures into `out` (a plots/ directory); returns the files written.

    `spans` are (name, first unified layer, last unified layer) of the LLM partition's parts.
    """
    out.mkdir(parents=True, exist_ok=True)
    made = [
        _per_layer(layers, "fro_sum", "Σ ‖Δ‖_F over the layer's matrices", "Update energy per layer",
                   out / "energy_layers.png", spans),
        _per_layer(layers, "rel_fro_total", "‖Δ‖_F / ‖W_ref‖_F (layer)", "Relative update energy per layer",
                   out / "rel_energy_layers.png", spans),
        _ranks(layers, out / "ranks_layers.png", spans),
        _spectra(region_spectra, out / "spectra_regions.png"),
        _panels(layers, [("subspace_angle_max_deg_mean", "max principal angle (°)", None),
                         ("principal_share_mean", "principal share", "principal_share_null_mean"),
                         ("update_rank_frac_mean", "update rank / min(m, n)", None)],
                "Weight geometry per layer: rotation of W's top-k subspaces, update energy inside them, rank",
                out / "geometry_layers.png", spans),
        _panels(layers, [("unchanged_frac", "entries unchanged", None),
                         ("below_bf16_frac_mean", "0 < |Δ| < |w|·2⁻⁸", None)],
                "Update sparsity per layer, and the share a bf16 weight would absorb", out / "sparsity_layers.png",
                spans),
    ]
    if layers["cos_in_rl"].notna().any():
        made.append(_per_layer(layers[layers["phase"] == "rl"], "cos_in_rl", "cos(ΔIN, ΔRL)",
                               "Alignment of the RL update with the IN update", out / "cosine_layers.png", spans))
    for phase in dict.fromkeys(tensors["phase"]):
        made.append(_heatmap(tensors, str(phase), out / f"heatmap_fro_{phase}.png"))
    return [p for p in made if p is not None]
