"""`probe kl`: per-token KL against a direct torch computation, classes, batching, resume, errors, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from frankenlab.arch import adapter_for
from frankenlab.errors import OutputError, ProbeError
from frankenlab.probe.attention import generate_ids
from frankenlab.probe.kl import (
    CLASS_COLUMNS,
    KLSettings,
    answer_start,
    end_token,
    kl_records,
    kl_tables,
    run_kl,
)
from frankenlab.probe.run import ProbeModel, append_tokens
from frankenlab.runtime.generate import Prompt, encode, to_model, tokenizer_of
from frankenlab.tasks import TaskItem
from frankenlab.testing import build_tiny_model, build_tokenizer, save_tiny_checkpoint, tiny_image, tiny_processor

TEXT = "qwen2"


@pytest.fixture(scope="module")
def text_pair():
    def pm(seed: int) -> ProbeModel:
        m = build_tiny_model(TEXT, seed=seed, attn_implementation="sdpa")
        return ProbeModel(m, tiny_processor(TEXT), adapter_for(m.config.to_dict()), f"fp-text{seed}", f"text{seed}")
    return pm(0), pm(1)


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("kl_img")
    tiny_image(0, (84, 84)).save(root / "a.png")
    tiny_image(1, (84, 84)).save(root / "b.png")
    return str(root / "a.png")


def _items(image: str | None) -> list[TaskItem]:
    """Gold answers of different lengths (so a batch pads), one item without an image, two different images."""
    return [TaskItem(id="0", task="math", question="What is 2 + 3?", answer="5", image=image),
            TaskItem(id="1", task="math", question="Count the shapes.",
                     answer="I count them: 3 plus 4 is 7, so the answer is 7."),
            TaskItem(id="2", task="math", question="How many circles are in the picture?",
                     answer="there are 12", image=image and image.replace("a.png", "b.png"))]


def _direct(rl: ProbeModel, in_: ProbeModel, item: TaskItem, response: list[int]) -> dict[str, torch.Tensor]:
    """Unpadded single-item forward of both models; KL via torch's kl_div (KL(target ‖ input))."""
    image = Image.open(item.image).convert("RGB") if item.image else None
    single = to_model(rl.model, encode(rl.processor, [Prompt(item.question, image)]))
    inputs = append_tokens(single, response)
    with torch.inference_mode():
        lr = torch.log_softmax(rl.model(**inputs, use_cache=False).logits[0, :-1].float(), -1)
        li = torch.log_softmax(in_.model(**inputs, use_cache=False).logits[0, :-1].float(), -1)
    kl = torch.nn.functional.kl_div
    return {"ids": inputs["input_ids"][0], "prompt_len": single["input_ids"].shape[1],
            "rl_in": kl(li, lr, log_target=True, reduction="none").sum(-1),
            "in_rl": kl(lr, li, log_target=True, reduction="none").sum(-1),
            "explicit": (lr.exp() * (lr - li)).sum(-1),
            "lp_rl": lr.gather(-1, inputs["input_ids"][0, 1:, None])[:, 0]}


def _pair(qwen, qwen_rl) -> tuple[ProbeModel, ProbeModel]:
    return qwen_rl.probe_model("rl"), qwen.probe_model("in")


@pytest.mark.parametrize("family", ["vlm", "text"])
def test_kl_equals_direct_computation_and_batching_changes_nothing(qwen, qwen_rl, text_pair, image_path, family):
    rl, in_ = _pair(qwen, qwen_rl) if family == "vlm" else (text_pair[1], text_pair[0])
    items = _items(image_path if family == "vlm" else None)
    settings = KLSettings(response="gold")
    batched = kl_records(rl, in_, items, settings)
    single = [kl_records(rl, in_, [it], settings)[0] for it in items]
    tok = tokenizer_of(rl.processor)
    lengths = set()
    for it, b, s in zip(items, batched, single):
        assert b["status"] == s["status"] == "ok"
        response = [*tok(it.answer, add_special_tokens=False)["input_ids"], end_token(tok)]
        assert b["response_ids"] == response and tok.decode(response[-1:]) == "<|im_end|>"
        d = _direct(rl, in_, it, response)
        lengths.add(len(d["ids"]))
        assert b["ids"] == d["ids"].tolist() and b["prompt_len"] == d["prompt_len"]
        for key, ref in (("kl_rl_in", d["rl_in"]), ("kl_rl_in", d["explicit"]), ("kl_in_rl", d["in_rl"]),
                         ("logp_rl", d["lp_rl"])):
            assert len(b[key]) == len(ref) == len(d["ids"]) - 1
            np.testing.assert_allclose(b[key], ref.numpy(), atol=1e-5, rtol=0)
            np.testing.assert_allclose(b[key], s[key], atol=1e-5, rtol=0)
        assert min(b["kl_rl_in"]) > 0 and min(b["kl_in_rl"]) > 0  # different weights: KL is positive
        assert b["classes"] == s["classes"]
    assert len(lengths) == len(items)  # the batch really was padded


def test_kl_of_a_model_with_itself_is_exactly_zero(qwen, image_path):
    pm = qwen.probe_model("same")
    recs = kl_records(pm, pm, _items(image_path), KLSettings(response="gold"))
    for r in recs:
        assert r["status"] == "ok"
        assert set(r["kl_rl_in"]) == {0.0} and set(r["kl_in_rl"]) == {0.0}
        assert r["rl_top"] == r["in_top"]


@pytest.mark.parametrize("family", ["vlm", "text"])
def test_classes_partition_the_positions(qwen, qwen_rl, text_pair, image_path, family):
    rl, in_ = _pair(qwen, qwen_rl) if family == "vlm" else (text_pair[1], text_pair[0])
    recs = kl_records(rl, in_, _items(image_path if family == "vlm" else None), KLSettings(response="gold"))
    image_id = getattr(rl.model.config, "image_token_id", None)
    for r in recs:
        ids, P, cls = r["ids"], r["prompt_len"], r["classes"]
        assert len(cls) == len(ids) and set(cls) <= {"prompt", "image", "reasoning", "answer"}
        n_image = sum(1 for t in ids[:P] if image_id is not None and t == image_id)
        assert cls.count("image") == n_image and cls.count("prompt") == P - n_image
        assert cls[P:].count("reasoning") + cls[P:].count("answer") == len(ids) - P
        assert "answer" in cls[:-1]  # the final answer has rows (the last position predicts nothing)
        k = r["answer_start"]  # reasoning strictly before the answer span
        assert cls[P:] == ["reasoning"] * k + ["answer"] * (len(ids) - P - k)
    has_image = [("image" in r["classes"]) for r in recs]
    assert has_image == ([True, False, True] if family == "vlm" else [False, False, False])


def test_answer_span_is_the_final_answer(text_pair):
    tok = tokenizer_of(text_pair[0].processor)
    text = "3 plus 4 is 7, so the answer is \\boxed{9}."
    ids = tok(text, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]
    at, how = answer_start(tok, ids, gold="9")
    decoded = tok.decode(ids, skip_special_tokens=True)
    where = decoded.rfind("9")
    assert how == "extracted"
    assert len(tok.decode(ids[:at], skip_special_tokens=True)) <= where < len(tok.decode(ids[:at + 1],
                                                                                          skip_special_tokens=True))
    only_end = [tok.convert_tokens_to_ids("<|im_end|>")]
    assert answer_start(tok, only_end, gold="9") == (0, "last_token")
    with pytest.raises(ProbeError, match="empty response"):
        answer_start(tok, [], gold="9")


def test_generated_response_is_the_chosen_models_greedy_answer(qwen, qwen_rl, image_path):
    rl, in_ = _pair(qwen, qwen_rl)
    it = _items(image_path)[0]
    prompt = Prompt(it.question, tiny_image(0, (84, 84)))
    for who, pm in (("rl", rl), ("in", in_)):
        rec = kl_records(rl, in_, [it], KLSettings(response=who, max_new_tokens=5))[0]
        assert rec["status"] == "ok" and rec["max_new_tokens"] == 5
        assert rec["response_ids"] == generate_ids(pm.model, pm.processor, [prompt], 5)[0]


def test_class_table_is_the_token_mean_with_an_item_bootstrap(qwen, qwen_rl, image_path):
    rl, in_ = _pair(qwen, qwen_rl)
    settings = KLSettings(response="gold", n_boot=200, top=5)
    recs = kl_records(rl, in_, _items(image_path), settings)
    tokens, classes, per_item, top = kl_tables(recs, settings)
    assert list(classes.columns) == CLASS_COLUMNS
    assert list(classes["class"]) == ["prompt", "image", "reasoning", "answer"]
    for _, row in classes.iterrows():
        g = tokens[tokens["class"] == row["class"]]
        assert row["n_tokens"] == len(g) and row["n_items"] == g["item"].nunique()
        assert row["kl_rl_in_mean"] == pytest.approx(g["kl_rl_in"].mean(), rel=1e-9)
        assert row["kl_in_rl_mean"] == pytest.approx(g["kl_in_rl"].mean(), rel=1e-9)
        assert row["kl_rl_in_low"] <= row["kl_rl_in_mean"] <= row["kl_rl_in_high"]
        if row["n_items"] == 1:  # resampling items, not tokens: one item gives a point
            assert row["kl_rl_in_low"] == pytest.approx(row["kl_rl_in_high"])
        else:
            assert row["kl_rl_in_low"] < row["kl_rl_in_high"]
    assert len(top) == 5 and list(top["kl_rl_in"]) == sorted(tokens["kl_rl_in"], reverse=True)[:5]
    assert all("⟦" in c and "⟧" in c for c in top["context"])
    assert per_item.groupby("item")["n_tokens"].sum().to_dict() == tokens.groupby("item").size().to_dict()


class _Counting:
    """A model wrapper that counts forward calls (or refuses them)."""

    def __init__(self, model, allow: bool = True) -> None:
        self.model, self.allow, self.calls = model, allow, 0

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, *args, **kwargs):
        if not self.allow:
            raise AssertionError("a finished item was recomputed")
        self.calls += 1
        return self.model(*args, **kwargs)


def _task_file(tmp_path, image: str | None) -> str:
    path = tmp_path / "math.jsonl"
    rows = [{"id": it.id, "question": it.question, "answer": it.answer, **({"image": it.image} if it.image else {})}
            for it in _items(image)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_resume_skips_finished_items_and_failures_are_counted(qwen, qwen_rl, image_path, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    tasks = _task_file(tmp_path, image_path)
    with open(tasks, "a") as fh:
        fh.write(json.dumps({"id": "bad", "question": "?", "answer": "1", "image": str(bad)}) + "\n")
    rl, in_ = _pair(qwen, qwen_rl)
    out = tmp_path / "kl"
    settings = KLSettings(response="gold", n_boot=50)
    first = run_kl(in_, rl, [tasks], out, settings, plots=False)
    assert first.manifest["n_failed"] == 1 and first.manifest["failed"][0]["id"] == "math/bad"
    assert len(first.failed) == 1 and first.tokens["item"].nunique() == 3
    lines = (out / "kl_items.jsonl").read_text().splitlines()
    ok_lines = [x for x in lines if json.loads(x)["status"] == "ok"]
    (out / "kl_items.jsonl").write_text("\n".join(ok_lines[:-1]) + "\n")  # the last finished item is lost
    count_rl, count_in = _Counting(rl.model), _Counting(in_.model)
    again = run_kl(ProbeModel(count_in, in_.processor, in_.adapter, in_.fingerprint, in_.path),
                   ProbeModel(count_rl, rl.processor, rl.adapter, rl.fingerprint, rl.path), [tasks], out, settings,
                   plots=False)
    assert count_rl.calls == 1 and count_in.calls == 1  # one batch: the lost item (the broken one fails early)
    # the lost item is recomputed alone rather than in a padded batch of three: equal up to float32 rounding
    pd.testing.assert_frame_equal(again.tokens.sort_values(["item", "position"]).reset_index(drop=True),
                                  first.tokens.sort_values(["item", "position"]).reset_index(drop=True),
                                  rtol=1e-4, atol=1e-7)
    last = json.loads((out / "kl_items.jsonl").read_text().splitlines()[-1])
    assert last["key"] == "math/bad" and last["status"] == "failed"  # failed items are retried on every run
    assert again.manifest["n_failed"] == 1


def test_finished_run_recomputes_nothing(qwen, qwen_rl, image_path, tmp_path):
    tasks = _task_file(tmp_path, image_path)
    rl, in_ = _pair(qwen, qwen_rl)
    out = tmp_path / "kl"
    settings = KLSettings(response="gold", n_boot=50, top=10)
    first = run_kl(in_, rl, [tasks], out, settings, plots=False)
    refuse = [ProbeModel(_Counting(p.model, allow=False), p.processor, p.adapter, p.fingerprint, p.path)
              for p in (in_, rl)]
    again = run_kl(*refuse, [tasks], out, settings.model_copy(update={"top": 3}), plots=False)
    assert len(again.top) == 3  # --top only re-tabulates
    pd.testing.assert_frame_equal(again.classes, first.classes)
    with pytest.raises(OutputError, match="other inputs or settings"):
        run_kl(in_, rl, [tasks], out, settings.model_copy(update={"response": "rl"}), plots=False)


def test_tokenizer_or_vocabulary_mismatch_raises(qwen, qwen_rl, text_pair, tmp_path):
    tasks = _task_file(tmp_path, None)
    rl, in_ = text_pair[1], text_pair[0]
    other = ProbeModel(in_.model, build_tokenizer(vocab_size=350), in_.adapter, "fp-other", "other")
    with pytest.raises(ProbeError, match="different tokenizers"):
        run_kl(other, rl, [tasks], tmp_path / "a", KLSettings(response="gold"))
    assert not (tmp_path / "a").exists()
    wide = build_tiny_model(TEXT, seed=2, attn_implementation="sdpa", vocab_size=len(tokenizer_of(rl.processor)) + 8)
    padded = ProbeModel(wide, rl.processor, adapter_for(wide.config.to_dict()), "fp-wide", "wide")
    with pytest.raises(ProbeError, match="output vocabulary"):
        run_kl(padded, rl, [tasks], tmp_path / "b", KLSettings(response="gold"))
    vlm_rl, _ = _pair(qwen, qwen_rl)
    with pytest.raises(ProbeError, match="not the same architecture"):
        run_kl(in_, vlm_rl, [tasks], tmp_path / "c", KLSettings(response="gold"))


def test_cli_writes_the_contract_files(image_path, tmp_path, capsys):
    from frankenlab.cli.app import main

    ckpt_in = save_tiny_checkpoint("qwen2_5_vl", tmp_path / "in", seed=0)
    ckpt_rl = save_tiny_checkpoint("qwen2_5_vl", tmp_path / "rl", seed=1)
    tasks = _task_file(tmp_path, image_path)
    out = tmp_path / "out"
    args = ["probe", "kl", "--in", str(ckpt_in), "--rl", str(ckpt_rl), "--tasks", tasks, "--out", str(out),
            "--max-new-tokens", "4", "--top", "7", "--threads", "1"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 0
    assert "KL(RL‖IN)" in capsys.readouterr().err
    tokens = pd.read_parquet(out / "kl_tokens.parquet")
    assert {"item", "position", "class", "token", "kl_rl_in", "kl_in_rl", "task", "token_text"} <= set(tokens.columns)
    assert pd.read_csv(out / "kl_tokens.csv").shape == tokens.shape
    classes = pd.read_csv(out / "kl_classes.csv")
    assert list(classes.columns) == CLASS_COLUMNS and "image" in set(classes["class"])
    assert (out / "kl_classes.parquet").exists()
    items = pd.read_csv(out / "kl_items.csv")
    assert {"item", "task", "class", "n_tokens", "kl_rl_in_mean", "kl_in_rl_mean"} <= set(items.columns)
    top = pd.read_csv(out / "kl_top.csv")
    assert len(top) == 7 and {"item", "position", "class", "token_text", "context", "kl_rl_in", "kl_in_rl",
                              "rl_top", "in_top"} <= set(top.columns)
    assert (out / "plots" / "kl_classes.png").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n_failed"] == 0 and manifest["args"]["response"] == "rl"
    assert manifest["decoding"]["max_new_tokens"] == {"reasoning": 4}
    recs = [json.loads(x) for x in (out / "kl_items.jsonl").read_text().splitlines()]
    assert len(recs) == 3 and all(len(r["response_ids"]) <= 4 for r in recs)
    with pytest.raises(SystemExit) as exc:
        main([*args[:-2], "--response", "nope"])
    assert exc.value.code == 2 and "--response" in capsys.readouterr().err


def test_a_row_is_classed_by_the_behaviour_it_produces(qwen, qwen_rl, image_path):
    """The distribution at the last prompt position writes the first response token: it is response, not prompt."""
    rl, in_ = _pair(qwen, qwen_rl)
    settings = KLSettings(response="gold", n_boot=50)
    recs = kl_records(rl, in_, _items(image_path), settings)
    tokens = kl_tables(recs, settings)[0]
    for r in recs:
        if r.get("status") != "ok":
            continue
        rows = tokens[tokens["item"] == r["key"]].set_index("position")
        last_prompt = r["prompt_len"] - 1
        own = r["classes"]
        assert rows.loc[last_prompt, "own_class"] == own[last_prompt] in ("prompt", "image")
        assert rows.loc[last_prompt, "class"] == own[last_prompt + 1] in ("reasoning", "answer")
        for t, row in rows.iterrows():
            expect = own[t + 1] if own[t + 1] in ("reasoning", "answer") else own[t]
            assert row["class"] == expect and row["next_class"] == own[t + 1] and row["own_class"] == own[t]
