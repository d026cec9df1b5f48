"""Logit lens: last layer = real output, lens = norm+lm_head of output_hidden_states, a planted emergence
layer is found, emergence on hand-made ranks, CLI files for one model and a pair, resume and failures."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import torch

from frankenlab.arch import adapter_for
from frankenlab.probe.lens import (
    LensSettings,
    capture_residual,
    emergence_layer,
    final_norm,
    gold_token_id,
    lens_items,
    lens_logprobs,
    lens_tables,
    run_lens,
)
from frankenlab.runtime.generate import Prompt
from frankenlab.stats import sign_flip_test
from frankenlab.tasks import TaskItem
from frankenlab.testing import build_tiny_model, tiny_image, tiny_processor
from tests.probe.conftest import Tiny, logits, no_hooks

torch.set_num_threads(1)


def test_emergence_layer_on_hand_made_ranks():
    def em(ranks):
        return emergence_layer([r == 0 for r in ranks])

    assert em([5, 3, 0, 0, 0]) == 2
    assert em([0, 0, 0]) == 0
    assert em([0, 2, 0, 1, 0]) == 4  # top-1 early but lost again: only the final run counts
    assert em([0, 0, 0, 1]) is None  # not top-1 at the last layer
    assert em([7]) is None and em([0]) == 0 and em([]) is None


@pytest.mark.parametrize("with_image", [False, True])
def test_last_layer_lens_equals_the_real_output(qwen, with_image):
    prompt = Prompt("How many shapes are there?", tiny_image(2, (56, 56)) if with_image else None)
    lens, real = lens_logprobs(qwen.model, qwen.processor, qwen.adapter, [prompt])
    reference = torch.log_softmax(logits(qwen.model, qwen.inputs(prompt.text, prompt.image))[0, -1].float(), -1)
    assert lens.shape == (1, qwen.adapter.n_llm_layers, reference.shape[-1])
    torch.testing.assert_close(lens[0, -1], reference, rtol=0, atol=1e-5)
    torch.testing.assert_close(real[0], reference, rtol=0, atol=1e-5)
    assert not torch.allclose(lens[0, 0], reference, atol=1e-3)  # an early layer is not the output
    assert no_hooks(qwen.model)


def test_lens_is_norm_and_head_of_output_hidden_states(llava):
    """Independent path: transformers' output_hidden_states (hidden_states[L + 1] = after layer L; the last
    entry is already final-normed by transformers, so only lm_head applies there)."""
    prompt = Prompt("What is 3 plus 4?", tiny_image(1, (56, 56)))
    lens, _ = lens_logprobs(llava.model, llava.processor, llava.adapter, [prompt])
    with torch.inference_mode():
        hs = llava.model(**llava.inputs(prompt.text, prompt.image), use_cache=False,
                         output_hidden_states=True).hidden_states
        norm, head = llava.model.model.language_model.norm, llava.model.lm_head
        n = llava.adapter.n_llm_layers
        for layer in range(n):
            h = hs[layer + 1][0, -1]
            want = torch.log_softmax(head(h if layer == n - 1 else norm(h)).float(), -1)
            torch.testing.assert_close(lens[0, layer], want, rtol=0, atol=1e-5)


def test_batched_prompts_equal_one_at_a_time(qwen):
    items = [TaskItem(id="a", task="t", question="What is 2 plus 2?", answer="4"),
             TaskItem(id="b", task="t", question="Add 10 and 27 please.", answer="37"),
             TaskItem(id="c", task="t", question="7 times 6?", answer="42")]
    batched = lens_items(qwen.model, qwen.processor, qwen.adapter, items, LensSettings())
    for it, b in zip(items, batched):
        one = lens_items(qwen.model, qwen.processor, qwen.adapter, [it], LensSettings())[0]
        assert b["gold_rank"] == one["gold_rank"] and b["emergence_layer"] == one["emergence_layer"]
        assert b["gold_logprob"] == pytest.approx(one["gold_logprob"], abs=1e-4)
    assert batched[2]["gold_token_id"] == qwen.processor.tokenizer("4", add_special_tokens=False)["input_ids"][0]
    assert max(b["last_layer_error"] for b in batched) < 1e-5
    lens, _ = lens_logprobs(qwen.model, qwen.processor, qwen.adapter, [Prompt(items[0].question)])
    g = batched[0]["gold_token_id"]
    order = lens[0].argsort(dim=-1, descending=True)  # [layers, vocab]
    assert batched[0]["gold_rank"] == [int((row == g).nonzero()) for row in order]
    assert batched[0]["gold_logprob"] == pytest.approx(lens[0, :, g].tolist(), abs=1e-4)


def _text_tiny(n_layers: int) -> Tiny:
    model = build_tiny_model("llama", attn_implementation="sdpa", n_llm_layers=n_layers)
    return Tiny(model, tiny_processor("llama"), adapter_for(model.config.to_dict()))


def test_planted_emergence_layer_is_found():
    """Layers >= K add nothing (o_proj, down_proj zeroed); layer K−1's MLP writes a large vector that makes a
    chosen token top-1. The lens must then be exactly the final output from layer K−1 on, and the emergence
    layer exactly K−1."""
    K, n = 3, 6
    tiny = _text_tiny(n)
    model, tok, layers = tiny.model, tiny.processor, tiny.adapter.decoder_layers(tiny.model)
    with torch.no_grad():
        for layer in layers[K:]:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    prompt = Prompt("What is 5 plus 6?")
    settings = LensSettings()

    # the untouched identity model: from layer K−1 on the lens is the output, so a final top-1 emerges <= K−1
    lens, real = lens_logprobs(model, tok, tiny.adapter, [prompt])
    for layer in range(K - 1, n):
        assert torch.equal(lens[0, layer], lens[0, -1])
    argmax = int(real[0].argmax())
    text = tok.decode([argmax])
    if gold_token_id(tok, text) == argmax:
        got = lens_items(model, tok, tiny.adapter, [TaskItem(id="x", task="t", question=prompt.text,
                                                             answer=text)], settings)[0]
        assert got["gold_rank"][-1] == 0 and got["emergence_layer"] <= K - 1

    # plant: the MLP input of layer K−1 at the last position, then down_proj := c · v ⊗ sign(input)
    seen = {}
    mlp = layers[K - 1].mlp
    handle = mlp.down_proj.register_forward_pre_hook(lambda _m, args: seen.__setitem__("a", args[0][0, -1].clone()))
    with capture_residual(model, tiny.adapter) as slots:
        lens_logprobs(model, tok, tiny.adapter, [prompt])
        before = slots[K - 2][0].clone()
    handle.remove()
    head, norm_w = model.get_output_embeddings().weight, final_norm(model, tiny.adapter).weight
    # a residual along u[g] gives token t the logit ∝ u[t]·u[g], which is largest for g = argmax |u|
    u = (head * norm_w).detach()
    rank_before = (lens[0, K - 2][None] > lens[0, K - 2][:, None]).sum(-1)
    ok = [t for t in range(len(tok)) if gold_token_id(tok, tok.decode([t])) == t and rank_before[t] > 0]
    g = max(ok, key=lambda t: float(u[t].norm()))
    a = seen["a"]
    scale = 1e3 * float(before.norm()) / (float(u[g].norm()) * float(a.abs().sum()))
    with torch.no_grad():
        mlp.down_proj.weight.copy_(scale * torch.outer(u[g], torch.sign(a)))
    item = TaskItem(id="planted", task="t", question=prompt.text, answer=tok.decode([g]))
    got = lens_items(model, tok, tiny.adapter, [item], settings)[0]
    assert got["gold_token_id"] == g
    assert got["gold_rank"][K - 2] > 0 and all(r == 0 for r in got["gold_rank"][K - 1:])
    assert got["emergence_layer"] == K - 1
    lens2, _ = lens_logprobs(model, tok, tiny.adapter, [prompt])
    for layer in range(K - 1, n):
        assert torch.equal(lens2[0, layer], lens2[0, -1])


def _tasks(tmp_path, n=3, image=True):
    rows = [{"id": f"q{i}", "question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(n)]
    if image:
        tiny_image(4, (56, 56)).save(tmp_path / "img.png")
        rows.append({"id": "img", "question": "How many shapes?", "answer": "3", "image": "img.png"})
    path = tmp_path / "lens_tasks.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_run_lens_resumes_and_counts_failures(qwen, tmp_path, monkeypatch):
    import frankenlab.probe.lens as lens_mod

    tasks = _tasks(tmp_path)
    real = lens_mod.lens_items
    seen: list[str] = []
    broken = {"q1"}

    def flaky(model, processor, adapter, items, settings):
        seen.extend(it.id for it in items)
        if any(it.id in broken for it in items):
            raise RuntimeError("out of memory (simulated)")
        return real(model, processor, adapter, items, settings)

    monkeypatch.setattr(lens_mod, "lens_items", flaky)
    out = tmp_path / "out"
    settings = LensSettings(batch_size=2, n_boot=50)
    res = run_lens([str(tasks)], out, settings, model=qwen.probe_model(), plots=False)
    assert res.manifest["n_failed"] == 1 and [f["key"] for f in res.failed] == ["tiny/lens_tasks/q1"]
    all_rows = res.layers[res.layers["task"] == "all"]
    assert (all_rows["n"] == 3).all() and (all_rows["n_failed"] == 1).all()
    assert set(res.items["item"]) == {"lens_tasks/q0", "lens_tasks/q2", "lens_tasks/img"}

    seen.clear()
    broken.clear()  # the fault is gone: the rerun retries the failed item
    calls = []
    res = run_lens([str(tasks)], out, settings, model=qwen.probe_model(), plots=False,
                   progress=lambda d, t: calls.append((d, t)))
    assert seen == ["q1"]  # only the failed item is retried ...
    assert res.manifest["n_failed"] == 0 and calls[-1] == (4, 4)
    seen.clear()
    lines = (out / "lens_items.jsonl").read_text()
    again = run_lens([str(tasks)], out, settings, model=qwen.probe_model(), plots=False)
    assert seen == [] and (out / "lens_items.jsonl").read_text() == lines  # ... and nothing once finished
    pd.testing.assert_frame_equal(again.layers, res.layers)
    with pytest.raises(Exception, match="other inputs or settings"):
        run_lens([str(tasks)], out, LensSettings(batch_size=2, n_boot=51), model=qwen.probe_model())


def _record(model, i, emerge, n_layers=4, task="t"):
    ranks = [3] * n_layers if emerge is None else [3] * emerge + [0] * (n_layers - emerge)
    return {"key": f"{model}/{task}/{i}", "model": model, "id": f"{task}/{i}", "task": task, "status": "ok",
            "gold_token_id": 7, "gold_token": "4", "gold_logprob": [-2.0 + 0.5 * (r == 0) for r in ranks],
            "gold_rank": ranks, "emergence_layer": emergence_layer([r == 0 for r in ranks])}


def test_tables_on_hand_made_records(qwen):
    """Pair statistics and per-layer shares against values worked out by hand."""
    e_in = [1, 2, None, 3, None, 0, 2, None]
    e_rl = [2, 2, 1, None, None, 3, 3, None]
    records = [_record("in", i, e) for i, e in enumerate(e_in)] + [_record("rl", i, e) for i, e in enumerate(e_rl)]
    records.append({"key": "rl/t/x", "model": "rl", "id": "t/x", "task": "t", "status": "failed", "error": "boom"})
    layers, items, pair = lens_tables(records, qwen.adapter, ["in", "rl"], LensSettings(n_boot=200))
    row = pair[pair["task"] == "all"].iloc[0]
    diffs = [1, 0, 3, 1]  # items 0, 1, 5, 6 emerge in both: RL − IN
    assert row["n"] == 4 and row["n_paired"] == 8
    assert row["diff"] == pytest.approx(sum(diffs) / 4)
    assert row["mean_in"] == pytest.approx((1 + 2 + 0 + 2) / 4) and row["mean_rl"] == pytest.approx(10 / 4)
    assert row["diff_low"] <= row["diff"] <= row["diff_high"]
    assert row["p"] == pytest.approx(sign_flip_test(diffs))
    assert (row["n_in_only"], row["n_rl_only"], row["n_neither"]) == (1, 1, 2)
    rl_all = layers[(layers["model"] == "rl") & (layers["task"] == "all")].set_index("layer")
    assert rl_all["top1_frac"].tolist() == pytest.approx([0 / 8, 1 / 8, 3 / 8, 5 / 8])
    assert rl_all["emerged_frac"].tolist() == pytest.approx([0 / 8, 1 / 8, 3 / 8, 5 / 8])
    assert (rl_all["n"] == 8).all() and (rl_all["n_failed"] == 1).all()
    assert rl_all.loc[3, "gold_logprob_mean"] == pytest.approx((5 * -1.5 + 3 * -2.0) / 8)
    got = items[items["model"] == "in"]["emergence_layer"].tolist()
    assert [None if pd.isna(x) else int(x) for x in got] == e_in


def test_run_lens_on_a_pair_of_models(qwen, qwen_rl, tmp_path):
    tasks = _tasks(tmp_path, n=3, image=False)
    res = run_lens([str(tasks)], tmp_path / "p", LensSettings(n_boot=50), in_model=qwen.probe_model("in"),
                   rl_model=qwen_rl.probe_model("rl"), plots=False)
    assert set(res.items["model"]) == {"in", "rl"} and len(res.items) == 6
    assert res.pair is not None and res.pair.iloc[-1]["n_paired"] == 3
    lp = res.layers.set_index(["model", "task", "layer"])["gold_logprob_mean"]
    assert lp[("in", "all", 3)] != pytest.approx(lp[("rl", "all", 3)])  # two different models were run


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    from frankenlab.testing import save_tiny_checkpoint

    root = tmp_path_factory.mktemp("lens_cli")
    return (save_tiny_checkpoint("qwen2_5_vl", root / "ckpt_a", seed=0),
            save_tiny_checkpoint("qwen2_5_vl", root / "ckpt_b", seed=1))


def _cli(capsys, *args):
    from frankenlab.cli.app import main

    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.err


def test_cli_one_model_and_pair_write_the_contract(ckpts, tmp_path, capsys):
    tasks = _tasks(tmp_path, n=2)
    one = tmp_path / "one"
    code, err = _cli(capsys, "probe", "lens", str(ckpts[0]), "--tasks", str(tasks), "--out", str(one),
                     "--threads", "1", "--batch-size", "2")
    assert code == 0 and "ckpt_a: gold top-1" in err
    layers = pd.read_csv(one / "lens_layers.csv")
    assert list(layers.columns[:9]) == ["model", "layer", "unified_layer", "n", "gold_logprob_mean",
                                        "gold_rank_median", "top1_frac", "top1_low", "top1_high"]
    assert set(layers["model"]) == {"ckpt_a"} and sorted(set(layers["layer"])) == [0, 1, 2, 3]
    assert (layers["unified_layer"] == layers["layer"] + 1).all()
    assert (layers.loc[layers["task"] == "all", "n"] == 3).all()
    assert ((layers["top1_low"] <= layers["top1_frac"]) & (layers["top1_frac"] <= layers["top1_high"])).all()
    items = pd.read_csv(one / "lens_items.csv")
    assert {"model", "item", "emergence_layer", "task", "final_top1"} <= set(items.columns) and len(items) == 3
    assert pd.read_parquet(one / "lens_layers.parquet").shape == layers.shape
    assert not (one / "lens_pair.csv").exists()
    manifest = json.loads((one / "manifest.json").read_text())
    assert manifest["n_failed"] == 0 and manifest["max_last_layer_error"] < 1e-5
    assert (one / "plots" / "lens_top1.png").exists() and (one / "plots" / "lens_logprob.png").exists()

    pair = tmp_path / "pair"
    code, err = _cli(capsys, "probe", "lens", "--in", str(ckpts[0]), "--rl", str(ckpts[1]), "--tasks", str(tasks),
                     "--out", str(pair), "--batch-size", "2", "--no-plots")
    assert code == 0 and "RL − IN emergence layer" in err
    layers = pd.read_csv(pair / "lens_layers.csv")
    assert set(layers["model"]) == {"in", "rl"}
    got = pd.read_csv(pair / "lens_pair.csv")
    for col in ("n", "diff", "diff_low", "diff_high", "p", "n_in_only", "n_rl_only"):
        assert col in got.columns
    assert got["task"].tolist() == ["lens_tasks", "all"]
    # the IN half of the pair is the same model as the one-model run: same numbers
    a = pd.read_csv(one / "lens_items.csv").drop(columns="model")
    b = pd.read_csv(pair / "lens_items.csv").query("model == 'in'").drop(columns="model").reset_index(drop=True)
    pd.testing.assert_frame_equal(a[["item", "emergence_layer", "final_rank"]], b[["item", "emergence_layer",
                                                                                    "final_rank"]])
    code, err = _cli(capsys, "probe", "lens", str(ckpts[0]), "--in", str(ckpts[0]), "--rl", str(ckpts[1]),
                     "--tasks", str(tasks), "--out", str(tmp_path / "bad"))
    assert code == 2 and err.startswith("error: ") and not (tmp_path / "bad").exists()


def test_final_norm_lookup_fails_clearly(qwen):
    class Bare(torch.nn.Module):
        pass

    adapter = copy.copy(qwen.adapter)
    adapter.final_norm_path = "nowhere.norm"
    with pytest.raises(Exception, match="no final norm"):
        final_norm(Bare(), adapter)
    assert final_norm(qwen.model, adapter) is qwen.model.model.language_model.norm  # the known-paths fallback
