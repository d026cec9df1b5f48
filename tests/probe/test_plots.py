"""The probe figures a reader compares side by side share their scales and keep their legends readable."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from frankenlab.probe.plots import (
    ablation_figure,
    attention_plots,
    head_heatmap_figure,
    head_limits,
    vision_plots,
)


def _heads(seed: int = 0) -> pd.DataFrame:
    """IN and RL per layer × head in two modes, RL's shares far above IN's (so per-model scales would differ)."""
    rng = np.random.default_rng(seed)
    rows = []
    for model, scale in (("IN", 0.2), ("RL", 0.9)):
        for mode in ("shared", "own"):
            for layer in range(3):
                for head in range(4):
                    rows.append({"model": model, "mode": mode, "layer": layer, "unified_layer": layer + 1,
                                 "head": head, "n": 5, "vision_share": float(rng.uniform(0, scale))})
    return pd.DataFrame(rows)


def _images(fig: Figure) -> dict[str, object]:
    return {ax.get_title(): ax.images[0] for ax in fig.axes if ax.images}


def test_in_and_rl_heatmaps_share_one_scale_and_the_diff_is_symmetric():
    heads = _heads()
    fig = head_heatmap_figure(heads, "own")
    ims = _images(fig)
    assert set(ims) == {"IN", "RL", "RL − IN"}
    # the independent computation: the largest share anywhere, the largest |RL − IN| over both modes
    vmax = heads["vision_share"].max()
    wide = heads.pivot_table(index=["mode", "layer", "head"], columns="model", values="vision_share")
    dmax = (wide["RL"] - wide["IN"]).abs().max()
    assert ims["IN"].get_clim() == ims["RL"].get_clim() == pytest.approx((0.0, vmax))
    assert ims["RL − IN"].get_clim() == pytest.approx((-dmax, dmax))
    assert head_limits(heads) == pytest.approx((vmax, dmax))
    own = heads[(heads["mode"] == "own")]
    grid_rl = own[own["model"] == "RL"].pivot(index="layer", columns="head", values="vision_share").to_numpy()
    grid_in = own[own["model"] == "IN"].pivot(index="layer", columns="head", values="vision_share").to_numpy()
    np.testing.assert_allclose(np.asarray(ims["RL − IN"].get_array()), grid_rl - grid_in)
    # the other mode's figure uses the very same limits (one scale for the study)
    other = _images(head_heatmap_figure(heads, "shared"))
    assert other["IN"].get_clim() == ims["IN"].get_clim() and other["RL − IN"].get_clim() == ims["RL − IN"].get_clim()


def test_heatmap_colour_bars_do_not_overlap_the_neighbouring_axes():
    fig = head_heatmap_figure(_heads(), "shared")
    FigureCanvasAgg(fig).draw()
    r = fig.canvas.get_renderer()
    panels = [ax for ax in fig.axes if ax.images]
    bars = [ax for ax in fig.axes if not ax.images]
    assert len(panels) == 3 and len(bars) == 2  # IN and RL share one bar; the diff has its own
    for bar in bars:
        bb = bar.get_tightbbox(r)
        for ax in panels:
            assert not bb.overlaps(ax.get_tightbbox(r)), (bar.get_ylabel(), ax.get_title())


def test_one_model_gets_no_diff_panel():
    heads = _heads()
    fig = head_heatmap_figure(heads[heads["model"] == "IN"], "own")
    assert set(_images(fig)) == {"IN"}
    assert head_heatmap_figure(heads, "missing") is None


REPORT_PX = 540  # the width the report shows a figure at, two side by side


def _legend_ok(fig: Figure) -> None:
    """Every legend ≥ 8 pt at the saved size, ≥ 8 px once the report scales the PNG to 540 px, off the data."""
    FigureCanvasAgg(fig).draw()
    r = fig.canvas.get_renderer()
    saved_pt = fig.get_tightbbox(r).width * 72  # bbox_inches="tight" saves this width
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend()] + list(fig.legends)
    assert legends
    for leg in legends:
        pt = min(t.get_fontsize() for t in leg.get_texts())
        assert pt >= 8
        assert pt * min(1.0, REPORT_PX / saved_pt) >= 8, f"legend shows at {pt * REPORT_PX / saved_pt:.1f} px"
        for ax in fig.axes:
            assert not leg.get_window_extent(r).overlaps(ax.get_window_extent(r))


def test_ablation_and_attention_legends_are_readable_and_off_the_data(tmp_path):
    table = pd.DataFrame([
        {"task": t, "layer": layer, "unified_layer": layer + 1 if layer >= 0 else None, "n": 8,
         "accuracy": 0.5 + 0.1 * layer, "accuracy_low": 0.3, "accuracy_high": 0.9}
        for t in ("gsm", "ocr") for layer in (-1, 0, 1, 2)])
    _legend_ok(ablation_figure(table, "accuracy", "accuracy", "IN"))
    heads = _heads()
    layers = heads.groupby(["model", "mode", "layer", "unified_layer"], as_index=False)["vision_share"].mean()
    layers = layers.assign(vision_share_low=layers["vision_share"] - 0.05, vision_share_high=layers["vision_share"]
                           + 0.05)
    diff = pd.DataFrame([{"mode": m, "layer": i, "unified_layer": i + 1, "diff": 0.01 * i, "diff_low": -0.02,
                          "diff_high": 0.03} for m in ("shared", "own") for i in range(3)])
    written = attention_plots(layers, heads, diff, tmp_path)
    assert set(written) == {"attention_layers.png", "attention_diff.png", "attention_heads_shared.png",
                            "attention_heads_own.png"}
    assert all((tmp_path / w).read_bytes().startswith(b"\x89PNG") for w in written)


def test_vision_plots_keep_the_model_in_the_title(tmp_path):
    table = pd.DataFrame([{"task": "ocr", "mode": "suffix", "layer": i, "unified_layer": i + 1, "n": 4,
                           "change_rate": 0.5, "change_low": 0.2, "change_high": 0.8, "flip_rate": 0.25,
                           "flip_low": 0.1, "flip_high": 0.6} for i in range(3)])
    out = tmp_path / "RL" / "plots"
    assert vision_plots(table, out) == ["vision_change.png", "vision_flip.png"]
    assert (out / "vision_flip.png").stat().st_size > 0
