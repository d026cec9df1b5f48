"""The report from stage folders alone: missing stages are said so, several recipes side by side."""

from __future__ import annotations

import pandas as pd

from frankenlab.report import collect_recipe, render_html, render_markdown
from frankenlab.study.stages import STAGE_SPECS


def _claim(verdict: str) -> dict:
    return {"claim": "rl_refines_mid_late", "statement": "RL's weight update concentrates in mid-to-late LLM layers.",
            "verdict": verdict, "rule": "a stated rule", "reason": f"because it is {verdict}", "evidence": {}}


def test_two_recipes_side_by_side_and_missing_stages(tmp_path):
    recipes, claims = [], {}
    for name, verdict in (("alpha", "supported"), ("beta", "contradicted")):
        dirs = {s: tmp_path / s / name for s in STAGE_SPECS}
        dirs["compare"].mkdir(parents=True)
        pd.DataFrame([{"layer": u, "section": "llm", "phase": "rl", "fro_sum": 1.0}
                      for u in range(1, 7)]).to_csv(dirs["compare"] / "layers.csv", index=False)
        data = collect_recipe(name, dirs, {"IN": {"path": f"/{name}/in", "fingerprint": "fp-1", "model_type": "x"}})
        recipes.append(data)
        claims[name] = [_claim(verdict)]
    html = render_html("t", {}, [], recipes, claims)
    assert "<th>alpha</th><th>beta</th>" in html
    first_row = html[html.index("rl_refines_mid_late"):]
    assert first_row.index("supported") < first_row.index("contradicted")  # alpha's column, then beta's
    details = html[html.index("<section"):]
    assert details.index("<b>alpha</b>: because it is supported") < details.index("<b>beta</b>: because it is "
                                                                                   "contradicted")
    assert html.count("This stage produced no results for this recipe") == 2 * 8  # no regions.csv, plots, ...
    md = render_markdown("t", {}, [], recipes, claims, tmp_path)
    assert "### alpha" in md and "### beta" in md
    assert "**supported** (alpha) — because it is supported" in md
    assert "rl_refines_mid_late" not in md  # statements, not ids, in prose
