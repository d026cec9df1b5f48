"""A reduced study on tiny models: every section is present and backed by the stage tables."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from frankenlab.report.render import TABLE_COLUMNS, fmt
from frankenlab.study import parse_config, run_study
from frankenlab.testing.models import save_tiny_checkpoint

pytestmark = pytest.mark.slow


def _make_pair(root):
    in_dir = save_tiny_checkpoint("qwen2_5_vl", root / "in", seed=0, n_llm_layers=6, n_vision_blocks=2)
    rl_dir = root / "rl"
    shutil.copytree(in_dir, rl_dir)
    sd = load_file(str(rl_dir / "model.safetensors"))
    g = torch.Generator().manual_seed(7)
    for name in sd:
        if re.match(r"model\.layers\.[45]\.mlp\.", name):  # RL changes the late third only
            sd[name] = sd[name] + 0.05 * torch.randn(sd[name].shape, generator=g)
    save_file(sd, str(rl_dir / "model.safetensors"), metadata={"format": "pt"})
    nec = root / "necessity.csv"
    pd.DataFrame([
        {"model": "rl", "family": "all", "n": 100, "acc": 0.6, "gain": 0.3, "gain_low": 0.2, "gain_high": 0.4},
        {"model": "rl-frozen-early", "family": "all", "n": 100, "acc": 0.58, "gain": 0.28, "gain_low": 0.18,
         "gain_high": 0.38},
        {"model": "rl-frozen-mid", "family": "all", "n": 100, "acc": 0.55, "gain": 0.25, "gain_low": 0.15,
         "gain_high": 0.35},
        {"model": "rl-frozen-late", "family": "all", "n": 100, "acc": 0.31, "gain": 0.01, "gain_low": -0.05,
         "gain_high": 0.07},
    ]).to_csv(nec, index=False)
    return in_dir, rl_dir, nec


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    in_dir, rl_dir, nec = _make_pair(root)
    data = {"out": str(root / "out"), "recipes": [{"in": str(in_dir), "rl": str(rl_dir)}],
            "variants": ["IN:RL:RL", "RL:IN:IN"],
            "probe": {"n_per_task": 2, "ablate_limit": 4, "max_new_tokens": 3},
            "eval": {"limit": 3, "max_new_tokens": 3, "samples": 2, "sample_limit": 2}, "freeze": {"table": str(nec)}}
    cfg = parse_config(data)
    result = run_study(cfg)
    return cfg, result, data


def test_all_stages_ran(study):
    _, result, _ = study
    assert [(o.stage, o.status) for o in result.outcomes] == [
        ("compare", "done"), ("probe_vision", "done"), ("probe_ablate", "done"), ("probe_attention", "done"),
        ("probe_kl", "done"), ("probe_lens", "done"), ("merge_eval", "done"), ("freeze", "done")], \
        [o.error for o in result.outcomes]


def test_behaviour_probes_and_passk_ran(study):
    cfg, _, _ = study
    out = cfg.stage_dir("compare", "default").parent
    kl = pd.read_csv(out / "probe_kl" / "kl_classes.csv")
    assert {"prompt", "answer"} <= set(kl["class"]) and (kl["kl_rl_in_mean"] >= 0).all()
    lens = pd.read_csv(out / "probe_lens" / "lens_layers.csv")
    assert set(lens["model"]) == {"in", "rl"} and sorted(set(lens["layer"])) == list(range(6))
    passk = pd.read_csv(out / "merge_eval" / "passk" / "passk.csv")
    assert set(passk["model"]) == {"IN", "RL", "IN:RL:RL", "RL:IN:IN"} and set(passk["k"]) == {1, 2}


def test_findings_follow_the_tables(study):
    cfg, _, _ = study
    findings = json.loads((cfg.stage_dir("compare", "default").parent / "findings.json").read_text())
    assert [f["claim"] for f in findings] == ["rl_refines_mid_late", "energy_in_late_rl_mid", "localization_order",
                                              "transfer_mid_late", "freeze_late_hurts_most",
                                              "rl_attention_vision_mid_late", "rl_update_sparse_full_rank",
                                              "rl_off_principal", "rl_rotates_less_than_sft",
                                              "rl_answer_emerges_earlier", "rl_gain_survives_rank_k"]
    assert all(f["verdict"] in ("supported", "contradicted", "inconclusive") for f in findings)
    by = {f["claim"]: f for f in findings}
    energy = by["rl_refines_mid_late"]  # only late layers were changed, but 6 layers cannot reach α:
    assert energy["verdict"] == "inconclusive" and "15 arrangements" in energy["test"]  # p ≥ 1/15
    assert energy["evidence"]["per_part_mean"]["early"] == 0 and energy["evidence"]["per_part_mean"]["late"] > 0
    assert energy["effect"] > 0 and energy["n"] == 6
    assert by["energy_in_late_rl_mid"]["verdict"] == "inconclusive"  # no BASE
    assert by["freeze_late_hurts_most"]["verdict"] == "supported"


class _Tables(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._cur: str | None = None
        self._cell: list[str] | None = None
        self.images = 0

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
            assert a["src"].startswith("data:image/png;base64,")
            self.images += 1

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cur and self._cell is not None:
            self.tables[self._cur][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._cur = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def test_report_sections_and_numbers_equal_the_tables(study):
    cfg, _, _ = study
    out = cfg.stage_dir("compare", "default").parent
    html_text = (out / "report.html").read_text()
    for title in ("Inputs", "Findings", "Stages", "Update characterization", "Vision localization",
                  "Reasoning localization", "Attention to vision", "per-token KL", "logit lens", "Transferability",
                  "Coverage (pass@k", "Necessity"):
        assert title in html_text
    assert "http://" not in html_text and "https://" not in html_text  # self-contained
    p = _Tables()
    p.feed(html_text)
    assert p.images >= 5
    sources = {"compare_regions": out / "compare" / "regions.csv", "eval_metrics": out / "merge_eval" / "metrics.csv",
               "necessity": out / "freeze" / "necessity.csv",
               "attention_diff": out / "probe_attention" / "attention_diff.csv"}
    for key, csv in sources.items():
        df = pd.read_csv(csv)
        cols = [c for c in TABLE_COLUMNS[key] if c in df.columns]
        shown = p.tables[key]
        assert shown[0] == cols
        expected = [[fmt(v) for v in row] for row in df[cols].itertuples(index=False)]
        assert shown[1:] == expected, key
    md = (out / "report.md").read_text()
    assert "## Findings" in md and "freeze_late_hurts_most" not in md  # statements, not ids, in prose
    assert md.count("![") == p.images


def test_rerun_skips_and_changed_settings_rerun_only_their_stage(study):
    cfg, _, data = study
    again = run_study(cfg)
    assert {o.status for o in again.outcomes} == {"skipped"}
    changed = parse_config({**data, "eval": {**data["eval"], "limit": 2}})
    third = run_study(changed)
    assert {o.stage: o.status for o in third.outcomes} == {
        "compare": "skipped", "probe_vision": "skipped", "probe_ablate": "skipped", "probe_attention": "skipped",
        "probe_kl": "done", "probe_lens": "done",  # their built-in items follow eval.limit
        "merge_eval": "done", "freeze": "skipped"}
    fourth = run_study(parse_config({**data, "eval": {**data["eval"], "limit": 2}, "probe": {**data["probe"],
                                                                                         "lens": False}}))
    assert {o.stage: o.status for o in fourth.outcomes} == {
        "compare": "skipped", "probe_vision": "skipped", "probe_ablate": "skipped", "probe_attention": "skipped",
        "probe_kl": "skipped", "probe_lens": "not-applicable", "merge_eval": "skipped", "freeze": "skipped"}


def test_freeze_stage_trains_frozen_variants(tmp_path, fast_world):
    """freeze.train runs GRPO from IN (unfrozen and per frozen third) and writes the necessity table."""
    from frankenlab.freeze import verify_frozen

    pair = fast_world  # only read: the study writes under tmp_path/out
    cfg = parse_config({
        "out": str(tmp_path / "out"), "recipes": [{"in": str(pair / "in"), "rl": str(pair / "rl")}],
        "stages": ["freeze"],
        "freeze": {"train": {"tasks": [str(pair / "tasks" / "rl-train.jsonl")], "regions": ["late"],
                             "eval_tasks": [str(pair / "tasks" / "test.jsonl")], "steps": 2, "prompts_per_step": 2,
                             "eval_limit": 16, "always_frozen": "vision"}}})
    result = run_study(cfg)
    assert [o.status for o in result.outcomes] == ["done"], result.outcomes[0].error
    out = tmp_path / "out" / "freeze"
    df = pd.read_csv(out / "necessity.csv")
    assert set(df["model"]) == {"RL", "RL-FROZEN-LATE"}
    assert (df[df["family"] == "all"]["n"] == 16).all()
    assert verify_frozen(pair / "in", out / "rl-frozen-late", "vision,late").ok


def test_freeze_table_and_train_are_exclusive(tmp_path):
    from frankenlab.study import StudyConfigError

    with pytest.raises(StudyConfigError, match="either freeze.table or freeze.train"):
        parse_config({"out": str(tmp_path), "recipes": [{"in": "a", "rl": "b"}],
                      "freeze": {"table": "x.csv", "train": {"tasks": ["t.jsonl"]}}})
