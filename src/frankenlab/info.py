"""What a checkpoint is: architecture, layer map, regions, sizes; from headers only."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from frankenlab.arch.base import SECTIONS
from frankenlab.checkpoint.reader import Checkpoint
from frankenlab.layers import layer_map
from frankenlab.regions import standard_regions


def _common_prefixes(names: list[str]) -> list[str]:
    """The module path(s) the files store a layer's tensors under: the longest common dotted prefix."""
    if not names:
        return []
    parts = [n.split(".")[:-1] for n in names]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return [".".join(common)] if common else sorted({".".join(p[:-1]) for p in parts})


def describe(ckpt: Checkpoint, *, cuts: str | None = None) -> dict[str, Any]:
    """A JSON-able description of `ckpt`; every tensor is classified (unknown ones raise)."""
    adapter = ckpt.adapter
    by_layer: dict[int, list[str]] = defaultdict(list)
    stored: dict[int, list[str]] = defaultdict(list)
    sections: dict[str, dict[str, Any]] = {s: {"params": 0, "bytes": 0, "tensors": 0} for s in SECTIONS}
    dtypes: Counter[str] = Counter()
    non_layer: dict[str, list[str]] = defaultdict(list)
    for disk in ckpt.names():
        meta = ckpt.meta(disk)
        info = ckpt.info(disk)
        sec = sections[info.section]
        sec["params"] += meta.numel
        sec["bytes"] += meta.nbytes
        sec["tensors"] += 1
        dtypes[meta.dtype] += 1
        if info.layer is not None:
            by_layer[info.layer].append(info.name)
            stored[info.layer].append(disk)
        else:
            non_layer[info.section].append(info.name)
    layers = [
        {
            "index": ul.index,
            "section": ul.section,
            "block": ul.block,
            "module_paths": list(ul.module_paths),
            "stored_paths": _common_prefixes(stored.get(ul.index, [])),
            "tensors": sorted(by_layer.get(ul.index, [])),
        }
        for ul in layer_map(adapter)
    ]
    regions = [
        {
            "name": r.name,
            "section": r.section,
            "first_block": r.lo,
            "last_block": r.hi,
            "unified": list(r.unified_span(adapter)),
        }
        for r in standard_regions(adapter, cuts)
    ]
    return {
        "path": str(ckpt.root),
        "model_type": ckpt.model_type,
        "family": adapter.family,
        "layout": ckpt.layout,
        "fingerprint": ckpt.fingerprint,
        "n_llm_layers": adapter.n_llm_layers,
        "n_vision_blocks": adapter.n_vision_blocks,
        "n_tensors": len(ckpt.names()),
        "params": sum(s["params"] for s in sections.values()),
        "bytes": ckpt.index.total_bytes(),
        "dtypes": dict(dtypes),
        "sections": {k: v for k, v in sections.items() if v["tensors"]},
        "layers": layers,
        "non_layer_tensors": {k: sorted(v) for k, v in non_layer.items()},
        "regions": regions,
        "files": list(ckpt.index.files),
    }
