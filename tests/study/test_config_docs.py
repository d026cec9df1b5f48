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


def test_frozen_variants_are_evaluated_with_per_kind_lengths(monkeypatch):
    """freeze.train's held-out evaluation (the mini-world evaluator on eval's loop): one answer length per item
    kind, results back in item order; an explicit length: the same for all."""
    import frankenlab.runtime.generate as generate
    from frankenlab.miniworld.evaluate import evaluate
    from frankenlab.runtime.generate import GenerationSettings
    from frankenlab.tasks import TaskItem

    calls = []

    class Fake:
        def __init__(self, model, processor, *, batch_size, max_new_tokens):
            self.settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size)

        def generate(self, prompts):
            calls.append((self.settings.max_new_tokens, [p.text for p in prompts]))
            return ["1" for _ in prompts]

    monkeypatch.setattr(generate, "HFBackend", Fake)
    items = [TaskItem(id=f"i{n}", question=f"q{n}", answer="1", answer_type="numeric", meta={"family": f})
             for n, f in enumerate(["count", "text_arith", "color", "count_arith"])]
    out = evaluate(None, None, items, max_new_tokens=None)
    assert [r.id for r in out] == ["i0", "i1", "i2", "i3"] and all(r.strict for r in out)
    assert sorted(calls) == [(256, ["q0", "q2"]), (1024, ["q1", "q3"])]
    calls.clear()
    evaluate(None, None, items, max_new_tokens=5)
    assert {length for length, _ in calls} == {5} and sum(len(t) for _, t in calls) == 4
