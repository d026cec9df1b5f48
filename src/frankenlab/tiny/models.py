"""Tiny seeded models of every family frankenlab analyses, built from small configs fully offline.

Product code, not a test fixture: the mini-world builds its toy Qwen2.5-VL from :func:`tiny_config` and
:func:`tiny_processor`, so these builders live here and the ``testing`` package re-exports them.

All models use ``attn_implementation="eager"`` by default: it is the reference implementation, supports
``output_attentions``, and is deterministic on CPU. Checkpoints reloaded with ``from_pretrained`` default to
``sdpa``; compare their logits with a tolerance (~1e-5), or pass ``attn_implementation="eager"`` when loading.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from frankenlab import compat
from frankenlab.tiny.tokenizer import (
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

__all__ = [
    "ALL_FAMILIES",
    "FAMILIES",
    "QWEN_VL_FAMILIES",
    "TEXT_FAMILIES",
    "VISION_SPECIAL_TOKENS",
    "VLM_FAMILIES",
    "auto_model_class",
    "available_families",
    "build_tiny_model",
    "safe_generate_kwargs",
    "suppressed_token_ids",
    "tiny_config",
    "tiny_processor",
]

ALL_FAMILIES: tuple[str, ...] = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava", "llama", "qwen2", "qwen3")
_ALL_VLM: tuple[str, ...] = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "llava")
_ALL_QWEN_VL: tuple[str, ...] = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

#: Vision special tokens that must never be generated: a generated ``<|image_pad|>`` (or ``<image>``) makes
#: the next forward look for image features that do not exist.
VISION_SPECIAL_TOKENS: tuple[str, ...] = (VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD, LLAVA_IMAGE)

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
