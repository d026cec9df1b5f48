"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: a ViT with a patch merger feeding a Qwen decoder."""

from __future__ import annotations

from typing import ClassVar

from frankenlab.arch.base import Adapter, Rule, decoder_rules

_VIS = r"^model\.visual\.blocks\.(?P<idx>\d+)\."
_W = r"(weight|bias)$"

_LLM_RULES = decoder_rules("model.language_model")
_VISION_COMMON = (
    Rule(_VIS + r"attn\.(?P<mod>qkv|proj)\." + _W, "vision", stack="vision"),
    Rule(_VIS + r"norm[12]\." + _W, "vision", kind="norm", stack="vision", norm=True),
    Rule(r"^model\.visual\.patch_embed\.proj\." + _W, "vision", kind="patch_embed"),
)
_QWEN2_HUB = (
    (r"^visual\.", "model.visual."),
    (r"^model\.(?!language_model\.|visual\.)", "model.language_model."),
)
_QWEN2_TO_HUB = (
    (r"^model\.visual\.", "visual."),
    (r"^model\.language_model\.", "model."),
)


class _QwenVL(Adapter):
    has_vision: ClassVar[bool] = True
    llm_layers_path: ClassVar[str] = "model.language_model.layers"
    vision_blocks_path: ClassVar[str | None] = "model.visual.blocks"
    projector_paths: ClassVar[tuple[str, ...]] = ("model.visual.merger",)
    embed_path: ClassVar[str] = "model.language_model.embed_tokens"
    final_norm_path: ClassVar[str] = "model.language_model.norm"
    vision_blocks_keys: ClassVar[tuple[str, ...]] = ("vision_config.depth", "vision_config.num_hidden_layers")


class Qwen2VLAdapter(_QwenVL):
    family = "qwen2_vl"
    model_types = ("qwen2_vl",)
    hub_to_canonical = _QWEN2_HUB
    canonical_to_hub = _QWEN2_TO_HUB
    rules = _LLM_RULES + _VISION_COMMON + (
        Rule(_VIS + r"mlp\.(?P<mod>fc1|fc2)\." + _W, "vision", stack="vision"),
        Rule(r"^model\.visual\.merger\.(ln_q|mlp\.\d+)\." + _W, "projector", kind="projector"),
    )


class Qwen25VLAdapter(_QwenVL):
    family = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    hub_to_canonical = _QWEN2_HUB
    canonical_to_hub = _QWEN2_TO_HUB
    rules = _LLM_RULES + _VISION_COMMON + (
        Rule(_VIS + r"mlp\.(?P<mod>gate_proj|up_proj|down_proj)\." + _W, "vision", stack="vision"),
        Rule(r"^model\.visual\.merger\.(ln_q|mlp\.\d+)\." + _W, "projector", kind="projector"),
    )


class Qwen3VLAdapter(_QwenVL):
    """Qwen3-VL checkpoints on the hub already use the in-memory names: one layout."""

    family = "qwen3_vl"
    model_types = ("qwen3_vl",)
    projector_paths = ("model.visual.merger", "model.visual.deepstack_merger_list")
    rules = _LLM_RULES + _VISION_COMMON + (
        Rule(_VIS + r"mlp\.(?P<mod>linear_fc1|linear_fc2)\." + _W, "vision", stack="vision"),
        Rule(r"^model\.visual\.pos_embed\.weight$", "vision", kind="pos_embed"),
        Rule(r"^model\.visual\.merger\.(norm|linear_fc1|linear_fc2)\." + _W, "projector", kind="projector"),
        Rule(r"^model\.visual\.deepstack_merger_list\.\d+\.(norm|linear_fc1|linear_fc2)\." + _W,
             "projector", kind="projector"),
    )
