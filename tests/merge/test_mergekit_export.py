from __future__ import annotations

import pytest
import yaml

from frankenlab.merge import Recipe, make_plan, open_inputs, to_mergekit


def _export(pair, recipe: Recipe):
    with open_inputs(*pair) as models:
        return to_mergekit(make_plan(recipe, models))


def _slices(cfg: dict, module: str) -> list[list[tuple[str, list[int], float | None]]]:
    return [[(s["model"], s["layer_range"], (s.get("parameters") or {}).get("weight")) for s in sl["sources"]]
            for sl in cfg["modules"][module]["slices"]]


def test_passthrough_slices_and_the_final_norm_caveat(hub_pair):
    in_, rl = map(str, hub_pair)
    exp = _export(hub_pair, Recipe.parse("IN:RL:RL"))
    cfg = yaml.safe_load(exp.yaml)
    assert cfg == exp.config
    assert cfg["merge_method"] == "passthrough" and cfg["base_model"] == in_ and cfg["dtype"] == "bfloat16"
    assert _slices(cfg, "text_decoder") == [[(in_, [0, 2], None)], [(rl, [2, 6], None)]]
    assert _slices(cfg, "vision_tower") == [[(in_, [0, 2], None)]]
    assert _slices(cfg, "multi_modal_projector") == [[(in_, [0, 2], None)]]
    # mergekit takes the final norm and lm_head from the last slice's model (RL); we take them from IN
    assert not exp.exact
    differs = [w for w in exp.warnings if w.startswith("differs:")]
    assert len(differs) == 2 and all("last slice (RL)" in w and "this plan from IN" in w for w in differs)
    assert {w.split()[3] for w in differs} == {"lm_head.weight", "model.norm.weight"}
    assert all(f"#   - {w}" in exp.yaml for w in exp.warnings)


def test_exact_when_the_edges_agree(hub_pair):
    exp = _export(hub_pair, Recipe.parse("IN:RL:IN"))
    assert exp.exact and exp.warnings == ()
    assert "expresses this plan exactly" in exp.yaml
    exp = _export(hub_pair, Recipe.parse("RL:IN:RL", rest="RL"))
    assert exp.exact and yaml.safe_load(exp.yaml)["base_model"] == str(hub_pair[1])


def test_interpolation_becomes_linear_weights(hub_pair):
    in_, rl = map(str, hub_pair)
    exp = _export(hub_pair, Recipe.parse("IN:IN:IN", alpha="mid=0.25", takes=["RL:projector"]))
    cfg = yaml.safe_load(exp.yaml)
    assert cfg["merge_method"] == "linear"
    assert _slices(cfg, "text_decoder") == [[(in_, [0, 2], 1.0)], [(in_, [2, 4], 0.75), (rl, [2, 4], 0.25)],
                                            [(in_, [4, 6], 1.0)]]
    assert _slices(cfg, "multi_modal_projector") == [[(rl, [0, 2], 1.0)]]
    assert any(w.startswith("rounding:") for w in exp.warnings)
    assert exp.exact  # only rounding differs: edges IN, as in the plan


@pytest.mark.parametrize("layers", ["llm:1-4", "llm:0-5"])
def test_text_model_uses_top_level_slices(tied_text_pair, layers):
    in_, rl = map(str, tied_text_pair)
    exp = _export(tied_text_pair, Recipe.parse(takes=[f"RL:{layers}"]))
    cfg = yaml.safe_load(exp.yaml)
    assert "modules" not in cfg
    ranges = [(s["sources"][0]["model"], s["sources"][0]["layer_range"]) for s in cfg["slices"]]
    if layers == "llm:1-4":
        assert ranges == [(in_, [0, 1]), (rl, [1, 5]), (in_, [5, 6])]
        assert exp.exact
    else:
        assert ranges == [(rl, [0, 6])]
        assert any("model.embed_tokens.weight" in w for w in exp.warnings)
