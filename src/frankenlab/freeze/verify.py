"""Prove on saved checkpoints that frozen tensors are bit-identical.

Checking in memory is not enough: ZeRO-3 and FSDP shard and re-gather parameters, optimizers with
weight decay move "frozen" weights when a parameter group is misconfigured, and a save can recast
dtypes. So we stream the two checkpoints as written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from frankenlab.checkpoint.reader import Checkpoint, open_checkpoint
from frankenlab.errors import ArchitectureError, FreezeError
from frankenlab.freeze.spec import parse_freeze


@dataclass
class VerifyResult:
    frozen_identical: list[str] = field(default_factory=list)
    frozen_changed: list[str] = field(default_factory=list)
    other_changed: list[str] = field(default_factory=list)
    other_unchanged: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.frozen_changed


def _identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.is_floating_point:
        # compare bit patterns: NaNs and -0.0 count as what they are
        width = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        return torch.equal(a.contiguous().view(width), b.contiguous().view(width))
    return torch.equal(a, b)


def verify_frozen(before: str | Checkpoint, after: str | Checkpoint, frozen: str | list[str],
                  cuts: str | None = None) -> VerifyResult:
    """Stream both checkpoints tensor by tensor and sort tensors into frozen/other × same/changed."""
    a = open_checkpoint(before, label="BEFORE")
    b = open_checkpoint(after, label="AFTER")
    try:
        if a.model_type != b.model_type or (a.adapter.n_llm_layers, a.adapter.n_vision_blocks) != (
                b.adapter.n_llm_layers, b.adapter.n_vision_blocks):
            raise ArchitectureError(
                f"BEFORE ({a.model_type}, {a.adapter.n_llm_layers} LLM layers) and AFTER ({b.model_type}, "
                f"{b.adapter.n_llm_layers} LLM layers) are not the same architecture."
            )
        spec = parse_freeze(frozen, a.adapter, cuts)
        names_a = set(a.canonical_names())
        names_b = set(b.canonical_names())
        if names_a != names_b:
            diff = sorted(names_a ^ names_b)
            raise FreezeError(
                f"BEFORE and AFTER hold different tensors ({len(diff)} differ, first: {', '.join(diff[:3])})."
            )
        chosen = set(spec.select(a.adapter, sorted(names_a)))
        result = VerifyResult()
        for name in a.canonical_names():
            same = _identical(a.read(name, release=True), b.read(name, release=True))
            if name in chosen:
                (result.frozen_identical if same else result.frozen_changed).append(name)
            else:
                (result.other_unchanged if same else result.other_changed).append(name)
        return result
    finally:
        if not isinstance(before, Checkpoint):
            a.close()
        if not isinstance(after, Checkpoint):
            b.close()
