"""Layer skipping equals deleting the layer (logits and cached generation); scores and the ablation run."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import torch

from frankenlab.probe.ablate import AblationSettings, ablate_items, gold_logprobs, run_ablation
from frankenlab.probe.hooks import skip_layers
from frankenlab.probe.tasks import load_math_tasks
from frankenlab.runtime.generate import GenerationSettings, HFBackend, Prompt, encode, to_model
from frankenlab.tasks import TaskItem
from frankenlab.testing import build_tiny_model, tiny_image, tiny_processor
from tests.probe.conftest import logits, no_hooks


def _deleted(tiny, i):
    """The same model with decoder layer i removed from its layer list (later layers renumbered)."""
    m = copy.deepcopy(tiny.model)
    layers = tiny.adapter.decoder_layers(m)
    del layers[i]
    for j, layer in enumerate(layers):
        layer.self_attn.layer_idx = j
    cfg = m.config.text_config if hasattr(m.config, "text_config") else m.config
    cfg.num_hidden_layers -= 1
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = cfg.layer_types[:i] + cfg.layer_types[i + 1:]
    return m


def _generate(model, processor, prompts, n=8):
    backend = HFBackend(model, processor, settings=GenerationSettings(max_new_tokens=n, batch_size=len(prompts)))
    kw = backend.generate_kwargs()
    kw.update(eos_token_id=[], min_new_tokens=n)
    inputs = to_model(model, encode(processor, prompts))
    with torch.inference_mode():
        return model.generate(**inputs, **kw)


@pytest.mark.parametrize("i", [0, 2])
def test_skipped_layer_equals_deleted_layer_with_cache(qwen, i):
    prompts = [Prompt("How many shapes are there?", tiny_image(5, (84, 84))), Prompt("Add 2 and 3.")]
    gone = _deleted(qwen, i)
    inputs = qwen.inputs(prompts[0].text, prompts[0].image)
    with skip_layers(qwen.model, qwen.adapter, [i]):
        skipped = logits(qwen.model, inputs)
        seq = _generate(qwen.model, qwen.processor, prompts)  # batched, left-padded, with a cache
    torch.testing.assert_close(skipped, logits(gone, inputs), rtol=1e-5, atol=1e-5)
    assert torch.equal(seq, _generate(gone, qwen.processor, prompts))
    assert not torch.equal(seq, _generate(qwen.model, qwen.processor, prompts))
    assert no_hooks(qwen.model)


def test_skipped_layer_equals_deleted_layer_text_model():
    from frankenlab.arch import adapter_for
    from tests.probe.conftest import Tiny

    model = build_tiny_model("llama", attn_implementation="sdpa")
    tiny = Tiny(model, tiny_processor("llama"), adapter_for(model.config.to_dict()))
    prompts = [Prompt("Add 2 and 3."), Prompt("What is 7 times 6?")]
    with skip_layers(tiny.model, tiny.adapter, [1]):
        seq = _generate(tiny.model, tiny.processor, prompts)
    assert torch.equal(seq, _generate(_deleted(tiny, 1), tiny.processor, prompts))


def test_gold_logprob_matches_a_plain_forward(qwen):
    """Variant −1 = log-softmax of an ordinary forward on prompt + gold; variant 1 = the deleted model's."""
    settings = AblationSettings(batch_size=2)
    prompt = Prompt("What is 4 plus 5?")
    scores = gold_logprobs(qwen.model, qwen.processor, qwen.adapter, prompt, "9 apples", [-1, 1, 3], settings)
    gold = qwen.processor.tokenizer("9 apples", add_special_tokens=False)["input_ids"]
    inputs = qwen.inputs(prompt.text)
    ids = torch.cat([inputs["input_ids"], torch.tensor([gold])], 1)
    full = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": torch.zeros_like(ids)}

    def manual(model):
        lp = torch.log_softmax(logits(model, full)[0, -len(gold) - 1:-1].double(), -1)
        return lp[torch.arange(len(gold)), torch.tensor(gold)].mean().item()

    assert scores[0] == pytest.approx(manual(qwen.model), abs=1e-4)
    assert scores[1] == pytest.approx(manual(_deleted(qwen, 1)), abs=1e-4)
    assert scores[2] == pytest.approx(manual(_deleted(qwen, 3)), abs=1e-4)


def test_batched_items_equal_one_item_at_a_time(qwen):
    items = [TaskItem(id="a", task="t", question="What is 2 plus 2?", answer="4"),
             TaskItem(id="b", task="t", question="What is 3 times 3?", answer="9"),
             TaskItem(id="c", task="t", question="What is 10 minus 7?", answer="3")]
    s = AblationSettings(max_new_tokens=5, batch_size=7)
    batched = ablate_items(qwen.model, qwen.processor, qwen.adapter, items, [-1, 0, 2], s)
    single = [ablate_items(qwen.model, qwen.processor, qwen.adapter, [it], [-1, 0, 2],
                           AblationSettings(max_new_tokens=5, batch_size=1))[0] for it in items]
    for b, o in zip(batched, single):
        assert b["responses"] == o["responses"]
        for k in b["gold_logprob"]:
            assert b["gold_logprob"][k] == pytest.approx(o["gold_logprob"][k], abs=1e-4)


def test_run_ablation_tables_failures_and_resume(qwen, tmp_path):
    tasks = tmp_path / "math.jsonl"
    rows = [{"id": f"q{i}", "question": f"What is {i} plus 1?", "answer": str(i + 1)} for i in range(3)]
    rows.append({"id": "gsm", "question": "Tom has 3 apples and buys 4.", "answer": "He has 3 + 4 = 7.\n#### 7"})
    rows.append({"id": "broken", "question": "Look.", "answer": "1", "image": "missing.png"})
    tasks.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(Exception, match="not found"):  # a missing image is a bad input, refused up front
        load_math_tasks([str(tasks)])
    tasks.write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    items, _ = load_math_tasks([str(tasks)])
    assert items[3].answer == "7"
    out = tmp_path / "out"
    settings = AblationSettings(max_new_tokens=3, batch_size=10, layers=(1, 3))
    calls = []
    res = run_ablation(qwen.probe_model(), [str(tasks)], out, settings, progress=lambda d, t: calls.append((d, t)))
    table = pd.read_csv(out / "ablation_layers.csv")
    assert list(table.columns[:4]) == ["task", "layer", "unified_layer", "n"]
    assert table["layer"].tolist() == [-1, 1, 3]
    assert table["unified_layer"].tolist()[1:] == [2, 4]
    assert (table["n"] == 4).all() and (table["n_failed"] == 0).all()
    assert table["accuracy"].between(0, 1).all() and table["gold_logprob"].lt(0).all()
    lines = (out / "ablation_items.jsonl").read_text().splitlines()
    assert len(lines) == 4 and calls[-1] == (4, 4)
    assert json.loads((out / "manifest.json").read_text())["n_failed"] == 0
    assert (out / "plots" / "ablation_accuracy.png").exists()
    calls.clear()
    again = run_ablation(qwen.probe_model(), [str(tasks)], out, settings, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(4, 4)]  # everything resumed, nothing recomputed
    assert (out / "ablation_items.jsonl").read_text().splitlines() == lines
    pd.testing.assert_frame_equal(again.layers, res.layers)
    with pytest.raises(Exception, match="other inputs or settings"):
        run_ablation(qwen.probe_model(), [str(tasks)], out, AblationSettings(max_new_tokens=4, layers=(1,)))


def test_failed_items_are_counted_not_dropped(qwen, tmp_path, monkeypatch):
    import frankenlab.probe.ablate as ab

    real = ab.ablate_items

    def flaky(model, processor, adapter, items, variants, settings):
        if any(it.id == "q1" for it in items):
            raise RuntimeError("out of memory (simulated)")
        return real(model, processor, adapter, items, variants, settings)

    monkeypatch.setattr(ab, "ablate_items", flaky)
    tasks = tmp_path / "m.jsonl"
    tasks.write_text("".join(json.dumps({"id": f"q{i}", "question": f"{i}+1?", "answer": str(i + 1)}) + "\n"
                             for i in range(3)))
    res = run_ablation(qwen.probe_model(), [str(tasks)], tmp_path / "o",
                       AblationSettings(max_new_tokens=2, layers=(0,), generate=False, batch_size=6), plots=False)
    assert [f["id"] for f in res.failed] == ["q1"]
    assert (res.layers["n"] == 2).all() and (res.layers["n_failed"] == 1).all()
    assert res.layers["accuracy"].isna().all()  # score-only run
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["failed"][0]["id"] == "m/q1"
