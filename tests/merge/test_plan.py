from __future__ import annotations

import json

import pytest
import torch

from frankenlab.checkpoint import Checkpoint
from frankenlab.errors import ArchitectureError, RecipeError, RegionError
from frankenlab.merge import STANDARD, Recipe, make_plan, open_inputs
from tests._helpers import write_text_ckpt


@pytest.mark.parametrize("spec", STANDARD)
@pytest.mark.parametrize("rest", ["IN", "RL"])
def test_standard_variants_assign_every_tensor(hub_pair, spec, rest):
    with open_inputs(*hub_pair) as models:
        plan = make_plan(Recipe.parse(spec, rest=rest), models)
        names = models["IN"].names()
    parts = spec.split(":")
    assert plan.cuts == (2, 4)
    assert [t.out_name for t in plan.tensors] == names  # every tensor, in the rest model's order
    sections = set()
    for t in plan.tensors:
        sections.add(t.section)
        assert t.alpha is None and t.in_dtype == t.out_dtype == "BF16"
        if t.section == "llm" and t.block is not None:
            assert t.source == parts[t.block // 2], t.name  # thirds of 6 layers: 2/2/2
        else:
            assert t.source == rest, t.name  # vision, projector, embeddings, final norm, lm_head
    assert sections == {"vision", "projector", "llm", "embed", "head", "other"}


def test_cuts_takes_and_alpha_in_order(hub_pair):
    recipe = Recipe.parse("IN:RL:IN:RL", cuts="1,3,5", rest="IN",
                          takes=["RL:projector", "RL:embed", "RL:final_norm", "IN:llm:3-5", "RL:llm:5"],
                          alpha="part1=0.25,vision=0")
    with open_inputs(*hub_pair) as models:
        plan = make_plan(recipe, models)
    assert plan.parts == {"part0": (0, 0), "part1": (1, 2), "part2": (3, 4), "part3": (5, 5)}
    for t in plan.tensors:
        if t.section == "llm" and t.block is not None:
            if t.block in (1, 2):
                assert (t.source, t.alpha, t.copy_from) == ("RL", 0.25, None)
            else:
                want = {0: "IN", 3: "IN", 4: "IN", 5: "RL"}[t.block]  # later --take wins
                assert (t.source, t.alpha) == (want, None), t.name
        elif t.section == "vision":
            assert (t.alpha, t.copy_from) == (0.0, "IN")  # α=0 is IN exactly
        elif t.section in ("projector", "embed", "other"):
            assert t.source == "RL"
        else:
            assert t.section == "head" and t.source == "IN"
    prov = plan.provenance()
    assert prov["tensors"]["visual.blocks.0.attn.qkv.weight"] == {"source": "RL", "alpha": 0.0, "anchor": "IN"}
    assert prov["tensors"]["lm_head.weight"] == {"source": "IN", "alpha": None}
    assert prov["rest"] == "IN" and prov["cuts"] == [1, 3, 5] and set(prov["inputs"]) == {"IN", "RL"}


def test_mixed_layouts_write_the_rest_models_layout(vlm_pairs):
    hub_in, _ = vlm_pairs["hub"]
    _, t5_rl = vlm_pairs["transformers5"]
    with open_inputs(hub_in, t5_rl) as models:
        plan_in = make_plan(Recipe.parse("IN:RL:RL"), models)
        plan_rl = make_plan(Recipe.parse("IN:RL:RL", rest="RL"), models)
        assert [t.out_name for t in plan_in.tensors] == models["IN"].names()
        assert [t.out_name for t in plan_rl.tensors] == models["RL"].names()
    assert plan_in.layout == "hub" and plan_rl.layout == "transformers5"
    src_in = {t.name: t.source for t in plan_in.tensors}  # canonical names agree across layouts
    src_rl = {t.name: t.source for t in plan_rl.tensors}
    assert set(src_in) == set(src_rl)
    for name, source in src_in.items():
        layer = name.startswith("model.language_model.layers.")
        assert source == (src_rl[name] if layer else "IN")
        assert src_rl[name] == (source if layer else "RL")


def test_summary_groups_consecutive_blocks(hub_pair):
    with open_inputs(*hub_pair) as models:
        plan = make_plan(Recipe.parse("IN:RL:RL", alpha="late=0.5"), models)
    llm = [(r["first"], r["last"], r["source"], r["alpha"]) for r in plan.summary() if r["section"] == "llm"]
    assert llm == [(0, 1, "IN", None), (2, 3, "RL", None), (4, 5, "RL", 0.5)]
    assert sum(r["tensors"] for r in plan.summary()) == len(plan.tensors)


@pytest.mark.parametrize(("recipe", "error", "message"), [
    (Recipe.parse("IN:RL:RL", cuts="2,9"), RegionError, "cut 9 is out of range.*6 LLM layers"),
    (Recipe.parse("IN:RL:RL", takes=["RL:llm:3-9"]), RegionError, "out of range.*llm:0-5"),
    (Recipe.parse("IN:RL:RL", takes=["RL:bogus"]), RegionError, "unknown region 'bogus'.*lm_head"),
    (Recipe.parse("IN:RL:RL", alpha="middle=0.5"), RegionError, "unknown region 'middle'"),
    (Recipe.parse("IN:RL:IN:RL", cuts="1,2,3", alpha="mid=0.5"), RegionError, "unknown region 'mid'"),
])
def test_regions_checked_against_the_model(hub_pair, recipe, error, message):
    with open_inputs(*hub_pair) as models, pytest.raises(error, match=message):
        make_plan(recipe, models)


def test_unknown_label_and_missing_model(hub_pair):
    with Checkpoint(hub_pair[0]) as c, pytest.raises(RecipeError, match="names model\\(s\\) RL, but only IN was"):
        make_plan(Recipe.parse("IN:RL:RL"), {"IN": c})


def test_take_matching_nothing_is_an_error(tied_text_pair):
    with open_inputs(*tied_text_pair) as models:
        assert "lm_head.weight" not in models["IN"].names()
        with pytest.raises(RecipeError, match="RL:lm_head matches no tensor.*tied"):
            make_plan(Recipe.parse("IN:RL:RL", takes=["RL:lm_head"]), models)
        with pytest.raises(RegionError, match="no vision encoder"):
            make_plan(Recipe.parse("IN:RL:RL", takes=["RL:vision"]), models)
        plan = make_plan(Recipe.parse("IN:RL:RL", takes=["RL:embed"]), models)
    assert {t.section for t in plan.tensors} == {"llm", "embed", "other"}


def _text_pair(tmp_path, tensors, *, rl_changes=None, rl_config=None, n_layers=2):
    in_ = write_text_ckpt(tmp_path / "in", tensors, n_layers=n_layers)
    rl_tensors = {**tensors, **(rl_changes or {})}
    rl = write_text_ckpt(tmp_path / "rl", rl_tensors, n_layers=n_layers, extra_config=rl_config)
    return in_, rl


def test_incompatible_architectures(tmp_path, text_tensors):
    in_, rl = _text_pair(tmp_path / "a", text_tensors, rl_config={"model_type": "qwen2"})
    with open_inputs(in_, rl) as models, pytest.raises(ArchitectureError, match="model_type 'qwen2'.*'llama'"):
        make_plan(Recipe.parse("IN:RL:RL"), models)
    in_ = write_text_ckpt(tmp_path / "b" / "in", text_tensors, n_layers=2)
    cfg = json.loads((in_ / "config.json").read_text())
    rl = write_text_ckpt(tmp_path / "b" / "rl", text_tensors, n_layers=2)
    (rl / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
    with open_inputs(in_, rl) as models, pytest.raises(ArchitectureError, match="3 LLM layers.*has 2"):
        make_plan(Recipe.parse("IN:RL", cuts="1"), models)


def test_shapes_tensor_sets_and_dtypes_must_agree(tmp_path, text_tensors):
    bigger = {"model.embed_tokens.weight": torch.randn(20, 8)}
    in_, rl = _text_pair(tmp_path / "shape", text_tensors, rl_changes=bigger)
    with open_inputs(in_, rl) as models, pytest.raises(ArchitectureError, match="shape \\[20, 8\\] in RL.*\\[16, 8\\]"):
        make_plan(Recipe.parse("IN:RL", cuts="1"), models)
    fewer = dict(text_tensors)
    del fewer["lm_head.weight"]
    in_ = write_text_ckpt(tmp_path / "set" / "in", text_tensors)
    rl = write_text_ckpt(tmp_path / "set" / "rl", fewer)
    with open_inputs(in_, rl) as models, pytest.raises(ArchitectureError, match="hold different tensors.*lm_head"):
        make_plan(Recipe.parse("IN:RL", cuts="1"), models)
    half = {k: v.half() for k, v in text_tensors.items()}
    in_, rl = _text_pair(tmp_path / "dtype", text_tensors, rl_changes=half)
    with open_inputs(in_, rl) as models:
        with pytest.raises(RecipeError, match="F16 in RL but F32 in IN; pass --dtype"):
            make_plan(Recipe.parse("IN:RL", cuts="1"), models)
        plan = make_plan(Recipe.parse("IN:RL", cuts="1"), models, dtype="bf16")
    assert {t.out_dtype for t in plan.tensors} == {"BF16"}
