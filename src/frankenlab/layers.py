"""The unified layer index: vision blocks −depth..−1, projector 0, LLM layers 1..n.

This matches the paper's convention, so plots over the index compare with its figures.
"""

from __future__ import annotations

from dataclasses import dataclass

from frankenlab.arch.base import Adapter


@dataclass(frozen=True)
class UnifiedLayer:
    index: int
    section: str  # vision / projector / llm
    block: int | None  # index within its own stack
    module_paths: tuple[str, ...]  # where it lives in a loaded model

    @property
    def label(self) -> str:
        if self.section == "projector":
            return "projector"
        return f"{self.section}.{self.block}"


def layer_map(adapter: Adapter) -> list[UnifiedLayer]:
    """Every unified layer of the model, in index order."""
    out: list[UnifiedLayer] = []
    if adapter.has_vision:
        for k in range(adapter.n_vision_blocks):
            out.append(UnifiedLayer(adapter.unified_index("vision", k), "vision", k, (adapter.vision_block_path(k),)))
        out.append(UnifiedLayer(0, "projector", None, adapter.projector_paths))
    for k in range(adapter.n_llm_layers):
        out.append(UnifiedLayer(adapter.unified_index("llm", k), "llm", k, (adapter.llm_layer_path(k),)))
    return out


def llm_block_of(unified: int) -> int:
    """LLM decoder layer number (0-based) for a positive unified index."""
    if unified < 1:
        raise ValueError(f"unified index {unified} is not an LLM layer")
    return unified - 1
