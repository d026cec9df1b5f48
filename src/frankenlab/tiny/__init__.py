"""Tiny Qwen-shaped models and a byte-level BPE tokenizer built from small configs, fully offline.

A service (L1), not a test fixture: the mini-world builds its toy Qwen2.5-VL from these builders.
Test-only helpers (saved checkpoints in either key layout, random images, generation one-liners) stay in
the ``testing`` package, which re-exports everything here.
"""

from __future__ import annotations

from frankenlab.tiny.models import (
    ALL_FAMILIES,
    FAMILIES,
    QWEN_VL_FAMILIES,
    TEXT_FAMILIES,
    VISION_SPECIAL_TOKENS,
    VLM_FAMILIES,
    auto_model_class,
    available_families,
    build_tiny_model,
    safe_generate_kwargs,
    suppressed_token_ids,
    tiny_config,
    tiny_processor,
)
from frankenlab.tiny.tokenizer import SPECIAL_TOKENS, build_tokenizer, chat_template

__all__ = [
    "ALL_FAMILIES",
    "FAMILIES",
    "QWEN_VL_FAMILIES",
    "SPECIAL_TOKENS",
    "TEXT_FAMILIES",
    "VISION_SPECIAL_TOKENS",
    "VLM_FAMILIES",
    "auto_model_class",
    "available_families",
    "build_tiny_model",
    "build_tokenizer",
    "chat_template",
    "safe_generate_kwargs",
    "suppressed_token_ids",
    "tiny_config",
    "tiny_processor",
]
