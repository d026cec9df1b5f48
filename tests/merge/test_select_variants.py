"""select_variants: which recipes `frankenlab merge` writes for --config/--name/--all or the inline options."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from frankenlab.errors import RecipeError
from frankenlab.merge.recipe import Recipe, select_variants

COMBINE = ("--config sets recipe, cuts, takes, alpha, rank and rest per variant; do not combine it with "
           "--recipe/--take/--alpha/--rank/--cuts/--rest.")


@pytest.fixture
def two(tmp_path: Path) -> Path:
    cfg = tmp_path / "variants.yaml"
    cfg.write_text(yaml.safe_dump({"variants": [{"recipe": "IN:RL:RL"},
                                                {"name": "late-half", "recipe": "IN:IN:RL", "alpha": "late=0.5"}]}))
    return cfg


@pytest.fixture
def one(tmp_path: Path) -> Path:
    cfg = tmp_path / "one.yaml"
    cfg.write_text(yaml.safe_dump(["RL:IN:IN"]))
    return cfg


@pytest.mark.parametrize("inline", [{"recipe": "IN:RL:RL"}, {"cuts": "1,3"}, {"takes": ["RL:projector"]},
                                    {"alpha": "late=0.5"}, {"rank": "late=8"}, {"rest": "RL"}])
def test_config_refuses_every_inline_option_before_reading_the_file(tmp_path: Path, inline: dict) -> None:
    # The file does not exist: the combination is refused first, not the unreadable file.
    with pytest.raises(RecipeError, match=f"^{re.escape(COMBINE)}$"):
        select_variants(tmp_path / "absent.yaml", **inline)


def test_config_all_gives_every_variant_in_file_order(two: Path) -> None:
    chosen = select_variants(two, all_variants=True)
    assert [r.label for r in chosen] == ["IN:RL:RL", "late-half"]
    assert chosen[1].parts == ("IN", "IN", "RL") and chosen[1].alpha == (("late", 0.5),)


def test_config_all_wins_over_name(two: Path) -> None:
    assert [r.label for r in select_variants(two, "nope", True)] == ["IN:RL:RL", "late-half"]


def test_config_name_picks_one(two: Path) -> None:
    (chosen,) = select_variants(two, "late-half")
    assert chosen.name == "late-half" and chosen.parts == ("IN", "IN", "RL")


def test_config_unknown_name_lists_the_variants(two: Path) -> None:
    msg = f"{two} has no variant 'nope'; it has: IN:RL:RL, late-half."
    with pytest.raises(RecipeError, match=f"^{re.escape(msg)}$"):
        select_variants(two, "nope")


def test_config_of_one_variant_needs_no_name(one: Path) -> None:
    (chosen,) = select_variants(one)
    assert chosen.label == "RL:IN:IN" and chosen.parts == ("RL", "IN", "IN")


def test_config_of_several_variants_needs_name_or_all(two: Path) -> None:
    msg = f"{two} defines 2 variants (IN:RL:RL, late-half); pick one with --name, or write them all with --all."
    with pytest.raises(RecipeError, match=f"^{re.escape(msg)}$"):
        select_variants(two)


def test_unreadable_config_is_a_recipe_error(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="cannot read recipe file"):
        select_variants(tmp_path / "absent.yaml", "x")


@pytest.mark.parametrize(("name", "all_variants"), [("late-half", False), (None, True), ("x", True)])
def test_name_and_all_need_config(name: str | None, all_variants: bool) -> None:
    with pytest.raises(RecipeError, match=f"^{re.escape('--name and --all need --config.')}$"):
        select_variants(None, name, all_variants, recipe="IN:RL:RL")


def test_inline_options_make_one_recipe_rest_defaulting_to_in() -> None:
    (chosen,) = select_variants(recipe="in:rl:rl", cuts="1,3", takes=["RL:projector"], alpha="late=0.5",
                                rank="mid=2")
    assert chosen == Recipe.parse("IN:RL:RL", cuts="1,3", takes=["RL:projector"], alpha="late=0.5", rank="mid=2",
                                  rest="IN")
    assert chosen.rest == "IN"
    (rl_rest,) = select_variants(recipe="IN:IN:RL", rest="rl")
    assert rl_rest.rest == "RL"


def test_inline_without_any_ingredient_is_an_empty_recipe() -> None:
    with pytest.raises(RecipeError, match="^empty recipe"):
        select_variants()
