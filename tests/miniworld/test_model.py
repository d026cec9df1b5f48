"""The mini-world model: a normal Hugging Face directory that reloads offline to identical logits."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForImageTextToText

from frankenlab.compat import load_processor
from frankenlab.miniworld import make_split
from frankenlab.miniworld.model import (
    ModelSpec,
    build_miniworld_model,
    build_miniworld_processor,
    build_miniworld_tokenizer,
    save_pair_member,
)
from frankenlab.miniworld.sft import collate, encode_examples
from frankenlab.testing.tokenizer import SPECIAL_TOKENS


def test_tokenizer_knows_the_task_vocabulary():
    tok = build_miniworld_tokenizer()
    assert build_miniworld_tokenizer().get_vocab() == tok.get_vocab()  # deterministic
    for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
              "<|video_pad|>"):
        assert t in SPECIAL_TOKENS and t in tok.get_vocab()
    # task words are whole tokens, so prompts stay short
    for word in ("How", " many", " color", " shape"):
        assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1, word
    assert tok.chat_template


def test_scene_is_nine_visual_tokens_and_six_layers():
    tok = build_miniworld_tokenizer()
    proc = build_miniworld_processor(tok)
    model = build_miniworld_model(tok)
    item = make_split(1, 0, ["count"])[0]
    assert item.image.size == (84, 84)
    enc = proc.image_processor(images=[item.image], return_tensors="pt")
    assert enc["image_grid_thw"].tolist() == [[1, 6, 6]]  # 36 patches of 14 px, merged 2x2 -> 9 tokens
    ex = encode_examples(proc, [(item.question, item.image, item.answer)])[0]
    assert int((ex.input_ids == model.config.image_token_id).sum()) == 9
    assert int(ex.mm_token_type_ids.sum()) == 9
    assert model.config.text_config.num_hidden_layers == ModelSpec().n_llm_layers >= 6
    assert model.config.model_type == "qwen2_5_vl"


def test_saved_directory_reloads_offline_with_identical_logits(tmp_path):
    tok = build_miniworld_tokenizer()
    proc = build_miniworld_processor(tok)
    model = build_miniworld_model(tok, seed=3)
    out = save_pair_member(model, proc, tmp_path / "m")
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "processor_config.json"} <= {p.name for p in out.iterdir()}
    reloaded = AutoModelForImageTextToText.from_pretrained(out, local_files_only=True, attn_implementation="eager")
    proc2 = load_processor(out)
    items = make_split(4, 0, ["count", "text_arith"], unique=False)
    rows = [(it.question, it.image, it.answer) for it in items]
    a = collate(encode_examples(proc, rows), tok.pad_token_id)
    b = collate(encode_examples(proc2, rows), proc2.tokenizer.pad_token_id)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    with torch.no_grad():
        assert torch.equal(model(**a).logits, reloaded(**b).logits)
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["do_sample"] is False and set(gen["suppress_tokens"]) >= {tok.convert_tokens_to_ids("<|image_pad|>")}
