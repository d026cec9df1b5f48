"""Architecture adapters: which tensor is which, and where modules live in a loaded model."""

from frankenlab.arch.base import SECTIONS, Adapter, Rule, TensorInfo
from frankenlab.arch.registry import REGISTRY, adapter_for, supported_model_types

__all__ = ["REGISTRY", "SECTIONS", "Adapter", "Rule", "TensorInfo", "adapter_for", "supported_model_types"]
