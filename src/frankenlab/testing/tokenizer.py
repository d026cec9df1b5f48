"""The tiny offline tokenizer, re-exported for tests: it lives in :mod:`frankenlab.tiny.tokenizer`.

The mini-world (product code) trains its vocabulary with it, so it moved out of ``testing``; every name
stays importable from here so tests keep one import path for fixtures.
"""

from __future__ import annotations

from frankenlab.tiny.tokenizer import (
    DEFAULT_CORPUS,
    ENDOFTEXT,
    IM_END,
    IM_START,
    IMAGE_PAD,
    LLAVA_IMAGE,
    MAX_VOCAB,
    QWEN2_PRETOKENIZE_REGEX,
    QWEN_IMAGE_PLACEHOLDER,
    QWEN_VIDEO_PLACEHOLDER,
    SPECIAL_TOKENS,
    VIDEO_PAD,
    VISION_END,
    VISION_START,
    build_tokenizer,
    chat_template,
)

__all__ = [
    "DEFAULT_CORPUS",
    "ENDOFTEXT",
    "IMAGE_PAD",
    "IM_END",
    "IM_START",
    "LLAVA_IMAGE",
    "MAX_VOCAB",
    "QWEN2_PRETOKENIZE_REGEX",
    "QWEN_IMAGE_PLACEHOLDER",
    "QWEN_VIDEO_PLACEHOLDER",
    "SPECIAL_TOKENS",
    "VIDEO_PAD",
    "VISION_END",
    "VISION_START",
    "build_tokenizer",
    "chat_template",
]
