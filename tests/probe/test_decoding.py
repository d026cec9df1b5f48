"""Probes decode as eval does (checkpoint generation_config neutralised, recorded), stop degenerate rows early,
check the visual grid, and report paired ablation statistics."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from frankenlab.probe.ablate import (
    AblationSettings,
    DegenerateRepetition,
    _generate_rows,
    ablate_items,
    ablation_table,
    run_ablation,
)
from frankenlab.probe.attention import generate_ids
from frankenlab.probe.kv_swap import VisionProbeSettings, swap_pair
from frankenlab.probe.run import ProbeModel
from frankenlab.probe.vision import vision_table
from frankenlab.runtime.generate import GenerationSettings, HFBackend, Prompt, encode, to_model
from frankenlab.stats import paired_bootstrap_diff, wilson_interval
from frankenlab.tasks import TaskItem
from frankenlab.testing import build_tiny_model, tiny_image
from tests.probe.conftest import Tiny

PROMPT = "How many shapes are there?"


@pytest.fixture
def polluted(qwen):
    """The `qwen` weights with a generation_config that changes greedy answers: a penalty, a suppressed first
    token and an odd eos (the clean answer's second token)."""
    model = build_tiny_model("qwen2_5_vl", seed=0, attn_implementation="sdpa")
    inputs = qwen.inputs(PROMPT, tiny_image(0, (84, 84)))
    kw = HFBackend(qwen.model, qwen.processor, settings=GenerationSettings(max_new_tokens=8)).generate_kwargs()
    with torch.inference_mode():
        clean = qwen.model.generate(**inputs, **kw)[0, inputs["input_ids"].shape[1]:]
    gc = model.generation_config
    gc.repetition_penalty = 3.0
    gc.no_repeat_ngram_size = 1
    gc.begin_suppress_tokens = [int(clean[0])]
    gc.eos_token_id = [int(clean[1])]
    P = inputs["input_ids"].shape[1]
    with torch.inference_mode():  # preconditions: applied, this config changes the answer, and its eos ends it
        dirty = model.generate(**inputs, **kw)[0, P:]
        plain = model.generate(**inputs, max_new_tokens=8, begin_suppress_tokens=None)[0, P:]
    assert not torch.equal(dirty, clean)
    assert plain.tolist()[:2] == clean.tolist()[:2] and len(plain) == 2  # stopped at the checkpoint's eos
    return Tiny(model, qwen.processor, qwen.adapter)


def test_probe_answers_ignore_the_checkpoint_generation_config(qwen, polluted):
    images = (tiny_image(0, (84, 84)), tiny_image(1, (84, 84)))
    settings = VisionProbeSettings(max_new_tokens=8, layers=(0, 2))
    want = swap_pair(qwen.model, qwen.processor, qwen.adapter, *images, PROMPT, "3", "5", settings)
    got = swap_pair(polluted.model, polluted.processor, polluted.adapter, *images, PROMPT, "3", "5", settings)
    assert got.answers == want.answers
    items = [TaskItem(id="a", task="math", question="What is 2 plus 2?", answer="4"),
             TaskItem(id="b", task="math", question="What is 3 times 3?", answer="9")]
    s = AblationSettings(max_new_tokens=8, batch_size=4)
    clean = ablate_items(qwen.model, qwen.processor, qwen.adapter, items, [-1, 1], s)
    dirty = ablate_items(polluted.model, polluted.processor, polluted.adapter, items, [-1, 1], s)
    assert [r["responses"] for r in dirty] == [r["responses"] for r in clean]
    prompts = [Prompt(PROMPT, images[0]), Prompt("What colour is it?", images[1])]
    assert generate_ids(polluted.model, polluted.processor, prompts, 8) == generate_ids(
        qwen.model, qwen.processor, prompts, 8)
    assert polluted.model.generation_config.repetition_penalty == 3.0  # restored after every probe


def test_manifest_records_the_decoding(polluted, tmp_path):
    tasks = tmp_path / "math.jsonl"
    tasks.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What is {i} plus 1?", "answer": str(i + 1)})
                             + "\n" for i in range(2)))
    pm = ProbeModel(polluted.model, polluted.processor, polluted.adapter, "fp-polluted", "polluted")
    run_ablation(pm, [str(tasks)], tmp_path / "a", AblationSettings(max_new_tokens=3, layers=(1,)), plots=False)
    dec = json.loads((tmp_path / "a" / "manifest.json").read_text())["decoding"]
    assert dec["greedy"] is True and dec["max_new_tokens"] == {"reasoning": 3}
    assert dec["checkpoint_generation_config"]["repetition_penalty"] == 3.0
    assert "repetition_penalty" not in dec["generation_config"]
    assert "no_repeat_ngram_size" not in dec["generation_config"]
    assert dec["checkpoint_generation_config_applied"] is False
    assert polluted.model.generation_config.eos_token_id[0] not in dec["generate_kwargs"]["eos_token_id"]
    items = [json.loads(x) for x in (tmp_path / "a" / "ablation_items.jsonl").read_text().splitlines()]
    assert {(r["kind"], r["max_new_tokens"]) for r in items} == {("reasoning", 3)}


def test_per_kind_lengths_when_none_is_given(qwen, tmp_path):
    """A perception task file gets the perception length: its items record kind and limit."""
    tasks = tmp_path / "counting.jsonl"
    tasks.write_text(json.dumps({"id": "c0", "question": "How many?", "answer": "2"}) + "\n")
    res = run_ablation(qwen.probe_model(), [str(tasks)], tmp_path / "a", AblationSettings(layers=(0,)), plots=False)
    assert {(r["kind"], r["max_new_tokens"]) for r in res.items} == {("perception", 256)}
    assert res.manifest["decoding"]["max_new_tokens"] == {"perception": 256}


# -- degenerate repetition -------------------------------------------------------------------------------------
def test_degenerate_criterion_per_row():
    P, L, stop, pad = 2, 60, 9, 0
    rows = [
        [5] * L,  # one token forever
        [5] * 15 + list(range(10, 55)),  # 15 repeats only, then varied
        [1, 2] * (L // 2),  # a 2-gram
        [stop] + [pad] * (L - 1),  # ended on a stop token; its padding must not count
        [3, 4, 6] * (L // 3),  # a 3-gram
        [7, 8, 11, 12, 13] * (L // 5),  # a 5-gram: longer than MAX_PERIOD
    ]
    ids = torch.tensor([[100, 101] + r for r in rows])
    crit = DegenerateRepetition(P, 16, [stop])
    first = {}
    for t in range(1, L + 1):
        done = crit(ids[:, :P + t], None)
        for r in range(len(rows)):
            if bool(done[r]) and r not in first:
                first[r] = t
    assert crit.fired.tolist() == [True, False, True, False, True, False]
    assert first == {0: 16, 2: 32, 4: 48}  # as soon as the pattern has repeated 16 times


def _force_row(model, row: int, token: int, rows_in_batch: int | None = None):
    """A hook on the output head that makes batch row `row` always pick `token` (a row stuck in a loop)."""
    def hook(_m, _args, out):
        if rows_in_batch is not None and out.shape[0] != rows_in_batch:
            return out
        out = out.clone()
        out[row] = -1e4
        out[row, ..., token] = 1e4
        return out

    return model.lm_head.register_forward_hook(hook)


def test_stuck_rows_stop_and_the_others_are_unchanged(qwen):
    seven = qwen.processor.tokenizer.convert_tokens_to_ids("7")
    prompts = [Prompt("What is 2 plus 2?"), Prompt("What is 3 times 3?"),
               Prompt(PROMPT, tiny_image(5, (84, 84)))]
    kw = HFBackend(qwen.model, qwen.processor, settings=GenerationSettings(max_new_tokens=40)).generate_kwargs()
    handle = _force_row(qwen.model, 1, seven)
    try:
        stopped, fired = _generate_rows(qwen.model, qwen.processor, prompts, kw, AblationSettings(stop_degenerate=16))
        free, never = _generate_rows(qwen.model, qwen.processor, prompts, kw, AblationSettings(stop_degenerate=None))
    finally:
        handle.remove()
    assert never == [False, False, False]
    assert free[1] == "7" * 40 and stopped[1] == "7" * 16 and fired[1]
    assert not all(fired[r] for r in (0, 2))  # precondition: some free row is not degenerate
    for r in (0, 2):
        assert stopped[r] == free[r] if not fired[r] else free[r].startswith(stopped[r])


def test_ablation_records_and_counts_degenerate_stops(qwen):
    seven = qwen.processor.tokenizer.convert_tokens_to_ids("7")
    items = [TaskItem(id="a", task="t", question="What is 2 plus 2?", answer="4"),
             TaskItem(id="b", task="t", question="What is 3 times 3?", answer="9")]
    s = AblationSettings(max_new_tokens=24, batch_size=4)
    handle = _force_row(qwen.model, 1, seven, rows_in_batch=4)  # row 1 = item a with layer 1 skipped
    try:
        res = ablate_items(qwen.model, qwen.processor, qwen.adapter, items, [-1, 1], s)
    finally:
        handle.remove()
    assert res[0]["stopped_degenerate"]["1"] is True and res[0]["responses"]["1"] == "7" * 16
    records = [{"key": it.key, "task": it.task, "status": "ok", **r} for it, r in zip(items, res)]
    table = ablation_table(records, qwen.adapter, [-1, 1], s)
    counts = dict(zip(table["layer"], table["n_stopped_degenerate"]))
    assert counts[1] == 1 + int(res[1]["stopped_degenerate"]["1"])
    assert counts[-1] == sum(int(r["stopped_degenerate"]["-1"]) for r in res)


# -- paired ablation statistics ----------------------------------------------------------------------------------
def test_ablation_table_paired_drop_and_mcnemar(qwen):
    base = [1, 1, 1, 1, 1, 1, 0, 1, 0, 0]
    skip = [0, 0, 0, 0, 1, 1, 1, 1, 0, 0]  # 4 lost, 1 gained
    records = [{"key": f"t/{i}", "task": "t", "status": "ok", "correct": {"-1": bool(b), "0": bool(k)},
                "gold_logprob": {"-1": -1.0, "0": -2.0}, "stopped_degenerate": {"-1": False, "0": i == 0}}
               for i, (b, k) in enumerate(zip(base, skip))]
    s = AblationSettings(n_boot=500, seed=3)
    table = ablation_table(records, qwen.adapter, [-1, 0], s).set_index("layer")
    row = table.loc[0]
    assert row["accuracy_drop"] == pytest.approx(0.7 - 0.4)
    assert row["n_discordant"] == 5
    assert row["p_mcnemar"] == pytest.approx(2 * (math.comb(5, 0) + math.comb(5, 1)) / 2 ** 5)
    _, lo, hi, _ = paired_bootstrap_diff([float(x) for x in base], [float(x) for x in skip], n_boot=500, seed=3)
    assert (row["accuracy_drop_low"], row["accuracy_drop_high"]) == pytest.approx((lo, hi))
    assert lo < 0.3 < hi and row["n_stopped_degenerate"] == 1
    b = table.loc[-1]
    assert (b["accuracy_drop"], b["accuracy_drop_low"], b["accuracy_drop_high"], b["p_mcnemar"],
            b["n_discordant"]) == (0.0, 0.0, 0.0, 1.0, 0)
    for col in ("accuracy", "accuracy_low", "accuracy_high", "gold_logprob", "accuracy_drop"):  # interface kept
        assert col in table.columns


# -- visual grid -----------------------------------------------------------------------------------------------
def test_same_token_count_on_another_grid_is_resized(qwen):
    target, source = tiny_image(3, (84, 84)), tiny_image(4, (28, 252))
    t_in = to_model(qwen.model, encode(qwen.processor, [Prompt(PROMPT, target)]))
    s_in = to_model(qwen.model, encode(qwen.processor, [Prompt(PROMPT, source)]))
    assert t_in["input_ids"].shape == s_in["input_ids"].shape  # precondition: same tokens, other grid
    assert not torch.equal(t_in["image_grid_thw"], s_in["image_grid_thw"])
    settings = VisionProbeSettings(max_new_tokens=4, layers=(0, 2))
    res = swap_pair(qwen.model, qwen.processor, qwen.adapter, target, source, PROMPT, "2", "4", settings)
    assert res.resized
    manual = swap_pair(qwen.model, qwen.processor, qwen.adapter, target,
                       source.resize(target.size, Image.Resampling.BICUBIC), PROMPT, "2", "4", settings)
    assert not manual.resized
    assert res.answers == manual.answers
    for k, v in res.margins.items():
        assert v == pytest.approx(manual.margins[k], abs=1e-5)


# -- empty unswapped answers -------------------------------------------------------------------------------------
def test_empty_base_answers_are_left_out_of_change_rate(qwen):
    def rec(i, base, swapped, target="2", source="5"):
        return {"key": str(i), "id": str(i), "task": "counting", "status": "ok", "target_answer": target,
                "source_answer": source, "answers": {"base": base, "source": "5", "0": swapped},
                "margins": {"base": None, "0": None}}

    records = [rec(0, "", "5"), rec(1, "2", "2"), rec(2, "2", "5"), rec(3, "", "")]
    table = vision_table(records, qwen.adapter, VisionProbeSettings(layers=(0,)), 4)
    row = table[(table["task"] == "counting") & (table["layer"] == 0)].iloc[0]
    assert row["n"] == 4 and row["n_empty_base"] == 2
    assert row["change_rate"] == pytest.approx(1 / 2)  # items 1 and 2 only
    assert (row["change_low"], row["change_high"]) == pytest.approx(wilson_interval(1, 2))
    assert row["flip_rate"] == pytest.approx(2 / 4) and row["accuracy"] == pytest.approx(1 / 4)  # all items
