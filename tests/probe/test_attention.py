"""Attention shares: rows sum to 1, equal eager `output_attentions`, and the IN/RL run is paired correctly."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from frankenlab.probe.attention import AttentionProbeSettings, generate_ids, run_attention_probe, vision_shares
from frankenlab.probe.hooks import record_attention
from frankenlab.runtime.generate import Prompt
from frankenlab.testing import tiny_image
from tests.probe.conftest import no_hooks

PROMPT = "How many shapes are there?"


def _eager_attentions(tiny_eager, inputs):
    with torch.inference_mode():
        return tiny_eager.model(**inputs, use_cache=False, output_attentions=True).attentions


def test_recorded_rows_match_eager_attention_weights(qwen, qwen_eager):
    """sdpa model + recording vs the eager model's own attention maps (same weights), batch of 1."""
    image = tiny_image(2, (84, 84))
    inputs = qwen.inputs(PROMPT, image)
    ids = inputs["input_ids"][0]
    img = ids == qwen.model.config.image_token_id
    start, end = qwen.model.config.vision_start_token_id, qwen.model.config.vision_end_token_id
    markers = img | (ids == start) | (ids == end)
    qpos = torch.tensor([[3, 20, ids.numel() - 1]])
    with torch.inference_mode(), record_attention(qwen.model, qwen.adapter, qpos,
                                                  torch.stack([img, markers], -1)[None]) as rec:
        qwen.model(**inputs, use_cache=False)
    attn = _eager_attentions(qwen_eager, inputs)
    assert sorted(rec.mass) == [0, 1, 2, 3]
    for layer, a in enumerate(attn):
        rows = a[0][:, qpos[0]]  # [heads, Q, keys]
        mass = rec.mass[layer][0]  # [heads, Q, 3]
        torch.testing.assert_close(mass[..., 0], rows[..., img].sum(-1), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mass[..., 1], rows[..., markers].sum(-1), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mass[..., 2], torch.ones_like(mass[..., 2]), rtol=0, atol=1e-5)  # all keys = 1
    assert (rec.mass[0][0, :, 0, 0] == 0).all()  # position 3 precedes the image: causal, no mass on it
    assert no_hooks(qwen.model)


def test_vision_shares_over_a_response_match_eager(qwen, qwen_eager):
    image = tiny_image(2, (84, 84))
    prompt = Prompt(PROMPT, image)
    response = qwen.processor.tokenizer("3 shapes", add_special_tokens=False)["input_ids"]
    got = vision_shares(qwen.model, qwen.processor, qwen.adapter, prompt, response)
    inputs = qwen.inputs(PROMPT, image)
    P = inputs["input_ids"].shape[1]
    ids = torch.cat([inputs["input_ids"], torch.tensor([response])], 1)
    full = {**inputs, "input_ids": ids, "attention_mask": torch.ones_like(ids),
            "mm_token_type_ids": torch.cat([inputs["mm_token_type_ids"], torch.zeros(1, len(response),
                                                                                     dtype=torch.long)], 1)}
    img = ids[0] == qwen.model.config.image_token_id
    rows = torch.arange(P - 1, P - 1 + len(response))
    want = np.stack([a[0][:, rows][..., img].sum(-1).mean(-1).numpy() for a in _eager_attentions(qwen_eager, full)])
    np.testing.assert_allclose(got["image"], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["total"], 1.0, atol=1e-5)
    assert (got["image_markers"] >= got["image"] - 1e-7).all()
    assert got["image"].shape == (4, qwen.model.config.text_config.num_attention_heads)


def test_record_under_padding_uses_the_models_mask(qwen, qwen_eager):
    """Two left-padded rows: the recorded rows ignore padding exactly as eager attention does."""
    from frankenlab.runtime.generate import encode, to_model

    prompts = [Prompt(PROMPT, tiny_image(0, (84, 84))), Prompt("Count the red circles in this picture now.",
                                                                 tiny_image(1, (84, 84)))]
    inputs = to_model(qwen.model, encode(qwen.processor, prompts))
    assert (inputs["attention_mask"] == 0).any()
    ids = inputs["input_ids"]
    img = (ids == qwen.model.config.image_token_id)[..., None]
    L = ids.shape[1]
    qpos = torch.tensor([[L - 1, L - 2], [L - 1, L - 3]])
    with torch.inference_mode(), record_attention(qwen.model, qwen.adapter, qpos, img, layers=[1]) as rec:
        qwen.model(**inputs, use_cache=False)
    assert sorted(rec.mass) == [1]
    a = _eager_attentions(qwen_eager, inputs)[1]
    for b in range(2):
        want = a[b][:, qpos[b]][..., img[b, :, 0]].sum(-1)
        torch.testing.assert_close(rec.mass[1][b][..., 0], want, rtol=1e-5, atol=1e-6)


def test_generate_ids_stop_at_the_first_stop_token(qwen):
    ids = generate_ids(qwen.model, qwen.processor, [Prompt(PROMPT, tiny_image(0, (84, 84)))] * 2, 5)
    assert ids[0] == ids[1] and 1 <= len(ids[0]) <= 5


def test_run_attention_probe_pairs_in_and_rl(qwen, qwen_rl, tmp_path):
    from frankenlab.miniworld.probe_pairs import write_probe_pairs

    pairs = write_probe_pairs(tmp_path / "pairs", n_per_task=1, seed=0)
    out = tmp_path / "out"
    s = AttentionProbeSettings(max_new_tokens=3, n_boot=200)
    res = run_attention_probe(qwen.probe_model("IN"), qwen_rl.probe_model("RL"), out, s, pairs=pairs)
    layers = pd.read_csv(out / "attention_layers.csv")
    heads = pd.read_csv(out / "attention_heads.csv")
    assert list(layers.columns[:4]) == ["model", "mode", "layer", "unified_layer"]
    assert set(layers["model"]) == {"IN", "RL"} and set(layers["mode"]) == {"shared", "own"}
    assert len(layers) == 2 * 2 * 4 and len(heads) == 2 * 2 * 4 * 4
    assert (layers["n"] == 4).all()
    assert layers["vision_share"].between(0, 1).all()
    assert (layers["vision_share_markers"] >= layers["vision_share"] - 1e-9).all()
    # the per-layer share is the mean over heads
    for (model, mode, layer), g in heads.groupby(["model", "mode", "layer"]):
        row = layers[(layers["model"] == model) & (layers["mode"] == mode) & (layers["layer"] == layer)]
        assert row["vision_share"].item() == pytest.approx(g["vision_share"].mean(), abs=1e-9)
    diff = res.diff
    for mode, g in diff.groupby("mode"):
        for _, r in g.iterrows():
            a = layers[(layers["model"] == "RL") & (layers["mode"] == mode) & (layers["layer"] == r["layer"])]
            b = layers[(layers["model"] == "IN") & (layers["mode"] == mode) & (layers["layer"] == r["layer"])]
            assert r["diff"] == pytest.approx(a["vision_share"].item() - b["vision_share"].item(), abs=1e-9)
    items = [json.loads(x) for x in (out / "attention_items.jsonl").read_text().splitlines()]
    assert len(items) == 8 and all(r["status"] == "ok" for r in items)
    shared = {(r["model"], r["id"]): r["shared"]["ids"] for r in items}
    assert all(shared[("IN", i)] == shared[("RL", i)] for _, i in shared)  # identical tokens for both models
    manifest = json.loads((out / "manifest.json").read_text())
    assert "excluded" in manifest["vision_share"] and manifest["max_mass_error"] < 1e-5
    assert {"attention_layers.png", "attention_diff.png"} <= set(manifest["plots"])


def test_same_model_as_in_and_rl_gives_zero_difference(qwen, tmp_path):
    from frankenlab.miniworld.probe_pairs import write_probe_pairs

    pairs = write_probe_pairs(tmp_path / "pairs", n_per_task=2, seed=1)
    res = run_attention_probe(qwen.probe_model("IN"), qwen.probe_model("RL"), tmp_path / "o",
                              AttentionProbeSettings(max_new_tokens=2, n_boot=50, shared_response="IN"),
                              pairs=pairs, limit=1, plots=False)
    assert np.allclose(res.diff["diff"], 0.0, atol=1e-7)
    assert (res.diff["n"] == 4).all()  # --limit is per task: one pair of each of the four tasks


def test_text_items_fail_visibly(qwen, qwen_rl, tmp_path):
    tasks = tmp_path / "t.jsonl"
    tasks.write_text(json.dumps({"id": "x", "question": "2+2?", "answer": "4"}) + "\n")
    res = run_attention_probe(qwen.probe_model("IN"), qwen_rl.probe_model("RL"), tmp_path / "o",
                              AttentionProbeSettings(max_new_tokens=2), tasks=[str(tasks)], plots=False)
    assert len(res.failed) == 2 and "no image" in res.failed[0]["error"]
    assert res.layers.empty
