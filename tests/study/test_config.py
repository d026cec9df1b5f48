from __future__ import annotations

import pytest

from frankenlab.study import STANDARD_VARIANTS, StudyConfigError, load_config, parse_config


def test_defaults_and_stage_dirs(tmp_path):
    cfg = parse_config({"out": str(tmp_path), "recipes": [{"in": "a", "rl": "b"}]})
    assert cfg.variants == list(STANDARD_VARIANTS)
    assert cfg.stage_dir("compare", "default") == tmp_path / "compare"
    two = parse_config({"out": str(tmp_path), "recipes": [{"name": "x", "in": "a", "rl": "b"},
                                                          {"name": "y", "in": "c", "rl": "d"}]})
    assert two.stage_dir("compare", "y") == tmp_path / "compare" / "y"


@pytest.mark.parametrize("data,match", [
    ({"recipes": [{"in": "a", "rl": "b"}]}, "out"),
    ({"out": "o", "recipes": []}, "at least one recipe"),
    ({"out": "o", "recipes": [{"in": "a"}]}, "recipes.0.rl"),
    ({"out": "o", "recipes": [{"in": "a", "rl": "b"}], "stages": ["compare", "nope"]}, "unknown stage"),
    ({"out": "o", "recipes": [{"in": "a", "rl": "b"}], "probe": {"n_per_task": 0}}, "probe.n_per_task"),
    ({"out": "o", "recipes": [{"in": "a", "rl": "b"}, {"in": "c", "rl": "d"}]}, "unique"),
    ({"out": "o", "recipes": [{"in": "a", "rl": "b"}], "typo_key": 1}, "typo_key"),
])
def test_bad_configs_name_the_key(data, match):
    with pytest.raises(StudyConfigError, match=match):
        parse_config(data)


def test_yaml_paths_resolve_next_to_the_file(tmp_path):
    (tmp_path / "ckpts" / "in").mkdir(parents=True)
    (tmp_path / "study.yaml").write_text(
        "out: results\nrecipes:\n  - name: mini\n    in: ckpts/in\n    rl: /abs/rl\ncuts: '2,4'\n"
        "custom_variants:\n  - name: half-late\n    recipe: IN:IN:IN\n    alpha: {late: 0.5}\n")
    cfg = load_config(tmp_path / "study.yaml")
    assert cfg.recipes[0].in_ == str(tmp_path / "ckpts" / "in")
    assert cfg.recipes[0].rl == "/abs/rl"
    assert cfg.out == str(tmp_path / "results")
    assert cfg.custom_variants[0].alpha == {"late": 0.5}
    (tmp_path / "bad.yaml").write_text("out: [unclosed\n")
    with pytest.raises(StudyConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(StudyConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
