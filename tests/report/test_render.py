"""The report shows each verdict as its test, the variant and necessity numbers, and names what it plots."""

from __future__ import annotations

import base64
import html
import re
from html.parser import HTMLParser

import pandas as pd
import pytest
from matplotlib.figure import Figure

from frankenlab.report import RecipeData, render_html, render_markdown
from frankenlab.report.plots import png_bytes
from frankenlab.report.render import evidence_blocks, headline, inline, variant_rows

NEW_CLAIM = {
    "claim": "transfer_mid_late", "statement": "RL's gains transfer through mid-to-late blocks.",
    "verdict": "supported", "rule": "Holm-adjusted paired tests on every measure",
    "reason": "IN:RL:RL keeps a significant share of RL's gain on every measure while RL:IN:IN does not.",
    "effect": 0.031, "ci_low": 0.004, "ci_high": 0.058, "n": 800, "p": 0.02, "test": "paired bootstrap",
    "evidence": {
        "subtests": [
            {"name": "M_rea: IN:RL:RL − IN", "effect": 0.05, "ci_low": 0.01, "ci_high": 0.09, "n": 400, "p": 0.012,
             "p_holm": 0.036, "test": "McNemar", "verdict": "supported"},
            {"name": "M_v2r: IN:RL:RL − IN", "effect": -0.002, "ci_low": None, "ci_high": None, "n": 400,
             "p": 0.0004, "p_holm": 0.0008, "test": None, "verdict": None},
        ],
        "table": {"columns": ["measure", "IN", "RL"], "rows": [["M_rea", 0.26, 0.34], ["M_v2r", 0.21, 0.29]]},
        "alpha": 0.05, "parts": {"early": 0.1, "late": 0.7},
        "critical_layers": {"ocr": {"layer": 9, "peak": 0.4}, "recognition": {"layer": 2, "peak": 0.8}},
    },
}
OLD_CLAIM = {"claim": "freeze_late_hurts_most", "statement": "Freezing late layers during RL hurts the gain most.",
             "verdict": "inconclusive", "rule": "late's gain is the lowest",
             "evidence": {"reason": "need frozen early, mid and late variants", "gains": {"early": [0.28, 0.18, 0.38]}}}


def _png(path):
    fig = Figure(figsize=(1, 1))
    fig.add_subplot(1, 1, 1).plot([0, 1])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(fig))
    return path


def _tables():
    metrics = pd.DataFrame([
        {"model": m, "metric": k, "value": v, "ci_low": v - 0.05, "ci_high": v + 0.05, "n": 100, "task": "all"}
        for m, vals in (("IN", (0.34, 0.21, 0.26)), ("RL", (0.33, 0.29, 0.34)), ("IN:RL:RL", (0.35, 0.28, 0.33)),
                        ("RL:IN:IN", (0.32, 0.22, 0.27)))
        for k, v in zip(("M_vis", "M_v2r", "M_rea"), vals)
    ] + [{"model": "IN", "metric": "M_rea", "value": 0.9, "ci_low": 0.8, "ci_high": 1.0, "n": 10, "task": "gsm"}])
    comparisons = pd.DataFrame([
        # diff is model_a − model_b: IN − RL = −0.08 is a gain of +0.08 for RL
        {"model_a": "IN", "model_b": "RL", "task": "all", "measure": "M_rea", "n": 100, "value_a": 0.26,
         "value_b": 0.34, "diff": -0.08, "ci_low": -0.13, "ci_high": -0.03, "p_mcnemar": 0.004},
        {"model_a": "IN", "model_b": "IN:RL:RL", "task": "all", "measure": "M_rea", "n": 100, "value_a": 0.26,
         "value_b": 0.33, "diff": -0.07, "ci_low": -0.12, "ci_high": -0.02, "p_mcnemar": 0.01},
        # the reference second: the sign stays
        {"model_a": "RL:IN:IN", "model_b": "IN", "task": "all", "measure": "M_rea", "n": 100, "value_a": 0.27,
         "value_b": 0.26, "diff": 0.01, "ci_low": -0.04, "ci_high": 0.06, "p_mcnemar": 0.7},
        {"model_a": "IN", "model_b": "RL", "task": "digits", "measure": "accuracy:image", "n": 50,
         "value_a": 0.5, "value_b": 0.62, "diff": -0.12, "ci_low": -0.2, "ci_high": -0.04, "p_mcnemar": 0.02},
    ])
    necessity = pd.DataFrame([
        {"model": "RL", "family": "count", "n": 50, "acc": 0.6, "gain": 0.2, "gain_low": 0.1, "gain_high": 0.3},
        {"model": "RL", "family": "all", "n": 100, "acc": 0.55, "gain": 0.25, "gain_low": 0.15, "gain_high": 0.35},
        {"model": "RL-FROZEN-LATE", "family": "all", "n": 100, "acc": 0.32, "gain": 0.02, "gain_low": -0.04,
         "gain_high": 0.08, "gain_vs_rl": -0.23, "gain_vs_rl_low": -0.3, "gain_vs_rl_high": -0.16},
    ])
    ablation = pd.DataFrame([
        {"task": "gsm", "layer": -1, "unified_layer": None, "n": 8, "accuracy": 0.75, "gold_logprob": -0.2},
        {"task": "gsm", "layer": 0, "unified_layer": 1, "n": 8, "accuracy": 0.5, "gold_logprob": -1.1},
    ])
    return {"eval_metrics": metrics, "eval_comparisons": comparisons, "necessity": necessity,
            "ablation_in": ablation, "ablation_rl": ablation.copy()}


@pytest.fixture
def recipe(tmp_path):
    plots = {"probe_vision": [_png(tmp_path / "probe_vision" / m / "plots" / "vision_flip.png") for m in ("IN", "RL")],
             "probe_ablate": [_png(tmp_path / "probe_ablate" / m / "plots" / "ablation_accuracy.png")
                              for m in ("IN", "RL")]}
    return RecipeData(name="default", inputs={"IN": {"path": "/ckpt/in", "fingerprint": "ab12", "model_type": "x"}},
                      tables=_tables(), plots=plots)


class _Cells(HTMLParser):
    """Rows of the tables marked with data-table, and every image source."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.images: list[str] = []
        self._cur: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and "data-table" in a:
            self._cur = a["data-table"]
            self.tables[self._cur] = []
        elif tag == "tr" and self._cur:
            self.tables[self._cur].append([])
        elif tag in ("td", "th") and self._cur:
            self._cell = []
        elif tag == "img":
            self.images.append(a["src"])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cur and self._cell is not None:
            self.tables[self._cur][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._cur = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _render(recipe, tmp_path):
    claims = {"default": [NEW_CLAIM, OLD_CLAIM]}
    page = render_html("t", {"cuts": [8, 20]}, [], [recipe], claims)
    md = render_markdown("t", {"cuts": [8, 20]}, [], [recipe], claims, tmp_path)
    return page, md


def test_verdict_shows_reason_headline_and_holm_adjusted_subtests(recipe, tmp_path):
    page, md = _render(recipe, tmp_path)
    line = "effect +0.031, 95 % CI [+0.004, +0.058], n = 800, p = 0.02, paired bootstrap"
    for text in (html.unescape(page), md):
        assert NEW_CLAIM["reason"] in text
        assert line in text
        assert "need frozen early, mid and late variants" in text  # an old-style claim's reason
    cells = _Cells()
    cells.feed(page)
    assert cells.tables["subtests"][0] == ["subtest", "effect", "95 % CI", "n", "p", "p (Holm)", "test", "verdict"]
    assert cells.tables["subtests"][1] == ["M_rea: IN:RL:RL − IN", "+0.050", "[+0.010, +0.090]", "400", "0.012",
                                           "0.036", "McNemar", "supported"]
    assert cells.tables["subtests"][2] == ["M_v2r: IN:RL:RL − IN", "-0.002", "–", "400", "< 0.001", "< 0.001", "–",
                                           "–"]
    assert cells.tables["evidence"] == [["measure", "IN", "RL"], ["M_rea", "0.26", "0.34"], ["M_v2r", "0.21", "0.29"]]
    assert "| M_rea: IN:RL:RL − IN | +0.050 | [+0.010, +0.090] | 400 | 0.012 | 0.036 | McNemar | *supported* |" in md
    # nested evidence: a mapping of mappings is its own table, a flat mapping a key/value table
    assert "<th>recognition</th>" not in page and "<td>recognition</td><td>2</td><td>0.8</td>" in page
    assert "<th>early</th><td>0.1</td>" in page
    assert "| ocr | 9 | 0.4 |" in md and "early: 0.1; late: 0.7" in md


def test_old_style_claim_renders_with_dashes(recipe, tmp_path):
    page, md = _render(recipe, tmp_path)
    assert "headline test: –" in page and "headline test: –" in md
    assert "early: 0.28, 0.18, 0.38" in md
    assert "<th>early</th><td>0.28, 0.18, 0.38</td>" in page
    assert headline({"effect": 1.5, "p": 0.0001}) == "effect +1.500, 95 % CI –, n = –, p < 0.001, –"
    assert evidence_blocks({"table": {"columns": ["task"], "rows": []}}, skip_reason=True) == []


def test_no_python_reprs_anywhere(recipe, tmp_path):
    page, md = _render(recipe, tmp_path)
    for text in (page, md):
        assert "{'" not in text and "[[" not in text and "['" not in text and "<NA>" not in text
        assert not re.search(r"\bnan\b", re.sub(r'src="[^"]*"', "", text), re.IGNORECASE)
    assert "cuts: 8, 20" in page  # a list in the meta line is joined, not repr'd
    assert inline({"a": [1, {"b": None}]}) == "a: 1, b: –"


def test_ablation_baseline_and_model_captions(recipe, tmp_path):
    page, md = _render(recipe, tmp_path)
    cells = _Cells()
    cells.feed(page)
    for key in ("ablation_in", "ablation_rl"):
        assert [r[1] for r in cells.tables[key][1:]] == ["baseline", "0"]
    assert "| gsm | baseline | – | 8 | 0.75 | -0.2 |" in md
    for stage in ("probe_vision", "probe_ablate"):
        name = "vision_flip.png" if stage == "probe_vision" else "ablation_accuracy.png"
        for model in ("IN", "RL"):
            assert f"<figcaption>{model} model — {name}</figcaption>" in page
            assert f"![{model} model — {name}]({stage}/{model}/plots/{name})" in md


def test_variant_table_gains_follow_the_sign_of_the_comparison(recipe, tmp_path):
    v = variant_rows(recipe.tables["eval_metrics"], recipe.tables["eval_comparisons"]).set_index(["model", "metric"])
    assert v.loc[("RL", "M_rea"), "gain"] == pytest.approx(0.08)
    assert (v.loc[("RL", "M_rea"), "gain_low"], v.loc[("RL", "M_rea"), "gain_high"]) == pytest.approx((0.03, 0.13))
    assert v.loc[("RL:IN:IN", "M_rea"), "gain"] == pytest.approx(0.01)  # reference was model_b: no flip
    assert v.loc[("IN", "M_rea"), "value"] == pytest.approx(0.26)  # the pooled row, not the per-task one
    assert v.loc[("RL", "accuracy:image"), "value"] == pytest.approx(0.62)  # only in the comparisons
    page, md = _render(recipe, tmp_path)
    cells = _Cells()
    cells.feed(page)
    table = cells.tables["eval_variants"]
    assert table[0] == ["model", "M_vis", "M_vis − IN", "M_v2r", "M_v2r − IN", "M_rea", "M_rea − IN",
                        "accuracy:image", "accuracy:image − IN"]
    assert [r[0] for r in table[1:]] == ["IN", "RL", "IN:RL:RL", "RL:IN:IN"]
    rl = table[2]
    assert rl[1] == "0.330 [0.280, 0.380]" and rl[2] == "–"
    assert rl[6] == "+0.080 [+0.030, +0.130], p = 0.004"
    assert rl[7] == "0.620" and rl[8] == "+0.120 [+0.040, +0.200], p = 0.02"
    assert "| RL | 0.330 [0.280, 0.380] | – | 0.290 [0.240, 0.340] |" in md


def test_necessity_all_rows_first_and_report_plots_inlined(recipe, tmp_path):
    page, md = _render(recipe, tmp_path)
    cells = _Cells()
    cells.feed(page)
    assert [r[1] for r in cells.tables["necessity"][1:]] == ["all", "all", "count"]
    assert cells.tables["necessity"][2][7] == "-0.23"  # gain_vs_rl is shown
    assert all(src.startswith("data:image/png;base64,") for src in cells.images)
    assert len(cells.images) == 4 + 2  # the stage PNGs and the variant and necessity gain plots
    for name in ("variant_gains.png", "necessity_gains.png"):
        i = page.index(f'alt="{name}"')
        src = page[i:].split('src="data:image/png;base64,', 1)[1].split('"', 1)[0]
        assert base64.b64decode(src).startswith(b"\x89PNG")
        assert (tmp_path / "report_plots" / f"default_{name}").read_bytes().startswith(b"\x89PNG")
        assert f"(report_plots/default_{name})" in md
    assert md.count("![") == len(cells.images)


def test_plots_appear_from_a_copied_table_alone(tmp_path):
    r = RecipeData(name="x", tables={"necessity": _tables()["necessity"]})
    page = render_html("t", {}, [], [r], {"x": []})
    assert 'alt="necessity_gains.png"' in page and 'alt="variant_gains.png"' not in page


def test_ablation_plot_names_the_baseline_and_the_model(tmp_path):
    from frankenlab.probe.plots import ablation_figure, model_label

    table = _tables()["ablation_in"].assign(accuracy_low=[0.5, 0.3], accuracy_high=[0.9, 0.7])
    fig = ablation_figure(table, "accuracy", "accuracy", model_label(tmp_path / "probe_ablate" / "RL" / "plots"))
    ax = fig.axes[0]
    assert ax.get_title() == "RL: Layer ablation: accuracy"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["gsm (n=8)", "gsm baseline (no layer skipped)"]
    assert model_label(tmp_path / "probe_ablate" / "plots") is None


def test_weight_geometry_section_renders_its_plots_summary_and_claims(tmp_path):
    from frankenlab.regions import Partition
    from frankenlab.study.claims import decide_all
    from frankenlab.testing.claims import geometry_tensors

    tensors = geometry_tensors("sparse", in_="noise", in_scale=0.1, seed=1)
    r = RecipeData(name="g", tables={"compare_tensors": tensors})
    claims = {"g": [c.to_dict() for c in decide_all(r.tables, Partition.make(6), {})]}
    page = render_html("t", {}, [], [r], claims)
    md = render_markdown("t", {}, [], [r], claims, tmp_path)
    section = page[page.index("<h2>Weight geometry"):]
    section = section[:section.index("<h2>", 4)]
    names = ("geometry_angles.png", "geometry_principal_share.png", "geometry_sparsity.png")
    cells = _Cells()
    cells.feed(section)
    assert len(cells.images) == 3 and all(f'alt="{n}"' in section for n in names)
    for n in names:
        assert (tmp_path / "report_plots" / f"g_{n}").read_bytes().startswith(b"\x89PNG")
        assert f"(report_plots/g_{n})" in md
    summary = cells.tables["geometry_summary"]
    rl = tensors[(tensors["phase"] == "rl") & (tensors["section"] == "llm") & (tensors["ndim"] == 2)]
    assert summary[1][:3] == ["ΔRL (IN → RL)", "42 (42 changed)", f"{1 - rl['unchanged_frac'].mean():.3f}"]
    assert summary[2][0] == "ΔIN (BASE → IN)" and summary[2][2] == "1.000"
    verdicts = {row[0]: row[1] for row in cells.tables["geometry_claims"][1:]}
    assert verdicts == {"RL's update is sparse but (nearly) full-rank.": "supported",
                        "RL's update lies off the principal directions of the weights.": "inconclusive",
                        "RL rotates the weights' principal subspaces less than SFT (IN) did.": "supported"}
    assert "rl_off_principal" in page[page.index("<h2>Findings"):page.index("<h2>Stages")]  # also under Findings
    empty = render_html("t", {}, [], [RecipeData(name="e")], {"e": []})
    assert "No per-matrix geometry for this recipe" in empty


def _png_width(png: bytes) -> int:
    assert png.startswith(b"\x89PNG")
    return int.from_bytes(png[16:20], "big")  # IHDR width


def _figures_by_section(page: str) -> dict[str, list[tuple[str, str]]]:
    """Per <h2> section, each figure's (caption, what-it-shows line)."""
    out: dict[str, list[tuple[str, str]]] = {}
    for part in page.split("<h2>")[1:]:
        title = html.unescape(part.split("</h2>", 1)[0])
        figs = re.findall(r"<figcaption>(.*?)</figcaption>(?:<p class='muted caption'>(.*?)</p>)?</figure>", part)
        out[title] = [(html.unescape(c), html.unescape(d)) for c, d in figs]
    return out


def test_every_figure_caption_names_its_model_and_what_it_shows_once_per_section(tmp_path):
    plots = {"probe_vision": [_png(tmp_path / "probe_vision" / m / "plots" / n) for m in ("IN", "RL")
                              for n in ("vision_change.png", "vision_flip.png")],
             "probe_attention": [_png(tmp_path / "probe_attention" / "plots" / n) for n in
                                 ("attention_layers.png", "attention_diff.png", "attention_heads_own.png",
                                  "attention_heads_shared.png")]
             + [_png(tmp_path / "probe_attention" / "extra" / "attention_diff.png")],  # same name, other folder
             "merge_eval": [_png(tmp_path / "merge_eval" / n) for n in ("summary.png", "metrics.png")],
             "compare": [_png(tmp_path / "compare" / "plots" / "heatmap_fro_rl.png")]}
    r = RecipeData(name="x", tables={"necessity": _tables()["necessity"], "eval_metrics": _tables()["eval_metrics"],
                                     "eval_comparisons": _tables()["eval_comparisons"]}, plots=plots)
    page = render_html("t", {}, [], [r], {"x": []})
    sections = _figures_by_section(page)
    owners = ("IN model", "RL model", "pair", "all models", "RL variants vs IN")
    n = 0
    for title, figs in sections.items():
        captions = [c for c, _ in figs]
        assert len(set(captions)) == len(captions), (title, captions)
        for caption, shows in figs:
            n += 1
            assert caption.startswith(owners), caption
            assert len(shows) > 20, caption  # a sentence on what the figure shows, not just a file name
    assert n == 4 + 5 + 2 + 1 + 1 + 1  # every stage PNG, the variant and the necessity gain plots
    vision = dict(sections["Vision localization (visual-token swapping)"])
    assert "answer changes" in vision["RL model — vision_change.png"]
    att = dict(sections["Attention to vision, IN vs RL"])
    assert "pair (IN vs RL) — extra/attention_diff.png" in att
    assert "own response" in att["pair (IN vs RL) — attention_heads_own.png"]
    assert "symmetric around 0" in att["pair (IN vs RL) — attention_heads_shared.png"]
    assert "ΔRL (IN → RL)" in dict(sections["Update characterization (parameter comparison)"])[
        "pair updates (ΔRL; ΔIN with BASE) — heatmap_fro_rl.png"]
    md = render_markdown("t", {}, [], [r], {"x": []}, tmp_path)
    assert "![RL model — vision_flip.png](probe_vision/RL/plots/vision_flip.png)" in md
    assert "*share of items whose answer flips" in md


def test_transfer_plots_stay_readable_at_the_width_the_report_shows_them(tmp_path):
    """A legend or label at 9 pt must still be ≥ 8 px after the browser scales the PNG to ~540 px."""
    from frankenlab.eval.plots import plot_metrics, plot_passk, plot_summary
    from frankenlab.report.plots import gain_panels

    models = [f"M{i}" for i in range(8)]
    wide = pd.DataFrame([{"metric": k, "model": m, "gain": 0.01, "gain_low": -0.01, "gain_high": 0.03}
                         for k in ("M_vis", "M_v2r", "M_rea", "accuracy:image") for m in models])
    summary = pd.DataFrame([{"model": m, "task": t, "setting": s, "accuracy": 0.5, "ci_low": 0.4, "ci_high": 0.6}
                            for m in models for t in ("a", "b") for s in ("image", "black")])
    metrics = pd.DataFrame([{"model": m, "task": "all", "metric": k, "value": 0.5, "ci_low": 0.4, "ci_high": 0.6}
                            for m in models for k in ("M_vis", "M_v2r", "M_rea")])
    passk = pd.DataFrame([{"model": m, "task": t, "setting": "image", "k": k, "pass_at_k": 0.5, "low": 0.4,
                           "high": 0.6} for m in models for t in ("a", "b", "c") for k in (1, 2, 4)])
    pngs = {"variant_gains": (gain_panels(wide, "metric", "model", "t", "gain"), 100)}
    for name, fn, df in (("summary", plot_summary, summary), ("metrics", plot_metrics, metrics),
                         ("passk", plot_passk, passk)):
        pngs[name] = (fn(df, tmp_path / f"{name}.png").read_bytes(), 110)
    for name, (png, dpi) in pngs.items():
        shown_px = 9 * dpi / 72 * min(1.0, 540 / _png_width(png))
        assert shown_px >= 8, f"{name}: 9 pt text shows at {shown_px:.1f} px"
