"""`miniworld build --fast`: every output, reloadable checkpoints, frozen blocks proven, bit-reproducible."""

from __future__ import annotations

import json

import pandas as pd
import pytest

pytest.importorskip("trl", reason="the mini-world build trains RL with TRL: pip install 'frankenlab[rl]'")

from transformers import AutoModelForImageTextToText  # noqa: E402

from frankenlab.checkpoint import Checkpoint  # noqa: E402
from frankenlab.cli.app import main  # noqa: E402
from frankenlab.compat import load_processor  # noqa: E402
from frankenlab.errors import FrankenlabError  # noqa: E402
from frankenlab.freeze import verify_frozen  # noqa: E402
from frankenlab.miniworld import FAMILIES, load_probe_pairs  # noqa: E402
from frankenlab.miniworld.build import (  # noqa: E402
    RESULT_COLUMNS,
    BuildConfig,
    build_miniworld,
    perceived_value,
)
from frankenlab.tasks import load_jsonl  # noqa: E402

MODELS = ("in", "rl", "rl-frozen-early", "rl-frozen-mid", "rl-frozen-late")


@pytest.fixture(scope="module")
def built(fast_world):
    """The session's shared fast build (tests/miniworld/conftest.py): read it, never write into it."""
    return fast_world


def test_layout(built):
    for name in MODELS:
        files = {p.name for p in (built / name).iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= files, name
    assert {p.name for p in built.iterdir()} >= {*MODELS, "tasks", "probe-pairs", "eval", "results.csv",
                                                 "results.parquet", "necessity.csv", "necessity_lenient.csv",
                                                 "build.json"}
    assert not [p for p in built.parent.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    cfg = BuildConfig.preset(fast=True)
    tasks = load_jsonl(built / "tasks" / "test.jsonl").items
    assert len(tasks) == cfg.n_eval and {t.family for t in tasks} == set(FAMILIES)
    assert all(t.id.startswith("test-") for t in tasks)
    assert load_jsonl(built / "tasks" / "rl-train.jsonl").items
    pairs = load_probe_pairs(built / "probe-pairs" / "pairs.jsonl")
    assert len(pairs) == 4 * cfg.n_probe_pairs


def test_results_table(built):
    df = pd.read_csv(built / "results.csv")
    assert list(df.columns[: len(RESULT_COLUMNS)]) == list(RESULT_COLUMNS)
    assert set(df["model"]) == {m.upper() for m in MODELS}
    n_eval = BuildConfig.preset(fast=True).n_eval
    for _, row in df.iterrows():
        assert row["n"] == (n_eval if row["family"] == "all" else n_eval // len(FAMILIES))
        assert row["strict_acc"] == pytest.approx(row["strict_correct"] / row["n"])
        assert row["strict_lo"] <= row["strict_acc"] <= row["strict_hi"]
        assert row["strict_acc"] <= row["lenient_acc"]  # an exact answer always grades correct
    # every response is kept, and the table is their tally
    lines = [json.loads(x) for x in (built / "eval" / "rl.jsonl").read_text().splitlines()]
    rl_all = df[(df["model"] == "RL") & (df["family"] == "all")].iloc[0]
    assert sum(x["strict"] for x in lines) == rl_all["strict_correct"]
    gains = pd.read_csv(built / "necessity.csv")
    assert list(gains.columns[:7]) == ["model", "family", "n", "acc", "gain", "gain_low", "gain_high"]
    assert set(gains["model"]) == {m.upper() for m in MODELS[1:]} and set(gains["score"]) == {"strict"}
    strict = df.set_index(["model", "family"])["strict_acc"]
    for _, g in gains.iterrows():  # gains are differences of the accuracies in results.csv
        assert g["gain"] == pytest.approx(strict[(g["model"], g["family"])] - strict[("IN", g["family"])])
        assert g["gain_low"] <= g["gain"] <= g["gain_high"]
        if g["model"] == "RL":
            assert pd.isna(g["gain_vs_rl"])
        else:
            assert g["gain_vs_rl"] == pytest.approx(strict[(g["model"], g["family"])] - strict[("RL", g["family"])])
    lenient = pd.read_csv(built / "necessity_lenient.csv")
    assert set(lenient["score"]) == {"lenient"} and len(lenient) == len(gains)


@pytest.mark.parametrize("name", MODELS)
def test_checkpoints_reload_offline(built, name):
    model = AutoModelForImageTextToText.from_pretrained(built / name, local_files_only=True)
    proc = load_processor(built / name)
    assert model.config.model_type == "qwen2_5_vl" and model.config.text_config.num_hidden_layers == 6
    assert proc.tokenizer.convert_tokens_to_ids("<|image_pad|>") == model.config.image_token_id
    with Checkpoint(built / name) as c:
        assert c.adapter.n_llm_layers == 6


@pytest.mark.parametrize("region", ["early", "mid", "late"])
def test_frozen_blocks_bit_identical_on_disk(built, region):
    check = verify_frozen(str(built / "in"), str(built / f"rl-frozen-{region}"), f"vision,{region}")
    assert check.ok and check.frozen_identical
    record = json.loads((built / "build.json").read_text())["rl_runs"][f"rl-frozen-{region}"]
    assert record["freeze_verified"]["ok"]
    assert record["freeze"] == f"vision,{region}"
    # the vision tower is never trained, RL included
    assert verify_frozen(str(built / "in"), str(built / "rl"), "vision").ok


def test_build_is_bit_reproducible(built, tmp_path):
    again = build_miniworld(tmp_path / "again", BuildConfig.preset(fast=True, seed=0))
    for name in MODELS:
        assert (again.out / name / "model.safetensors").read_bytes() == \
            (built / name / "model.safetensors").read_bytes(), name
    assert (again.out / "results.csv").read_bytes() == (built / "results.csv").read_bytes()
    assert (again.out / "tasks" / "test.jsonl").read_bytes() == (built / "tasks" / "test.jsonl").read_bytes()


def test_existing_output_and_bad_config_fail_cleanly(built, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["miniworld", "build", str(built), "--fast"])
    assert exc.value.code == 2 and "already exists" in capsys.readouterr().err
    with pytest.raises(FrankenlabError, match="n_eval"):
        BuildConfig.preset(n_eval=5000)
    with pytest.raises(FrankenlabError, match="frozen_regions"):
        BuildConfig.preset(frozen_regions=("top",))


def test_shortcut_answer_is_the_perceived_value():
    from frankenlab.miniworld import make_split

    for it in make_split(40, 0, ["count_arith", "digit_arith"]):
        seen = int(perceived_value(it))
        if it.family == "digit_arith":
            assert seen == it.meta["scene"].digits[0].value
        assert 0 <= seen <= 9
    with pytest.raises(FrankenlabError):
        perceived_value(make_split(1, 0, ["count"])[0])
