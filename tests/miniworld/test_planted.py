"""`miniworld build --fast` writes planted-truth pairs whose truth holds on the saved files."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("trl", reason="the mini-world build trains RL with TRL: pip install 'frankenlab[rl]'")

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402

from frankenlab.cli.app import main  # noqa: E402
from frankenlab.freeze import verify_frozen  # noqa: E402
from frankenlab.miniworld.build import PLANTED, RESULT_COLUMNS, BuildConfig  # noqa: E402
from frankenlab.planted import read_planted  # noqa: E402

DECODER = re.compile(r"^model\.layers\.(\d+)\.")  # hub layout of the saved mini-world checkpoints
THIRDS = {"early": {0, 1}, "mid": {2, 3}, "late": {4, 5}}


def _tensors(path):
    with safe_open(str(path / "model.safetensors"), "pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}


def _layer(name):
    m = DECODER.match(name)
    return None if m is None else int(m.group(1))


def test_planted_dirs_are_complete_checkpoints(fast_world):
    assert {p.name for p in (fast_world / "planted").iterdir()} >= {*PLANTED, "results.csv"}
    for name in PLANTED:
        files = {p.name for p in (fast_world / "planted" / name).iterdir()}
        assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                "processor_config.json", "chat_template.jinja", "planted.json"} <= files, name
    listing = json.loads((fast_world / "build.json").read_text())["planted"]
    assert list(listing) == list(PLANTED)
    for name, entry in listing.items():
        assert entry["path"] == f"planted/{name}"
        record = read_planted(fast_world / entry["path"])
        assert record["kind"] == entry["kind"] and record["fingerprint"] == entry["fingerprint"]
        assert record["source"] == "../../in" and (fast_world / entry["path"] / record["source"]).resolve() == \
            (fast_world / "in").resolve()
    assert listing["noise"]["scale"] == BuildConfig.preset(fast=True).planted_scale
    assert listing["late-only"]["frozen"] == "vision,projector,early,mid"
    assert listing["early-only"]["frozen"] == "vision,projector,mid,late"
    df = pd.read_csv(fast_world / "planted" / "results.csv")
    assert list(df.columns[: len(RESULT_COLUMNS)]) == list(RESULT_COLUMNS)
    assert set(df["model"]) == {"PLANTED-NOISE", "PLANTED-LATE-ONLY", "PLANTED-EARLY-ONLY"}


def test_null_and_noise_truth(fast_world):
    root = fast_world / "planted"
    for f in (fast_world / "in").iterdir():
        assert (root / "null" / f.name).read_bytes() == f.read_bytes(), f.name
    a, b = _tensors(fast_world / "in"), _tensors(root / "noise")
    eps = read_planted(root / "noise")["scale"]
    for name, before in a.items():
        if _layer(name) is not None and before.ndim == 2:
            x, y = before.double().numpy(), b[name].double().numpy()
            assert np.linalg.norm(y - x) / np.linalg.norm(x) == pytest.approx(eps, rel=0.06), name
        else:
            assert torch.equal(b[name], before), name


@pytest.mark.parametrize(("name", "region"), [("late-only", "late"), ("early-only", "early")])
def test_trained_pairs_change_only_their_third(fast_world, name, region):
    a, b = _tensors(fast_world / "in"), _tensors(fast_world / "planted" / name)
    changed = {n for n in a if not torch.equal(a[n], b[n])}
    assert changed, f"{name}: GRPO changed nothing"
    assert {_layer(n) for n in changed} <= THIRDS[region]  # embeddings, norm, lm_head, vision, projector: unchanged
    record = read_planted(fast_world / "planted" / name)
    assert record["kind"] == "trained" and record["regions"] == [region] and record["n_changed"] == len(changed)
    assert record["extra"]["freeze_verified"] and record["extra"]["rl_steps"] == BuildConfig.preset(fast=True) \
        .planted_rl_steps
    check = verify_frozen(str(fast_world / "in"), str(fast_world / "planted" / name), record["frozen"])
    assert check.ok and check.frozen_identical


def test_planted_pairs_feed_compare(fast_world, tmp_path):
    out = tmp_path / "cmp"
    with pytest.raises(SystemExit) as exc:
        main(["compare", "--in", str(fast_world / "in"), "--rl", str(fast_world / "planted" / "late-only"),
              "--out", str(out), "--svd", "none", "--no-plots", "--quiet"])
    assert exc.value.code == 0
    regions = pd.read_csv(out / "regions.csv").set_index("region")
    assert regions.loc["late", "fro_sum"] > 0
    assert (regions.loc[["vision", "projector", "early", "mid"], "fro_sum"] == 0).all()
