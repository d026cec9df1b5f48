"""Region specs → parameter names → requires_grad, refusing specs that freeze nothing.

Other trainers' freeze flags are known to match nothing silently (a typo in a module pattern
freezes zero parameters and the run looks fine); here a spec that matches no parameter is an error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from frankenlab.arch.base import Adapter
from frankenlab.errors import FreezeError
from frankenlab.regions import Region, parse_cuts, parse_regions, standard_regions


@dataclass(frozen=True)
class FreezeSpec:
    """Parsed regions to freeze, with the original text for manifests."""

    text: str
    regions: tuple[Region, ...]
    cuts: tuple[int, ...] | None = None

    def matches(self, adapter: Adapter, canonical: str) -> bool:
        info = adapter.classify(canonical)
        return any(r.contains(info) for r in self.regions)

    def select(self, adapter: Adapter, names: Iterable[str]) -> list[str]:
        """The canonical names this spec freezes; an error when that is none."""
        names = list(names)
        chosen = [n for n in names if self.matches(adapter, n)]
        if not chosen:
            raise FreezeError(
                f"freeze spec {self.text!r} matches none of the {len(names)} parameters; nothing would be "
                "frozen. Check the region names (e.g. early, mid, late, vision, projector, llm:9-17)."
            )
        for region in self.regions:
            if not any(region.contains(adapter.classify(n)) for n in chosen):
                raise FreezeError(f"freeze spec part {region.name!r} matches no parameter of this model.")
        return chosen


def parse_freeze(spec: str | list[str], adapter: Adapter, cuts: str | tuple[int, ...] | None = None) -> FreezeSpec:
    text = spec if isinstance(spec, str) else ",".join(spec)
    regions = tuple(parse_regions(spec, adapter, cuts))
    parsed_cuts = None if cuts is None else parse_cuts(cuts, adapter.n_llm_layers)
    return FreezeSpec(text=text, regions=regions, cuts=parsed_cuts)


@dataclass
class FreezeReport:
    """What a freeze did, per region of the standard partition."""

    frozen_names: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n_frozen_tensors(self) -> int:
        return len(self.frozen_names)


def region_counts(model: Any, adapter: Adapter, cuts: str | tuple[int, ...] | None = None) -> list[dict[str, Any]]:
    """Parameters and trainable parameters per region (vision, projector, thirds, and the rest)."""
    regions = standard_regions(adapter, cuts)
    rows = {r.name: {"region": r.name, "params": 0, "trainable": 0} for r in regions}
    rows["rest"] = {"region": "rest", "params": 0, "trainable": 0}
    for name, p in model.named_parameters():
        info = adapter.classify(name)
        key = next((r.name for r in regions if r.contains(info)), "rest")
        rows[key]["params"] += p.numel()
        rows[key]["trainable"] += p.numel() if p.requires_grad else 0
    return list(rows.values())


def apply_freeze(model: Any, adapter: Adapter, spec: FreezeSpec,
                 cuts: str | tuple[int, ...] | None = None) -> FreezeReport:
    """Set requires_grad=False on every parameter the spec selects (permanent; see `frozen`)."""
    params = dict(model.named_parameters())
    chosen = spec.select(adapter, params)
    for name in chosen:
        params[name].requires_grad_(False)
    rows = region_counts(model, adapter, cuts if cuts is not None else spec.cuts)
    return FreezeReport(frozen_names=chosen, rows=rows)


@contextlib.contextmanager
def kept_requires_grad(model: Any) -> Iterator[None]:
    """Whatever the block freezes or unfreezes, every parameter's requires_grad is as before afterwards,
    also on error (training code that freezes for one run must not leak it into the caller's model)."""
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        yield
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(before[n])


@contextlib.contextmanager
def frozen(model: Any, adapter: Adapter, spec: FreezeSpec) -> Iterator[FreezeReport]:
    """Freeze for the duration of the block; requires_grad is restored even on error."""
    with kept_requires_grad(model):
        yield apply_freeze(model, adapter, spec)
