"""Named spans of the unified index: sections, early/mid/late thirds, custom cuts, explicit spans.

Strings such as `late`, `8,20` and `llm:0-8` are parsed once into `Region` / `Partition` objects;
every error says what the valid range is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from frankenlab.arch.base import Adapter, TensorInfo
from frankenlab.errors import RegionError

THIRDS = ("early", "mid", "late")
_SPAN = re.compile(r"^(?P<section>llm|vision):(?P<lo>\d+)(?:-(?P<hi>\d+))?$")


@dataclass(frozen=True)
class Region:
    """A set of blocks of one stack (or a whole section, including its non-block tensors).

    `lo`/`hi` are block numbers within the section's stack, inclusive; `whole` marks a region that
    is an entire section (so `vision` also covers the patch embedding, `llm` all decoder layers).
    """

    name: str
    section: str  # llm / vision / projector
    lo: int
    hi: int
    whole: bool = False

    def contains(self, info: TensorInfo) -> bool:
        if info.section != self.section:
            return False
        if self.whole:
            return True
        return info.block is not None and self.lo <= info.block <= self.hi

    def blocks(self) -> range:
        return range(self.lo, self.hi + 1)

    def unified_span(self, adapter: Adapter) -> tuple[int, int]:
        if self.section == "projector":
            return (0, 0)
        return (adapter.unified_index(self.section, self.lo), adapter.unified_index(self.section, self.hi))

    def describe(self, adapter: Adapter | None = None) -> str:
        if self.section == "projector":
            return f"{self.name} (projector)"
        span = f"{self.section} layers {self.lo}–{self.hi}"
        if adapter is not None:
            u = self.unified_span(adapter)
            span += f", unified {u[0]}..{u[1]}"
        return f"{self.name} ({span})"


def default_cuts(n_llm_layers: int) -> tuple[int, int]:
    """Thirds at n//3 and 2n//3: 28 → 0–8/9–17/18–27, 36 → 12/12/12."""
    return (n_llm_layers // 3, 2 * n_llm_layers // 3)


def parse_cuts(cuts: str | tuple[int, ...] | list[int] | None, n_llm_layers: int) -> tuple[int, ...]:
    """`"8,20"` → (8, 20): strictly increasing, each in 1..n-1, so no part is empty."""
    if cuts is None or cuts == "":
        if n_llm_layers < 3:
            raise RegionError(
                f"the model has {n_llm_layers} LLM layer(s): default thirds need at least 3; pass cuts explicitly "
                "(e.g. --cuts 1 for two parts)."
            )
        return default_cuts(n_llm_layers)
    if isinstance(cuts, str):
        try:
            values = tuple(int(c.strip()) for c in cuts.split(",") if c.strip())
        except ValueError as exc:
            raise RegionError(f"cuts {cuts!r}: expected comma-separated integers such as '8,20'.") from exc
    else:
        values = tuple(int(c) for c in cuts)
    if not values:
        raise RegionError("cuts: give at least one cut, e.g. '8,20'.")
    for c in values:
        if not 1 <= c <= n_llm_layers - 1:
            raise RegionError(
                f"cut {c} is out of range: the model has {n_llm_layers} LLM layers, so cuts must lie in "
                f"1..{n_llm_layers - 1}."
            )
    if any(b <= a for a, b in zip(values, values[1:])):
        raise RegionError(f"cuts {list(values)} must be strictly increasing.")
    return values


@dataclass(frozen=True)
class Partition:
    """LLM layers split at cuts into consecutive parts (early/mid/late for two cuts)."""

    n_llm_layers: int
    cuts: tuple[int, ...]

    @classmethod
    def make(cls, n_llm_layers: int, cuts: str | tuple[int, ...] | list[int] | None = None) -> Partition:
        return cls(n_llm_layers, parse_cuts(cuts, n_llm_layers))

    @property
    def names(self) -> tuple[str, ...]:
        if len(self.cuts) == 2:
            return THIRDS
        return tuple(f"part{i}" for i in range(len(self.cuts) + 1))

    def regions(self) -> list[Region]:
        bounds = (0, *self.cuts, self.n_llm_layers)
        return [Region(name, "llm", lo, hi - 1) for name, lo, hi in zip(self.names, bounds, bounds[1:])]

    def region(self, name: str) -> Region:
        for r in self.regions():
            if r.name == name:
                return r
        raise RegionError(f"no part named {name!r}; this partition has {', '.join(self.names)}.")

    def part_of(self, llm_block: int) -> str:
        for r in self.regions():
            if r.lo <= llm_block <= r.hi:
                return r.name
        raise RegionError(f"LLM layer {llm_block} is outside 0..{self.n_llm_layers - 1}.")


def parse_region(spec: str, adapter: Adapter, cuts: str | tuple[int, ...] | None = None) -> Region:
    """`vision`, `projector`, `llm`, `early|mid|late` (or partN), `llm:9-17`, `vision:0-15`."""
    text = spec.strip()
    n_llm, n_vis = adapter.n_llm_layers, adapter.n_vision_blocks
    valid = "llm, early, mid, late, llm:A-B"
    if adapter.has_vision:
        valid = "vision, projector, " + valid + ", vision:A-B"
    if text == "llm":
        return Region("llm", "llm", 0, n_llm - 1, whole=True)
    if text in ("vision", "projector"):
        if not adapter.has_vision:
            raise RegionError(f"region {text!r}: this {adapter.family} model has no vision encoder; valid: {valid}.")
        if text == "vision":
            return Region("vision", "vision", 0, n_vis - 1, whole=True)
        return Region("projector", "projector", 0, 0, whole=True)
    partition = Partition.make(n_llm, cuts)
    if text in partition.names:
        return partition.region(text)
    m = _SPAN.match(text)
    if m:
        section = m.group("section")
        lo = int(m.group("lo"))
        hi = int(m.group("hi")) if m.group("hi") is not None else lo
        n = n_llm if section == "llm" else n_vis
        if section == "vision" and not adapter.has_vision:
            raise RegionError(f"region {text!r}: this {adapter.family} model has no vision encoder.")
        if lo > hi or hi >= n:
            raise RegionError(
                f"region {text!r} is out of range: the model has {n} {section} "
                f"{'layers' if section == 'llm' else 'blocks'} (valid {section}:0-{n - 1})."
            )
        return Region(text, section, lo, hi)
    raise RegionError(f"unknown region {spec!r}; valid forms: {valid}.")


def parse_regions(specs: str | list[str], adapter: Adapter, cuts: str | tuple[int, ...] | None = None) -> list[Region]:
    """Comma-separated or listed region specs, each parsed by `parse_region`."""
    items = specs.split(",") if isinstance(specs, str) else list(specs)
    items = [s for s in (i.strip() for i in items) if s]
    if not items:
        raise RegionError("no region given; e.g. 'late' or 'llm:9-17'.")
    return [parse_region(s, adapter, cuts) for s in items]


def standard_regions(adapter: Adapter, cuts: str | tuple[int, ...] | None = None) -> list[Region]:
    """vision, projector (VLMs only), then the LLM partition's parts (the whole LLM when it is too
    shallow for thirds and no cuts are given)."""
    out: list[Region] = []
    if adapter.has_vision:
        out += [parse_region("vision", adapter), parse_region("projector", adapter)]
    if cuts is None and adapter.n_llm_layers < 3:
        return out + [parse_region("llm", adapter)]
    out += Partition.make(adapter.n_llm_layers, cuts).regions()
    return out
