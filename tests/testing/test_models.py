"""The tiny-model builders every other test relies on: determinism, layouts, processors, generation."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from frankenlab import compat
from frankenlab.testing import (
    ALL_FAMILIES,
    FAMILIES,
    TEXT_FAMILIES,
    VLM_FAMILIES,
    auto_model_class,
    available_families,
    build_tiny_model,
    build_tokenizer,
    chat_template,
    checkpoint_state_dict,
    generate_text,
    generate_with_image,
    save_tiny_checkpoint,
    suppressed_token_ids,
    tiny_config,
    tiny_image,
    tiny_processor,
)

QWEN_VL = [f for f in ("qwen2_vl", "qwen2_5_vl", "qwen3_vl") if f in FAMILIES]
LAYOUTS = ("hub", "transformers5")
PROMPT = "What is 2 + 3?"
IMAGE_MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]

# A few exact on-disk names per (family, layout); "absent" guards against the other layout leaking in.
EXPECTED_KEYS: dict[tuple[str, str], dict[str, list[str]]] = {}
for _fam in ("qwen2_vl", "qwen2_5_vl"):
    EXPECTED_KEYS[(_fam, "hub")] = {
        "present": [
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.3.mlp.down_proj.weight",
            "model.embed_tokens.weight",
            "model.norm.weight",
            "visual.blocks.0.attn.qkv.weight",
            "visual.blocks.3.attn.proj.weight",
            "visual.merger.mlp.0.weight",
            "lm_head.weight",
        ],
        "absent": ["model.language_model.layers.0.self_attn.q_proj.weight", "model.visual.blocks.0.attn.qkv.weight"],
    }
    EXPECTED_KEYS[(_fam, "transformers5")] = {
        "present": [
            "model.language_model.layers.0.self_attn.q_proj.weight",
            "model.language_model.layers.3.mlp.down_proj.weight",
            "model.language_model.embed_tokens.weight",
            "model.language_model.norm.weight",
            "model.visual.blocks.0.attn.qkv.weight",
            "model.visual.merger.mlp.0.weight",
            "lm_head.weight",
        ],
        "absent": ["model.layers.0.self_attn.q_proj.weight", "visual.blocks.0.attn.qkv.weight"],
    }
for _layout in LAYOUTS:
    EXPECTED_KEYS[("qwen3_vl", _layout)] = {
        "present": [
            "model.language_model.layers.0.self_attn.q_proj.weight",
            "model.language_model.layers.0.self_attn.q_norm.weight",
            "model.visual.blocks.0.attn.qkv.weight",
            "model.visual.deepstack_merger_list.0.linear_fc1.weight",
            "model.visual.pos_embed.weight",
            "lm_head.weight",
        ],
        "absent": ["model.layers.0.self_attn.q_proj.weight", "visual.blocks.0.attn.qkv.weight"],
    }
    for _fam in TEXT_FAMILIES:
        EXPECTED_KEYS[(_fam, _layout)] = {
            "present": [
                "model.layers.0.self_attn.q_proj.weight",
                "model.layers.3.mlp.gate_proj.weight",
                "model.embed_tokens.weight",
                "model.norm.weight",
                "lm_head.weight",
            ],
            "absent": ["model.language_model.layers.0.self_attn.q_proj.weight"],
        }
EXPECTED_KEYS[("llava", "hub")] = {
    "present": [
        "language_model.model.layers.0.self_attn.q_proj.weight",
        "language_model.model.embed_tokens.weight",
        "language_model.lm_head.weight",
        "vision_tower.encoder.layers.0.self_attn.q_proj.weight",
        "vision_tower.embeddings.patch_embedding.weight",
        "multi_modal_projector.linear_1.weight",
        "multi_modal_projector.linear_2.weight",
    ],
    "absent": ["lm_head.weight", "model.language_model.layers.0.self_attn.q_proj.weight"],
}
EXPECTED_KEYS[("llava", "transformers5")] = {
    "present": [
        "model.language_model.layers.0.self_attn.q_proj.weight",
        "model.language_model.embed_tokens.weight",
        "model.vision_tower.encoder.layers.0.self_attn.q_proj.weight",
        "model.multi_modal_projector.linear_1.weight",
        "lm_head.weight",
    ],
    "absent": ["language_model.lm_head.weight", "vision_tower.encoder.layers.0.self_attn.q_proj.weight"],
}


def _state_dicts_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def reference_state_dicts() -> Callable[[str], dict[str, torch.Tensor]]:
    cache: dict[str, dict[str, torch.Tensor]] = {}

    def get(family: str) -> dict[str, torch.Tensor]:
        if family not in cache:
            cache[family] = build_tiny_model(family).state_dict()
        return cache[family]

    return get


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
    """Saved tiny checkpoints, one per (family, layout), written once per session."""
    cache: dict[tuple[str, str], Path] = {}

    def get(family: str, layout: str) -> Path:
        if (family, layout) not in cache:
            out = tmp_path_factory.mktemp(f"{family}-{layout}")
            cache[(family, layout)] = save_tiny_checkpoint(family, out, layout=layout)
        return cache[(family, layout)]

    return get


# --- tokenizer -------------------------------------------------------------------------------------------


def test_tokenizer_is_deterministic_and_small(tokenizer) -> None:
    again = build_tokenizer()
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()
    assert len(tokenizer) == 400
    other = build_tokenizer(["completely different words", "zebra quartz"], vocab_size=300)
    assert other.get_vocab() != tokenizer.get_vocab()
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.bos_token is None
    for tok in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "<image>"):
        ids = tokenizer(f"a{tok}b", add_special_tokens=False)["input_ids"]
        assert tokenizer.convert_tokens_to_ids(tok) in ids  # never split
    with pytest.raises(ValueError):
        build_tokenizer(vocab_size=1000)


def test_chat_template_renders_image_parts(tokenizer) -> None:
    text = tokenizer.apply_chat_template(IMAGE_MESSAGES, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
    )
    plain = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], tokenize=False
    )
    assert plain == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>\n"
    llava = build_tokenizer(image_placeholder="<image>")
    assert "<image>What is" in llava.apply_chat_template(IMAGE_MESSAGES, tokenize=False)
    assert llava.chat_template == chat_template("<image>")


# --- configs and models ----------------------------------------------------------------------------------


def test_family_lists() -> None:
    assert FAMILIES == available_families()
    assert set(VLM_FAMILIES) | set(TEXT_FAMILIES) == set(FAMILIES)
    assert not set(VLM_FAMILIES) & set(TEXT_FAMILIES)
    assert ("qwen3_vl" in FAMILIES) == compat.model_type_available("qwen3_vl")
    assert set(FAMILIES) <= set(ALL_FAMILIES)
    with pytest.raises(ValueError):
        tiny_config("gpt2")


@pytest.mark.parametrize("family", FAMILIES)
def test_build_is_seeded(family: str, tokenizer, reference_state_dicts) -> None:
    rng_before = torch.random.get_rng_state()
    model = build_tiny_model(family)
    assert torch.equal(torch.random.get_rng_state(), rng_before), "global RNG must be left untouched"
    expected_suffix = "ForConditionalGeneration" if family in VLM_FAMILIES else "ForCausalLM"
    assert type(model).__name__.endswith(expected_suffix)
    assert not model.training
    assert _state_dicts_equal(model.state_dict(), reference_state_dicts(family))
    other = build_tiny_model(family, seed=1).state_dict()
    assert any(not torch.equal(v, other[k]) for k, v in model.state_dict().items())
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


@pytest.mark.parametrize("family", QWEN_VL)
def test_qwen_vl_config_matches_tokenizer(family: str, tokenizer) -> None:
    cfg = tiny_config(family, n_llm_layers=2, n_vision_blocks=3)
    assert cfg.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert cfg.video_token_id == tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert cfg.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    text = cfg.text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    assert sum(text.rope_parameters["mrope_section"]) == head_dim // 2
    assert text.num_hidden_layers == 2 and cfg.vision_config.depth == 3
    if family == "qwen3_vl":
        assert text.rope_parameters["mrope_interleaved"] is True
        assert all(0 <= i < 3 for i in cfg.vision_config.deepstack_visual_indexes)
    if family == "qwen2_5_vl":
        assert all(0 <= i < 3 for i in cfg.vision_config.fullatt_block_indexes)


def test_llava_config_matches_tokenizer(tokenizer) -> None:
    cfg = tiny_config("llava")
    assert cfg.image_token_id == tokenizer.convert_tokens_to_ids("<image>")
    assert cfg.text_config.eos_token_id == tokenizer.eos_token_id
    assert cfg.text_config.vocab_size == len(tokenizer)


def test_dtype_is_cast_of_fp32(reference_state_dicts) -> None:
    bf16 = build_tiny_model("qwen2", dtype=torch.bfloat16).state_dict()
    ref = reference_state_dicts("qwen2")
    assert all(v.dtype == torch.bfloat16 and torch.equal(v, ref[k].to(torch.bfloat16)) for k, v in bf16.items())


# --- checkpoints -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_layout_roundtrip(family: str, layout: str, checkpoint, reference_state_dicts) -> None:
    path = checkpoint(family, layout)
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert (path / name).is_file(), name
    assert (path / "processor_config.json").is_file() == (family in VLM_FAMILIES)
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
    disk = checkpoint_state_dict(path)
    expected = EXPECTED_KEYS[(family, layout)]
    missing = [k for k in expected["present"] if k not in disk]
    assert not missing, f"missing {missing}; have e.g. {sorted(disk)[:8]}"
    assert not [k for k in expected["absent"] if k in disk]
    ref = reference_state_dicts(family)
    if layout == "transformers5":
        assert disk.keys() == ref.keys()
    loaded = auto_model_class(family).from_pretrained(path)
    assert _state_dicts_equal(loaded.state_dict(), ref)


def test_layouts_coincide_for_qwen3_vl_and_text(checkpoint) -> None:
    for family in [f for f in ("qwen3_vl", "qwen2") if f in FAMILIES]:
        hub, t5 = (checkpoint_state_dict(checkpoint(family, layout)) for layout in LAYOUTS)
        assert _state_dicts_equal(hub, t5)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sharded_checkpoint(layout: str, tmp_path: Path, reference_state_dicts) -> None:
    path = save_tiny_checkpoint("qwen2_5_vl", tmp_path / "ckpt", layout=layout, shards=3, with_processor=False)
    assert not (path / "model.safetensors").exists()
    index = json.loads((path / "model.safetensors.index.json").read_text())
    files = sorted({*index["weight_map"].values()})
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    disk = checkpoint_state_dict(path)
    assert set(index["weight_map"]) == set(disk)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in disk.values())
    for name in files:
        with safe_open(str(path / name), "pt") as f:
            assert f.metadata() == {"format": "pt"} and len(list(f.keys())) > 0
    loaded = auto_model_class("qwen2_5_vl").from_pretrained(path)
    assert _state_dicts_equal(loaded.state_dict(), reference_state_dicts("qwen2_5_vl"))


@pytest.mark.parametrize("family", ["qwen2_vl", "llava", "qwen2"])
def test_tied_embeddings_roundtrip(family: str, tmp_path: Path) -> None:
    path = save_tiny_checkpoint(
        family, tmp_path / "ckpt", layout="transformers5", tie_word_embeddings=True, with_processor=False
    )
    assert "lm_head.weight" not in checkpoint_state_dict(path)
    loaded = auto_model_class(family).from_pretrained(path)
    assert loaded.lm_head.weight.data_ptr() == loaded.get_input_embeddings().weight.data_ptr()
    ref = build_tiny_model(family, tie_word_embeddings=True).state_dict()
    assert _state_dicts_equal(loaded.state_dict(), ref)


def test_save_refuses_bad_arguments(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(ValueError):
        save_tiny_checkpoint("qwen2", tmp_path / "full")
    with pytest.raises(ValueError):
        save_tiny_checkpoint("qwen2", tmp_path / "a", layout="legacy")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        save_tiny_checkpoint("qwen2", tmp_path / "b", shards=10_000)


def test_generation_config_on_disk(checkpoint, tokenizer) -> None:
    gen = json.loads((checkpoint("qwen2_5_vl", "hub") / "generation_config.json").read_text())
    vocab = tokenizer.get_vocab()
    assert gen["eos_token_id"] == [vocab["<|im_end|>"], vocab["<|endoftext|>"]]
    assert gen["pad_token_id"] == vocab["<|endoftext|>"]
    assert gen["suppress_tokens"] == suppressed_token_ids(tokenizer)


# --- processors, forward, generation --------------------------------------------------------------------


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_vlm_forward_and_generate(family: str, tokenizer) -> None:
    model = build_tiny_model(family)
    processor = tiny_processor(family, tokenizer)
    image = tiny_image()
    text = processor.apply_chat_template(IMAGE_MESSAGES, tokenize=False, add_generation_prompt=True)
    batch = processor(text=[text], images=[image], return_tensors="pt")
    image_token_id = model.config.image_token_id
    n_image_tokens = int((batch["input_ids"] == image_token_id).sum())
    assert n_image_tokens == 4  # 56x56 image -> 2x2 merged tokens (LLaVA: 2x2 patches of a 28px crop)
    if family in QWEN_VL:
        assert "mm_token_type_ids" in batch
        assert int(batch["mm_token_type_ids"].sum()) == n_image_tokens
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], len(tokenizer))
    assert torch.isfinite(logits).all()
    answer = generate_with_image(model, processor, image, PROMPT, max_new_tokens=4)
    assert isinstance(answer, str)


def test_qwen2_5_vl_needs_mm_token_type_ids(tokenizer) -> None:
    """Without mm_token_type_ids Qwen2.5-VL silently uses 1-D positions: the logits change."""
    model = build_tiny_model("qwen2_5_vl")
    processor = tiny_processor("qwen2_5_vl", tokenizer)
    text = processor.apply_chat_template(IMAGE_MESSAGES, tokenize=False, add_generation_prompt=True)
    batch = processor(text=[text], images=[tiny_image()], return_tensors="pt")
    with torch.no_grad():
        full = model(**batch).logits
        partial = model(**{k: v for k, v in batch.items() if k != "mm_token_type_ids"}).logits
    assert not torch.allclose(full, partial)


@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_text_generate(family: str, tokenizer) -> None:
    model = build_tiny_model(family)
    out = generate_text(model, tiny_processor(family, tokenizer), PROMPT, max_new_tokens=3)
    assert isinstance(out, str)


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_processor_reload_offline(family: str, checkpoint, tokenizer) -> None:
    path = checkpoint(family, "hub")
    saved_class = json.loads((path / "processor_config.json").read_text())["processor_class"]
    original = tiny_processor(family, tokenizer)
    assert saved_class == type(original).__name__
    reloaded = compat.load_processor(path)
    assert type(reloaded).__name__ == saved_class
    image = tiny_image(seed=3, size=(70, 50))
    text = original.apply_chat_template(IMAGE_MESSAGES, tokenize=False, add_generation_prompt=True)
    assert reloaded.apply_chat_template(IMAGE_MESSAGES, tokenize=False, add_generation_prompt=True) == text
    a = original(text=[text], images=[image], return_tensors="pt")
    b = reloaded(text=[text], images=[image], return_tensors="pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("family", TEXT_FAMILIES)
def test_text_tokenizer_reload_offline(family: str, checkpoint, tokenizer) -> None:
    reloaded = compat.load_processor(checkpoint(family, "hub"))
    sample = "<|im_start|>user\nIt's 1234 o'clock,  ünïcödé\tok?<|im_end|>\n"
    assert reloaded(sample)["input_ids"] == tokenizer(sample)["input_ids"]
    assert reloaded.chat_template == tokenizer.chat_template


def test_shim_only_without_torchvision(tokenizer) -> None:
    from transformers import Qwen2_5_VLProcessor

    processor = tiny_processor("qwen2_5_vl", tokenizer)
    assert isinstance(processor, Qwen2_5_VLProcessor)
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    if compat.torchvision_usable():
        assert hasattr(processor, "video_processor")
    else:
        assert type(processor).get_attributes() == ["image_processor", "tokenizer"]
        assert compat.image_text_only(Qwen2_5_VLProcessor) is type(processor)
    clone = pickle.loads(pickle.dumps(processor))  # shims resolve as frankenlab.compat.<UpstreamName>
    assert type(clone) is type(processor)


def test_tiny_image() -> None:
    a, b = tiny_image(), tiny_image()
    assert a.size == (56, 56) and a.mode == "RGB"
    assert a.tobytes() == b.tobytes()
    assert tiny_image(seed=1).tobytes() != a.tobytes()
    assert tiny_image(size=(70, 50)).size == (70, 50)


def test_processor_does_not_mutate_callers_tokenizer(tmp_path: Path) -> None:
    tok = build_tokenizer()
    tiny_processor("qwen2_vl", tok).save_pretrained(str(tmp_path / "proc"))
    assert "processor_class" not in tok.init_kwargs
    path = save_tiny_checkpoint("llama", tmp_path / "text", tokenizer=tok)
    assert type(compat.load_processor(path)).__name__ == type(tok).__name__


def test_llava_processor_needs_no_shim() -> None:
    from transformers import LlavaProcessor, Qwen3VLProcessor

    assert not compat.needs_video_processor(LlavaProcessor)
    assert compat.image_text_only(LlavaProcessor) is LlavaProcessor
    assert compat.needs_video_processor(Qwen3VLProcessor)
    assert isinstance(compat.torchvision_usable(), bool)


def test_generation_never_emits_vision_tokens(tokenizer) -> None:
    from frankenlab.testing import safe_generate_kwargs

    model = build_tiny_model("qwen2_vl", vocab_size=416)  # padded vocab, as real Qwen checkpoints have
    processor = tiny_processor("qwen2_vl", tokenizer)
    text = processor.apply_chat_template(IMAGE_MESSAGES, tokenize=False, add_generation_prompt=True)
    batch = processor(text=[text], images=[tiny_image()], return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=12, min_new_tokens=12, **safe_generate_kwargs(processor))
    new = out[0, batch["input_ids"].shape[1] :].tolist()
    assert len(new) == 12
    assert not set(new) & set(suppressed_token_ids(tokenizer))
