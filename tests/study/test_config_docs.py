"""The example configuration in docs/study.md runs as written: it validates, and its lengths are per kind."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from frankenlab.study import load_config, parse_config

DOC = Path(__file__).resolve().parents[2] / "docs" / "study.md"


def _yaml_block() -> str:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Configuration file", 1)[1]
    found = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert found, "docs/study.md lost its configuration YAML block"
    return found.group(1)


def test_the_documented_config_validates_and_uses_per_kind_lengths(tmp_path):
    block = _yaml_block()
    cfg = parse_config(yaml.safe_load(block), "docs/study.md")
    assert cfg.probe.max_new_tokens is None and cfg.eval.max_new_tokens is None  # per item kind
    assert cfg.recipes[0].name == "mmr1" and cfg.custom_variants[0].alpha == {"late": 0.5}
    (tmp_path / "study.yaml").write_text(block, encoding="utf-8")
    loaded = load_config(tmp_path / "study.yaml")
    assert loaded.out == str(tmp_path / "study-out")
    assert loaded.stages == cfg.stages


def test_the_documented_variants_parse():
    from frankenlab.study.stages import variant_recipes

    cfg = parse_config(yaml.safe_load(_yaml_block()), "docs/study.md")
    recipes = variant_recipes(cfg)
    assert set(recipes) == {*cfg.variants, "late-half"}


def test_explicit_lengths_still_win():
    cfg = parse_config({"out": "o", "recipes": [{"in": "a", "rl": "b"}], "probe": {"max_new_tokens": 6},
                        "eval": {"max_new_tokens": 8}})
    assert (cfg.probe.max_new_tokens, cfg.eval.max_new_tokens) == (6, 8)


def test_frozen_variants_are_evaluated_with_per_kind_lengths():
    """freeze.train's held-out evaluation: one call per kind, results back in item order; explicit: one call."""
    from types import SimpleNamespace

    from frankenlab.study.stages import _evaluate_by_kind

    items = [SimpleNamespace(id=f"i{n}", family=f, choices=None)
             for n, f in enumerate(["count", "text_arith", "color", "count_arith"])]
    calls = []

    def fake(model, processor, group, *, max_new_tokens):
        calls.append((max_new_tokens, [it.id for it in group]))
        return [SimpleNamespace(id=it.id, limit=max_new_tokens) for it in group]

    out = _evaluate_by_kind(fake, None, None, items, None)
    assert [(r.id, r.limit) for r in out] == [("i0", 256), ("i1", 1024), ("i2", 256), ("i3", 1024)]
    assert sorted(calls) == [(256, ["i0", "i2"]), (1024, ["i1", "i3"])]
    calls.clear()
    assert [r.limit for r in _evaluate_by_kind(fake, None, None, items, 5)] == [5] * 4 and len(calls) == 1
