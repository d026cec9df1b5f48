"""Runtime services: loading checkpoints into transformers models (transformers imported lazily)."""

from frankenlab.runtime.load import load, load_model, load_processor, resolve_torch_dtype

__all__ = ["load", "load_model", "load_processor", "resolve_torch_dtype"]
