"""Offline test fixtures: a tiny deterministic tokenizer and tiny seeded models of every supported family.

Everything here runs without network access and in well under a second per model, so every test in the
project can build real Hugging Face checkpoints instead of mocking them. The builders themselves live in
:mod:`frankenlab.tiny` (the mini-world needs them); this package re-exports them next to the test-only
helpers (saved checkpoints, random images, generation one-liners). Product code never imports it.
"""

from __future__ import annotations

from frankenlab.testing.models import (
    ALL_FAMILIES,
    FAMILIES,
    QWEN_VL_FAMILIES,
    TEXT_FAMILIES,
    VISION_SPECIAL_TOKENS,
    VLM_FAMILIES,
    auto_model_class,
    available_families,
    build_tiny_model,
    checkpoint_state_dict,
    generate_text,
    generate_with_image,
    safe_generate_kwargs,
    save_tiny_checkpoint,
    suppressed_token_ids,
    tiny_config,
    tiny_image,
    tiny_processor,
)
from frankenlab.testing.tokenizer import SPECIAL_TOKENS, build_tokenizer, chat_template

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
    "checkpoint_state_dict",
    "generate_text",
    "generate_with_image",
    "safe_generate_kwargs",
    "save_tiny_checkpoint",
    "suppressed_token_ids",
    "tiny_config",
    "tiny_image",
    "tiny_processor",
]
