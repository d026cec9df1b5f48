"""Text-only decoders (Llama, Mistral, Qwen2, Qwen3): one layout, no vision, no projector."""

from __future__ import annotations

from frankenlab.arch.base import Adapter, Rule

_LLM = r"^model\.layers\.(?P<idx>\d+)\."
_W = r"(weight|bias)$"


class TextAdapter(Adapter):
    family = "text"
    model_types = ("llama", "mistral", "qwen2", "qwen3")
    rules = (
        Rule(_LLM + r"self_attn\.(?P<mod>[qkvo]_proj)\." + _W, "llm", stack="llm"),
        Rule(_LLM + r"mlp\.(?P<mod>gate_proj|up_proj|down_proj)\." + _W, "llm", stack="llm"),
        Rule(_LLM + r"(input_layernorm|post_attention_layernorm|self_attn\.[qk]_norm)\.weight$", "llm",
             kind="norm", stack="llm", norm=True),
        Rule(r"^model\.embed_tokens\.weight$", "embed", kind="embed"),
        Rule(r"^model\.norm\.weight$", "other", kind="norm", norm=True),
        Rule(r"^lm_head\.weight$", "head", kind="head"),
    )
    llm_layers_keys = ("num_hidden_layers", "text_config.num_hidden_layers")
