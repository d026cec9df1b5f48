from __future__ import annotations

import pytest

from frankenlab.errors import RecipeError
from frankenlab.merge.recipe import STANDARD, Recipe, Take, load_recipes, recipes_from_config, standard_recipes


def test_parse_parts_case_insensitive_and_spec_round_trip():
    r = Recipe.parse("in:Rl:RL", cuts="8,20", takes=["rl:projector", "IN:llm:0-3"], alpha="mid=0.5,late=1",
                     rest="rl")
    assert r.parts == ("IN", "RL", "RL")
    assert r.cuts == (8, 20)
    assert r.takes == (Take(source="RL", region="projector"), Take(source="IN", region="llm:0-3"))
    assert r.alpha == (("mid", 0.5), ("late", 1.0))
    assert r.rest == "RL"
    assert r.spec() == "IN:RL:RL --cuts 8,20 --take RL:projector --take IN:llm:0-3 --alpha mid=0.5,late=1 --rest RL"
    d = r.to_dict()
    again = Recipe.parse(d["parts"], cuts=d["cuts"], takes=d["takes"], alpha=d["alpha"], rest=d["rest"])
    assert again == r
    assert hash(again) == hash(r)  # frozen, usable as a dict key


def test_four_parts_need_three_cuts():
    r = Recipe.parse("IN:RL:RL:IN", cuts="4,8,12")
    assert len(r.parts) == 4
    with pytest.raises(RecipeError, match="has 4 part.*default partition \\(thirds\\) has 3.*pass 3 cut"):
        Recipe.parse("IN:RL:RL:IN")
    with pytest.raises(RecipeError, match="has 3 part.*cuts 4,8,12 make 4"):
        Recipe.parse("IN:RL:RL", cuts="4,8,12")
    with pytest.raises(RecipeError, match="--take RL:llm"):
        Recipe.parse("RL")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"spec": "IN:SFT:RL"}, "unknown model label 'SFT' in part 2"),
    ({"spec": "IN::RL"}, "empty part"),
    ({"spec": "IN:RL:RL", "rest": "BASE"}, "unknown --rest model 'BASE'"),
    ({"spec": "IN:RL:RL", "cuts": "20,8"}, "strictly increasing"),
    ({"spec": "IN:RL:RL", "cuts": "a,b"}, "comma-separated integers"),
    ({"takes": ["projector"]}, "expected SOURCE:REGION"),
    ({"takes": ["XX:projector"]}, "unknown source in --take 'XX'"),
    ({"alpha": "mid"}, "REGION=VALUE"),
    ({"alpha": "mid=half"}, "not a number"),
    ({"alpha": "mid=nan"}, "finite"),
    ({"alpha": "mid=0.5,mid=0.7"}, "given twice"),
    ({}, "empty recipe"),
])
def test_bad_recipes_say_what_is_wrong(kwargs, message):
    spec = kwargs.pop("spec", None)
    with pytest.raises(RecipeError, match=message):
        Recipe.parse(spec, **kwargs)


def test_labels_used():
    assert Recipe.parse("IN:IN:IN").labels() == {"IN"}
    assert Recipe.parse("IN:IN:IN", alpha="late=0.5").labels() == {"IN", "RL"}
    assert Recipe.parse(takes=["RL:projector"]).labels() == {"IN", "RL"}


def test_standard_variants_are_the_papers_six():
    assert STANDARD == ("IN:RL:RL", "RL:IN:IN", "IN:IN:RL", "RL:RL:IN", "IN:RL:IN", "RL:IN:RL")
    rs = standard_recipes(cuts="8,20")
    assert [r.name for r in rs] == list(STANDARD)
    assert all(r.rest == "IN" and r.cuts == (8, 20) for r in rs)


def test_yaml_variants_with_defaults(tmp_path):
    p = tmp_path / "variants.yaml"
    p.write_text(
        "defaults:\n  cuts: [8, 20]\n  rest: IN\n"
        "variants:\n"
        "  - IN:RL:RL\n"
        "  - name: mid-half\n    recipe: IN:IN:IN\n    alpha: {mid: 0.5}\n"
        "  - name: proj\n    recipe: IN:RL:RL\n    take: RL:projector\n    rest: RL\n"
    )
    v = load_recipes(p)
    assert list(v) == ["IN:RL:RL", "mid-half", "proj"]
    assert v["IN:RL:RL"].cuts == (8, 20) and v["IN:RL:RL"].name == "IN:RL:RL"
    assert v["mid-half"].alpha == (("mid", 0.5),)
    assert v["proj"].takes == (Take(source="RL", region="projector"),) and v["proj"].rest == "RL"


def test_yaml_plain_list_and_errors(tmp_path):
    assert list(recipes_from_config([{"recipe": "RL:IN:IN"}, "IN:IN:RL"])) == ["RL:IN:IN", "IN:IN:RL"]
    with pytest.raises(RecipeError, match="two variants are named 'IN:RL:RL'"):
        recipes_from_config(["IN:RL:RL", {"recipe": "IN:RL:RL"}])
    with pytest.raises(RecipeError, match="unknown key"):
        recipes_from_config([{"recipe": "IN:RL:RL", "alfa": 1}])
    with pytest.raises(RecipeError, match="variant 2: .*unknown model label"):
        recipes_from_config(["IN:RL:RL", "IN:XX:RL"])
    with pytest.raises(RecipeError, match="non-empty list"):
        recipes_from_config({"variants": []})
    bad = tmp_path / "bad.yaml"
    bad.write_text("variants: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipes(bad)
    with pytest.raises(RecipeError, match="cannot read"):
        load_recipes(tmp_path / "missing.yaml")
