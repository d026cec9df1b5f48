"""Text-only decoders (Llama, Mistral, Qwen2, Qwen3): one layout, no vision, no projector."""

from __future__ import annotations

from frankenlab.arch.base import Adapter, decoder_rules


class TextAdapter(Adapter):
    family = "text"
    model_types = ("llama", "mistral", "qwen2", "qwen3")
    rules = decoder_rules("model")
    llm_layers_keys = ("num_hidden_layers", "text_config.num_hidden_layers")
