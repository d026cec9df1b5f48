"""LLaVA (llava-hf layout): a CLIP-style vision tower, an MLP projector, a Llama-style decoder."""

from __future__ import annotations

from typing import ClassVar

from frankenlab.arch.base import Adapter, Rule, decoder_rules

_VIS = r"^model\.vision_tower\.encoder\.layers\.(?P<idx>\d+)\."
_W = r"(weight|bias)$"


class LlavaAdapter(Adapter):
    family = "llava"
    model_types = ("llava",)
    has_vision: ClassVar[bool] = True
    hub_to_canonical = (
        (r"^language_model\.lm_head\.", "lm_head."),
        (r"^language_model\.model\.", "model.language_model."),
        (r"^vision_tower\.vision_model\.", "model.vision_tower."),
        (r"^vision_tower\.", "model.vision_tower."),
        (r"^multi_modal_projector\.", "model.multi_modal_projector."),
    )
    canonical_to_hub = (
        (r"^lm_head\.", "language_model.lm_head."),
        (r"^model\.language_model\.", "language_model.model."),
        (r"^model\.vision_tower\.", "vision_tower."),
        (r"^model\.multi_modal_projector\.", "multi_modal_projector."),
    )
    rules = decoder_rules("model.language_model") + (
        Rule(_VIS + r"self_attn\.(?P<mod>[qkv]_proj|out_proj)\." + _W, "vision", stack="vision"),
        Rule(_VIS + r"mlp\.(?P<mod>fc1|fc2)\." + _W, "vision", stack="vision"),
        Rule(_VIS + r"layer_norm[12]\." + _W, "vision", kind="norm", stack="vision", norm=True),
        Rule(r"^model\.vision_tower\.embeddings\.(class_embedding|patch_embedding\.weight)$", "vision",
             kind="patch_embed"),
        Rule(r"^model\.vision_tower\.embeddings\.position_embedding\.weight$", "vision", kind="pos_embed"),
        Rule(r"^model\.vision_tower\.(pre_layrnorm|post_layernorm)\." + _W, "vision", kind="norm", norm=True),
        Rule(r"^model\.multi_modal_projector\.linear_\d+\." + _W, "projector", kind="projector"),
    )
    llm_layers_path = "model.language_model.layers"
    vision_blocks_path = "model.vision_tower.encoder.layers"
    projector_paths = ("model.multi_modal_projector",)
    embed_path = "model.language_model.embed_tokens"
    final_norm_path = "model.language_model.norm"
    vision_blocks_keys = ("vision_config.num_hidden_layers",)
