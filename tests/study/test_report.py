"""The report from stage folders alone: missing stages are said so, several recipes side by side."""

from __future__ import annotations

import pandas as pd

from frankenlab.report import collect_recipe, render_html, render_markdown
from frankenlab.study.claims import decide_all
from frankenlab.study.stages import STAGE_SPECS


def test_two_recipes_side_by_side_and_missing_stages(tmp_path):
    recipes, claims = [], {}
    for name, energy in (("alpha", [1, 1, 2, 2, 2, 2]), ("beta", [3, 3, 1, 1, 1, 1])):
        dirs = {s: tmp_path / s / name for s in STAGE_SPECS}
        dirs["compare"].mkdir(parents=True)
        pd.DataFrame([{"layer": u, "section": "llm", "phase": "rl", "fro_sum": v}
                      for u, v in zip(range(1, 7), energy)]).to_csv(dirs["compare"] / "layers.csv", index=False)
        data = collect_recipe(name, dirs, {"IN": {"path": f"/{name}/in", "fingerprint": "fp-1", "model_type": "x"}})
        recipes.append(data)
        claims[name] = [c.to_dict() for c in decide_all(data.tables, (2, 4))]
    html = render_html("t", {}, [], recipes, claims)
    assert "<th>alpha</th><th>beta</th>" in html
    first_row = html[html.index("rl_refines_mid_late"):]
    assert first_row.index("supported") < first_row.index("contradicted")  # alpha's column, then beta's
    assert html.count("This stage produced no results for this recipe") == 2 * 6  # no regions.csv, plots, ...
    md = render_markdown("t", {}, [], recipes, claims, tmp_path)
    assert "### alpha" in md and "### beta" in md
