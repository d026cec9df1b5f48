"""model_type → adapter. Filled once at import from the family modules; read-only after."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from frankenlab.arch.base import Adapter
from frankenlab.arch.llava import LlavaAdapter
from frankenlab.arch.qwen_vl import Qwen2VLAdapter, Qwen3VLAdapter, Qwen25VLAdapter
from frankenlab.arch.text import TextAdapter
from frankenlab.errors import ArchitectureError

_ADAPTERS: tuple[type[Adapter], ...] = (Qwen2VLAdapter, Qwen25VLAdapter, Qwen3VLAdapter, LlavaAdapter, TextAdapter)

REGISTRY: MappingProxyType[str, type[Adapter]] = MappingProxyType(
    {mt: cls for cls in _ADAPTERS for mt in cls.model_types}
)


def supported_model_types() -> list[str]:
    return sorted(REGISTRY)


def adapter_for(config: dict[str, Any]) -> Adapter:
    """The adapter for a parsed config.json; unknown types name what is supported."""
    model_type = config.get("model_type")
    cls = REGISTRY.get(str(model_type))
    if cls is None:
        raise ArchitectureError(
            f"unsupported model_type {model_type!r}. Supported: {', '.join(supported_model_types())}. "
            "To add one, write an adapter table (see docs/adding-an-architecture.md)."
        )
    return cls(config)
