"""Tiny, seeded models of every family frankenlab analyses, built and saved fully offline.

All models use ``attn_implementation="eager"`` by default: it is the reference implementation, supports
``output_attentions``, and is deterministic on CPU. Checkpoints reloaded with ``from_pretrained`` default to
``sdpa``; compare their logits with a tolerance (~1e-5), or pass ``attn_implementation="eager"`` when loading.

Weight-name layouts written by :func:`save_tiny_checkpoint` (transformers 5.24); ``hub`` is what
``save_pretrained`` writes, ``transformers5`` the in-memory ``model.state_dict()`` names:

* qwen2_vl, qwen2_5_vl -- hub: ``model.layers.N.*``, ``model.embed_tokens.weight``, ``model.norm.weight``,
  ``visual.blocks.N.*``, ``visual.merger.*``, ``lm_head.weight``; transformers5:
  ``model.language_model.layers.N.*``, ``model.language_model.embed_tokens.weight``,
  ``model.visual.blocks.N.*``, ``model.visual.merger.*``, ``lm_head.weight``.
* qwen3_vl -- both layouts: ``model.language_model.layers.N.*``, ``model.visual.blocks.N.*``,
  ``model.visual.deepstack_merger_list.K.*``, ``lm_head.weight`` (Qwen3-VL never had the legacy names).
* llava -- hub: ``language_model.model.layers.N.*``, ``language_model.lm_head.weight``,
  ``vision_tower.encoder.layers.N.*``, ``multi_modal_projector.linear_{1,2}.*``; transformers5:
  ``model.language_model.layers.N.*``, ``model.vision_tower.encoder.layers.N.*``,
  ``model.multi_modal_projector.*``, ``lm_head.weight``.
* llama, qwen2, qwen3 -- both layouts: ``model.layers.N.*``, ``model.embed_tokens.weight``, ``lm_head.weight``.

With ``tie_word_embeddings=True`` no ``lm_head`` tensor is written (as ``save_pretrained`` does).
Note for LLaVA: real llava-hf checkpoints store the CLIP tower as ``vision_tower.vision_model.*``; transformers
5.24 loads that too (it strips ``vision_model.``) but saves a fresh model without it, as listed above.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from frankenlab import compat
from frankenlab.testing.tokenizer import (
    ENDOFTEXT,
    IM_END,
    IMAGE_PAD,
    LLAVA_IMAGE,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
    build_tokenizer,
    chat_template,
)

ALL_FAMILIES: tuple[str, ...] = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava", "llama", "qwen2", "qwen3")
_ALL_VLM: tuple[str, ...] = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava")
_ALL_QWEN_VL: tuple[str, ...] = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

#: Vision special tokens that must never be generated: a generated ``<|image_pad|>`` (or ``<image>``) makes
#: the next forward look for image features that do not exist.
VISION_SPECIAL_TOKENS: tuple[str, ...] = (VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD, LLAVA_IMAGE)

Layout = Literal["hub", "transformers5"]

# Vision geometry shared by configs and processors (they must agree).
_QWEN_PATCH = {"qwen2_vl": 14, "qwen2_5_vl": 14, "qwen3_vl": 16}
_MERGE = 2
_TEMPORAL_PATCH = 2
_LLAVA_PATCH = 14
_LLAVA_IMAGE_SIZE = 28  # 2x2 patches (+CLS, dropped by "default" strategy) -> 4 image tokens


def available_families() -> tuple[str, ...]:
    """Families the installed transformers can build (``qwen3_vl`` needs a recent release)."""
    return tuple(f for f in ALL_FAMILIES if compat.model_type_available(f))


FAMILIES: tuple[str, ...] = available_families()
VLM_FAMILIES: tuple[str, ...] = tuple(f for f in _ALL_VLM if f in FAMILIES)
TEXT_FAMILIES: tuple[str, ...] = tuple(f for f in FAMILIES if f not in _ALL_VLM)
QWEN_VL_FAMILIES: tuple[str, ...] = tuple(f for f in _ALL_QWEN_VL if f in FAMILIES)


def _check_family(family: str) -> None:
    if family not in ALL_FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {ALL_FAMILIES}")
    if family not in FAMILIES:
        raise ValueError(f"family {family!r} is not available in transformers {_tf_version()}")


def _tf_version() -> str:
    import transformers

    return transformers.__version__


@functools.lru_cache(maxsize=1)
def _default_tokenizer() -> PreTrainedTokenizerBase:
    # Read-only use (ids, length); callers that get a tokenizer back receive a fresh one.
    return build_tokenizer()


def _tok_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    tid = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(tid, int) or tid == tokenizer.unk_token_id or tokenizer.convert_ids_to_tokens(tid) != token:
        raise ValueError(f"tokenizer has no token {token!r}")
    return tid


def suppressed_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids of the vision special tokens present in ``tokenizer`` (to pass as ``suppress_tokens``)."""
    vocab = tokenizer.get_vocab()
    return sorted(vocab[t] for t in VISION_SPECIAL_TOKENS if t in vocab)


def safe_generate_kwargs(tokenizer_or_processor: Any) -> dict[str, Any]:
    """Greedy-generation kwargs that keep a random tiny model from emitting vision tokens.

    ``suppress_tokens`` is what keeps decoding alive; eos covers both ``<|im_end|>`` and ``<|endoftext|>``.
    """
    tok = getattr(tokenizer_or_processor, "tokenizer", tokenizer_or_processor)
    vocab = tok.get_vocab()
    eos = [vocab[t] for t in (IM_END, ENDOFTEXT) if t in vocab]
    return {
        "do_sample": False,
        "suppress_tokens": suppressed_token_ids(tok),
        "eos_token_id": eos or tok.eos_token_id,
        "pad_token_id": tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
    }


def _rope(theta: float, **extra: Any) -> dict[str, Any]:
    return {"rope_type": "default", "rope_theta": theta, **extra}


def _mrope_section(head_dim: int, interleaved: bool) -> list[int]:
    """T/H/W split of the head_dim/2 rotary frequencies (must sum to head_dim/2).

    Proportions follow the real checkpoints: Qwen2/2.5-VL [16, 24, 24] of 64, Qwen3-VL [24, 20, 20] of 64.
    """
    half = head_dim // 2
    if half < 3:
        raise ValueError(f"head_dim={head_dim} too small for 3-axis mrope")
    if interleaved:
        hw = max(1, (half * 20) // 64)
        # Interleaved layout puts H at 1,4,7.. and W at 2,5,8..: the last W slot 3*hw-1 must be < half.
        hw = min(hw, half // 3)
        return [half - 2 * hw, hw, hw]
    hw = max(1, (half * 24) // 64)
    return [half - 2 * hw, hw, hw]


def _spread(n: int, k: int) -> list[int]:
    """Up to ``k`` distinct block indices spread over ``range(n)``, ending at the last block."""
    return sorted({max(0, (n * (i + 1)) // k - 1) for i in range(k)})


def tiny_config(
    family: str,
    *,
    n_llm_layers: int = 4,
    n_vision_blocks: int = 4,
    hidden: int = 64,
    vocab_size: int | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    tie_word_embeddings: bool = False,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    vision_hidden: int = 32,
    vision_heads: int = 2,
) -> PreTrainedConfig:
    """A tiny but valid config whose special-token ids match ``tokenizer`` (default: :func:`build_tokenizer`).

    ``vocab_size`` defaults to ``len(tokenizer)``; a larger value pads the embedding like real Qwen checkpoints.
    """
    _check_family(family)
    tok = tokenizer if tokenizer is not None else _default_tokenizer()
    n_tok = len(tok)
    vocab = n_tok if vocab_size is None else int(vocab_size)
    if vocab < n_tok:
        raise ValueError(f"vocab_size={vocab} is smaller than the tokenizer ({n_tok} tokens)")
    if hidden % n_heads or n_heads % n_kv_heads or vision_hidden % vision_heads:
        raise ValueError("hidden/n_heads/n_kv_heads/vision sizes must divide evenly")
    head_dim = hidden // n_heads
    eos_id = tok.eos_token_id
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else eos_id
    bos_id = tok.bos_token_id  # None for the Qwen-style tiny tokenizer, as in Qwen
    text: dict[str, Any] = {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": n_llm_layers,
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv_heads,
        "max_position_embeddings": 1024,
        "rms_norm_eps": 1e-6,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "tie_word_embeddings": tie_word_embeddings,
    }

    if family in ("llama", "qwen2", "qwen3"):
        from transformers import LlamaConfig, Qwen2Config, Qwen3Config

        if family == "llama":
            return LlamaConfig(**text, rope_parameters=_rope(10000.0))
        if family == "qwen2":
            return Qwen2Config(**text, rope_parameters=_rope(1000000.0), use_sliding_window=False)
        return Qwen3Config(**text, head_dim=head_dim, rope_parameters=_rope(1000000.0), use_sliding_window=False)

    if family == "llava":
        from transformers import LlavaConfig

        image_tokens = (_LLAVA_IMAGE_SIZE // _LLAVA_PATCH) ** 2
        return LlavaConfig(
            text_config={"model_type": "llama", **text, "rope_parameters": _rope(10000.0)},
            vision_config={
                "model_type": "clip_vision_model",
                "hidden_size": vision_hidden,
                "intermediate_size": 2 * vision_hidden,
                "num_hidden_layers": n_vision_blocks,
                "num_attention_heads": vision_heads,
                "image_size": _LLAVA_IMAGE_SIZE,
                "patch_size": _LLAVA_PATCH,
                "projection_dim": vision_hidden,
            },
            image_token_index=_tok_id(tok, LLAVA_IMAGE),
            image_seq_length=image_tokens,
            vision_feature_select_strategy="default",
            vision_feature_layer=-2 if n_vision_blocks >= 2 else -1,
            tie_word_embeddings=tie_word_embeddings,
        )

    ids = {
        "image_token_id": _tok_id(tok, IMAGE_PAD),
        "video_token_id": _tok_id(tok, VIDEO_PAD),
        "vision_start_token_id": _tok_id(tok, VISION_START),
        "vision_end_token_id": _tok_id(tok, VISION_END),
    }
    patch = _QWEN_PATCH[family]
    if family == "qwen2_vl":
        from transformers import Qwen2VLConfig

        return Qwen2VLConfig(
            text_config={
                **text,
                "rope_parameters": _rope(1000000.0, mrope_section=_mrope_section(head_dim, False)),
            },
            vision_config={
                "depth": n_vision_blocks,
                "embed_dim": vision_hidden,
                "hidden_size": hidden,  # merger output = LLM width
                "num_heads": vision_heads,
                "mlp_ratio": 2,
                "patch_size": patch,
                "spatial_merge_size": _MERGE,
                "temporal_patch_size": _TEMPORAL_PATCH,
            },
            tie_word_embeddings=tie_word_embeddings,
            **ids,
        )
    if family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        return Qwen2_5_VLConfig(
            text_config={
                **text,
                "rope_parameters": _rope(1000000.0, mrope_section=_mrope_section(head_dim, False)),
            },
            vision_config={
                "depth": n_vision_blocks,
                "hidden_size": vision_hidden,
                "out_hidden_size": hidden,
                "intermediate_size": 2 * vision_hidden,
                "num_heads": vision_heads,
                "patch_size": patch,
                "spatial_merge_size": _MERGE,
                "temporal_patch_size": _TEMPORAL_PATCH,
                "window_size": 4 * patch * _MERGE // 2,  # 2x2 merged tokens per window
                "fullatt_block_indexes": _spread(n_vision_blocks, 2),
            },
            tie_word_embeddings=tie_word_embeddings,
            **ids,
        )
    # qwen3_vl: text config has no bos/eos fields (they live in generation_config); mrope is interleaved.
    from transformers import Qwen3VLConfig

    q3_text = {k: v for k, v in text.items() if k not in ("bos_token_id", "eos_token_id", "tie_word_embeddings")}
    return Qwen3VLConfig(
        text_config={
            **q3_text,
            "head_dim": head_dim,
            "rope_parameters": _rope(5000000.0, mrope_section=_mrope_section(head_dim, True), mrope_interleaved=True),
        },
        vision_config={
            "depth": n_vision_blocks,
            "hidden_size": vision_hidden,
            "out_hidden_size": hidden,
            "intermediate_size": 2 * vision_hidden,
            "num_heads": vision_heads,
            "patch_size": patch,
            "spatial_merge_size": _MERGE,
            "temporal_patch_size": _TEMPORAL_PATCH,
            "num_position_embeddings": 64,  # 8x8 grid, bilinearly interpolated to the image
            "deepstack_visual_indexes": _spread(n_vision_blocks, 3),
        },
        tie_word_embeddings=tie_word_embeddings,
        **ids,
    )


def auto_model_class(family: str) -> type:
    """The Auto class that loads ``family`` checkpoints (image-text-to-text for VLMs, causal LM for text)."""
    _check_family(family)
    return AutoModelForImageTextToText if family in _ALL_VLM else AutoModelForCausalLM


def build_tiny_model(
    family: str,
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "eager",
    tokenizer: PreTrainedTokenizerBase | None = None,
    **config_kw: Any,
) -> PreTrainedModel:
    """A freshly initialised tiny model in eval mode; the same seed gives bit-identical weights.

    Weights are initialised in float32 under a forked RNG (the global torch RNG is left untouched), then cast
    to ``dtype``, so a bf16 model is exactly the cast of the fp32 one. VLMs are the
    ``...ForConditionalGeneration`` class, text families ``...ForCausalLM``. The generation config stops on
    ``<|im_end|>``/``<|endoftext|>`` and suppresses vision tokens (see :func:`safe_generate_kwargs`).
    """
    tok = tokenizer if tokenizer is not None else _default_tokenizer()
    cfg = tiny_config(family, tokenizer=tok, **config_kw)
    auto_cls = auto_model_class(family)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = auto_cls.from_config(cfg, attn_implementation=attn_implementation, dtype=torch.float32)
    if dtype != torch.float32:
        model = model.to(dtype)
    model.eval()
    gen = model.generation_config
    kw = safe_generate_kwargs(tok)
    gen.do_sample = False
    gen.eos_token_id = kw["eos_token_id"]
    gen.pad_token_id = kw["pad_token_id"]
    gen.bos_token_id = tok.bos_token_id
    if family in _ALL_VLM:
        gen.suppress_tokens = kw["suppress_tokens"]
    return model


def tiny_processor(family: str, tokenizer: PreTrainedTokenizerBase | None = None) -> Any:
    """The real processor for a VLM family (tiny pixel bounds: a 56x56 image -> 4 image tokens), else the tokenizer.

    Uses the PIL image processors (no torchvision needed); Qwen-VL processors go through
    :func:`frankenlab.compat.make_vl_processor`. A VLM processor holds a copy of ``tokenizer``; for LLaVA the
    copy's ChatML template renders image parts as ``<image>``.
    """
    _check_family(family)
    if family in TEXT_FAMILIES:
        return tokenizer if tokenizer is not None else build_tokenizer()
    # A private copy: saving a processor stamps `processor_class` into its tokenizer, which must not leak
    # into the caller's tokenizer (a text checkpoint saved with it would then claim to be a VLM processor).
    tok = copy.deepcopy(tokenizer) if tokenizer is not None else build_tokenizer()
    if family == "llava":
        from transformers import CLIPImageProcessorPil, LlavaProcessor

        template = chat_template(LLAVA_IMAGE)
        tok.chat_template = template
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": _LLAVA_IMAGE_SIZE},
            crop_size={"height": _LLAVA_IMAGE_SIZE, "width": _LLAVA_IMAGE_SIZE},
        )
        return LlavaProcessor(
            image_processor=image_processor,
            tokenizer=tok,
            patch_size=_LLAVA_PATCH,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,  # CLIP's CLS token
            image_token=LLAVA_IMAGE,
            chat_template=template,
        )

    from transformers import Qwen2VLImageProcessorPil

    patch = _QWEN_PATCH[family]
    factor = patch * _MERGE
    extra: dict[str, Any] = {}
    if family == "qwen3_vl":
        extra = {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=factor * factor * 4,  # >= 2x2 merged tokens
        max_pixels=factor * factor * 16,  # <= 4x4 merged tokens
        patch_size=patch,
        temporal_patch_size=_TEMPORAL_PATCH,
        merge_size=_MERGE,
        **extra,
    )
    if family == "qwen2_vl":
        from transformers import Qwen2VLProcessor as cls
    elif family == "qwen2_5_vl":
        from transformers import Qwen2_5_VLProcessor as cls
    else:
        from transformers import Qwen3VLProcessor as cls
    return compat.make_vl_processor(cls, image_processor, tok, chat_template=tok.chat_template)


def tiny_image(seed: int = 0, size: tuple[int, int] = (56, 56)) -> Image.Image:
    """A seeded random RGB image; ``size`` is (width, height) as in PIL."""
    width, height = size
    arr = np.random.RandomState(seed).randint(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(arr, mode="RGB")


def _model_inputs(model: PreTrainedModel, batch: Any) -> dict[str, Any]:
    from frankenlab.runtime.generate import to_model

    return to_model(model, batch)


def generate_with_image(
    model: PreTrainedModel,
    processor: Any,
    image: Image.Image,
    prompt: str,
    max_new_tokens: int = 4,
) -> str:
    """Greedy-generate an answer about ``image``; shows the one correct way to call a VLM.

    Every key the processor returns is passed on -- notably ``mm_token_type_ids``, without which Qwen2.5-VL
    (and the other Qwen-VLs) silently fall back to 1-D positions -- and vision tokens are suppressed.
    """
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    batch = processor(text=[text], images=[image], return_tensors="pt")
    inputs = _model_inputs(model, batch)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, **safe_generate_kwargs(processor))
    new_tokens = out[:, inputs["input_ids"].shape[1] :]
    return processor.batch_decode(new_tokens, skip_special_tokens=True)[0]


def generate_text(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    max_new_tokens: int = 4,
) -> str:
    """Greedy chat-formatted generation for any family (text-only input); returns the new text."""
    messages = [{"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    batch = tokenizer([text], return_tensors="pt")
    inputs = _model_inputs(model, batch)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, **safe_generate_kwargs(tokenizer))
    return tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]


def _reshard(out_dir: Path, shards: int) -> None:
    """Split ``model.safetensors`` into ``shards`` files + index, as ``save_pretrained`` names them."""
    single = out_dir / "model.safetensors"
    with safe_open(str(single), "pt") as f:
        metadata = f.metadata() or {"format": "pt"}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    names = sorted(tensors)
    if not 1 <= shards <= len(names):
        raise ValueError(f"shards={shards} must be between 1 and the number of tensors ({len(names)})")
    sizes = [tensors[n].numel() * tensors[n].element_size() for n in names]
    total = sum(sizes)
    # Contiguous split in sorted-name order, balanced by bytes, no shard empty.
    groups: list[list[str]] = [[]]
    acc = 0
    for i, (name, size) in enumerate(zip(names, sizes, strict=True)):
        still_to_open = shards - len(groups)
        if (
            groups[-1]
            and still_to_open > 0
            and (acc >= total * len(groups) / shards or len(names) - i == still_to_open)
        ):
            groups.append([])
        groups[-1].append(name)
        acc += size
    weight_map: dict[str, str] = {}
    for idx, group in enumerate(groups, start=1):
        fname = f"model-{idx:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n].contiguous() for n in group}, str(out_dir / fname), metadata=metadata)
        weight_map.update(dict.fromkeys(group, fname))
    index = {
        "metadata": {"total_parameters": sum(t.numel() for t in tensors.values()), "total_size": total},
        "weight_map": weight_map,
    }
    with open(out_dir / "model.safetensors.index.json", "w", encoding="utf-8") as fh:
        fh.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
    single.unlink()


def save_tiny_checkpoint(
    family: str,
    out_dir: str | os.PathLike[str],
    *,
    layout: Layout = "hub",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    n_llm_layers: int = 4,
    n_vision_blocks: int = 4,
    with_processor: bool = True,
    shards: int | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    **kw: Any,
) -> Path:
    """Write a normal Hugging Face checkpoint directory for a tiny ``family`` model; returns its path.

    ``layout="hub"`` is plain ``save_pretrained`` (legacy names, see the module table);
    ``layout="transformers5"`` is ``save_pretrained(save_original_format=False)``: the in-memory names, tied
    weights dropped as usual, metadata ``{"format": "pt"}``. For qwen3_vl and the text families both layouts
    are the same names. ``shards=N`` writes ``model-0000i-of-0000N.safetensors`` plus
    ``model.safetensors.index.json``. ``with_processor`` adds the tokenizer, chat template and (VLMs) the
    processor config; load the latter with :func:`frankenlab.compat.load_processor`. Extra ``kw`` go to
    :func:`tiny_config`. ``out_dir`` must not exist or be empty.
    """
    if layout not in ("hub", "transformers5"):
        raise ValueError(f"layout must be 'hub' or 'transformers5', got {layout!r}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty directory")
    out.mkdir(parents=True, exist_ok=True)
    tok = tokenizer if tokenizer is not None else build_tokenizer()
    model = build_tiny_model(
        family,
        seed=seed,
        dtype=dtype,
        tokenizer=tok,
        n_llm_layers=n_llm_layers,
        n_vision_blocks=n_vision_blocks,
        **kw,
    )
    model.save_pretrained(str(out), save_original_format=(layout == "hub"))
    if shards is not None:
        _reshard(out, shards)
    if with_processor:
        tiny_processor(family, tok).save_pretrained(str(out))
    return out


def checkpoint_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """All tensors stored in a checkpoint directory under their on-disk names (single file or sharded)."""
    path = Path(path)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"no .safetensors files in {path}")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    return tensors
