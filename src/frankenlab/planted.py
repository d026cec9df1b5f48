"""Planted-truth pairs: RL checkpoints whose difference from IN is known by construction.

A verdict drawn from nothing is the worst bug an analysis can have, so every verdict rule needs pairs
where the right answer is known: a **null** pair (RL is a byte copy of IN: every verdict must say "no
change"), a **noise** pair (the same small relative Gaussian noise on every weight matrix of a region:
a change with no structure over depth, so no region may be singled out), and **confined** pairs (RL
changed only inside one region; see :func:`freeze_outside` and :func:`verify_confined`).

Everything here works on any supported checkpoint, 7B included: files are copied byte for byte and
the noised matrices are then rewritten in place, one tensor at a time, at their own byte ranges (same
dtype, same shape, so the same length). Tensors are chosen by region (:mod:`frankenlab.regions`) via the
checkpoint's adapter, never by name. Each output holds ``planted.json``, the pair's truth. Outputs are
written into a temporary sibling and renamed at the end: a failure leaves nothing behind.

    from frankenlab import plant_null, plant_noise
    plant_null("ckpt/in", "ckpt/null")                         # calibrate: RL = IN
    plant_noise("ckpt/in", "ckpt/noise", scale=1e-3, seed=0)   # uniform relative noise on the LLM layers
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from frankenlab.checkpoint import Checkpoint
from frankenlab.errors import FrankenlabError, OutputError, RegionError
from frankenlab.io import atomic_dir, write_json
from frankenlab.regions import Region, parse_regions

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_REGION",
    "DEFAULT_SCALE",
    "PLANTED_FILE",
    "Confinement",
    "PlantError",
    "PlantRecord",
    "freeze_outside",
    "noise_targets",
    "noised",
    "plant_noise",
    "plant_null",
    "read_planted",
    "record_confined",
    "verify_confined",
]

PLANTED_FILE = "planted.json"
#: ‖ΔW‖_F / ‖W‖_F of every noised matrix. On a float32 mini-world IN (1000 SFT steps), 1e-3 changed 1 of
#: 2000 greedy answers (3e-3: 4, 1e-2: 17; docs/miniworld.md); for bf16 see `plant_noise`.
DEFAULT_SCALE = 1e-3
#: All LLM decoder layers.
DEFAULT_REGION = "llm"
_FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


class PlantError(FrankenlabError):
    """Planting settings that cannot produce the asked-for pair (scale, region, confinement)."""


@dataclass(frozen=True)
class PlantRecord:
    """The truth of one planted pair, as written to ``planted.json``.

    ``regions`` are where change was planted (empty for null); every tensor outside them is
    bit-identical to the source. ``relative_change`` is the realised ‖ΔW‖_F / ‖W‖_F per changed matrix,
    measured on the stored values (after rounding to the checkpoint's dtype).
    """

    kind: str  # null / noise / trained
    truth: str
    source: str
    source_fingerprint: str
    fingerprint: str
    regions: tuple[str, ...] = ()
    region_spans: tuple[dict[str, Any], ...] = ()
    scale: float | None = None
    seed: int | None = None
    frozen: str | None = None
    changed: tuple[str, ...] = ()
    n_unchanged: int = 0
    relative_change: dict[str, float | None] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from frankenlab.manifest import versions

        rel = [v for v in self.relative_change.values() if v is not None]
        summary = ({"min": min(rel), "median": statistics.median(rel), "max": max(rel)} if rel else None)
        d = dataclasses.asdict(self)
        d.update(regions=list(self.regions), region_spans=list(self.region_spans), changed=list(self.changed),
                 n_changed=len(self.changed), relative_change_summary=summary, versions=versions(),
                 time_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        return d

    def write(self, out_dir: str | os.PathLike[str]) -> Path:
        return write_json(Path(out_dir) / PLANTED_FILE, self.to_dict())


def read_planted(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``planted.json`` of a planted checkpoint directory (or the file itself)."""
    p = Path(path)
    if p.is_dir():
        p = p / PLANTED_FILE
    if not p.exists():
        raise PlantError(f"{p} does not exist; is {p.parent} a planted checkpoint (frankenlab plant ...)?")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PlantError(f"{p}: not valid JSON ({exc}).") from exc


# -- shared helpers ----------------------------------------------------------------------------
def _span(region: Region) -> dict[str, Any]:
    return {"name": region.name, "section": region.section, "lo": region.lo, "hi": region.hi,
            "whole": region.whole}


def _regions(ckpt: Checkpoint, region: str | list[str], cuts: str | tuple[int, ...] | None) -> list[Region]:
    return parse_regions(region, ckpt.adapter, cuts)


def _in_regions(ckpt: Checkpoint, name: str, regions: list[Region]) -> bool:
    info = ckpt.info(name)
    return any(r.contains(info) for r in regions)


def _check_out(src: Path, out: str | os.PathLike[str], overwrite: bool) -> Path:
    """The output path, refused before any work when it would clobber data or the source."""
    target = Path(out).expanduser().resolve()
    if target.exists():
        if not target.is_dir():
            raise OutputError(f"{target} exists and is a file; choose a new directory for the planted checkpoint.")
        if any(target.iterdir()) and not overwrite:
            raise OutputError(f"{target} exists and is not empty; choose another output or pass --overwrite.")
    if target == src or src in target.parents or target in src.parents:
        raise OutputError(f"output {target} overlaps the source checkpoint {src}; write the planted checkpoint "
                          "to a separate directory.")
    return target


def _skip(directory: str, names: list[str]) -> set[str]:
    """Hidden files (download caches) and an inherited planted.json are not part of the model."""
    return {n for n in names if n.startswith(".") or n == PLANTED_FILE}


def _copy_checkpoint(src: Path, tmp: Path) -> None:
    """Byte copy of the checkpoint directory (symlinks, as in the hub cache, are followed)."""
    need = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    free = shutil.disk_usage(tmp).free
    if free < need:
        raise OutputError(f"not enough disk space in {tmp.parent}: the copy needs {need / 1e9:.2f} GB, "
                          f"{free / 1e9:.2f} GB are free. Free some space or write the output elsewhere.")
    shutil.copytree(src, tmp, ignore=_skip, dirs_exist_ok=True)


def _fingerprint(path: Path) -> str:
    with Checkpoint(path) as c:
        return c.fingerprint


def _atomic(target: Path) -> Any:
    # an existing directory was checked by `_check_out` (empty, or overwrite asked): it may be replaced
    return atomic_dir(target, overwrite=target.exists())


# -- null --------------------------------------------------------------------------------------
def plant_null(src: str | os.PathLike[str], out: str | os.PathLike[str], *, overwrite: bool = False,
               source_name: str | None = None) -> PlantRecord:
    """``out`` = a byte copy of ``src``'s files plus ``planted.json``: the pair (src, out) changed nothing.

    ``source_name`` is how ``planted.json`` names the source (default: its resolved path).
    """
    with Checkpoint(src) as c:
        root, fp = c.root, c.fingerprint
    target = _check_out(root, out, overwrite)
    with _atomic(target) as tmp:
        _copy_checkpoint(root, tmp)
        with Checkpoint(tmp) as copy:
            n = len(copy.names())
            record = PlantRecord(kind="null", truth="RL is a byte copy of IN: no tensor changed.",
                                 source=source_name or str(root),
                                 source_fingerprint=fp, fingerprint=copy.fingerprint, n_unchanged=n)
        record.write(tmp)
    return record


# -- noise -------------------------------------------------------------------------------------
def noise_targets(ckpt: Checkpoint, region: str | list[str] = DEFAULT_REGION,
                  cuts: str | tuple[int, ...] | None = None) -> list[str]:
    """On-disk names of the 2-D floating-point weight matrices inside ``region`` (norms and biases excluded)."""
    regions = _regions(ckpt, region, cuts)
    out = []
    for name in ckpt.names():
        meta = ckpt.meta(name)
        if len(meta.shape) == 2 and meta.dtype in _FLOAT_DTYPES and not ckpt.info(name).is_norm \
                and _in_regions(ckpt, name, regions):
            out.append(name)
    if not out:
        raise RegionError(f"region {region!r} holds no 2-D weight matrix in {ckpt.root}; nothing to plant noise on "
                          "(try 'llm', 'late' or 'llm:0-3').")
    return out


def _tensor_seed(seed: int, canonical: str) -> int:
    """Per-tensor seed: the noise of a matrix depends on the seed and its name only (not order or layout)."""
    digest = hashlib.sha256(f"frankenlab.planted.noise:{seed}:{canonical}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def noised(weight: torch.Tensor, scale: float, seed: int) -> torch.Tensor:
    """W + scale·(‖W‖_F/√(m·n))·N(0, 1), computed in float32, returned in W's dtype."""
    import torch

    w = weight.to(torch.float32)
    rms = torch.linalg.vector_norm(w) / math.sqrt(max(1, w.numel()))
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(w.shape, generator=g, dtype=torch.float32)
    return (w + (scale * rms) * noise).to(weight.dtype)


def _byte_offset(ckpt: Checkpoint, name: str) -> int:
    meta = ckpt.meta(name)
    raw = ckpt.index.headers[meta.file]
    return 8 + len(raw) + int(json.loads(raw)[meta.name]["data_offsets"][0])


def _pwrite_all(path: Path, data: memoryview, offset: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        while len(data):
            n = os.pwrite(fd, data, offset)
            data, offset = data[n:], offset + n
    finally:
        os.close(fd)


def plant_noise(src: str | os.PathLike[str], out: str | os.PathLike[str], *, scale: float = DEFAULT_SCALE,
                seed: int = 0, region: str | list[str] = DEFAULT_REGION, cuts: str | tuple[int, ...] | None = None,
                overwrite: bool = False, source_name: str | None = None) -> PlantRecord:
    """``out`` = ``src`` with relative noise of size ``scale`` on every weight matrix of ``region``.

    Each 2-D matrix W (m×n) becomes W + ε·(‖W‖_F/√(m·n))·N(0,1), so ‖ΔW‖_F/‖W‖_F ≈ ε for every matrix
    whatever its size or depth: a change without structure. The noise is drawn per matrix from ``seed``
    and the matrix's canonical name, in float32, and stored in the checkpoint's dtype; every other tensor
    and file is a byte copy. In bf16 rounding to the dtype's spacing (2⁻⁸..2⁻⁷ relative) sends many entries
    back to W at small ε (ε = 1e-3 realised ≈ 0.8e-3 on a tiny model); ``planted.json`` records the
    realised change of every matrix. ``source_name`` is
    how ``planted.json`` names the source (default: its resolved path).
    """
    import torch

    from frankenlab.io.shards import tensor_bytes

    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise PlantError(f"noise scale {scale!r} must be a positive finite number (relative size ‖ΔW‖/‖W‖, e.g. "
                         "1e-3).")
    with Checkpoint(src) as c:
        root, fp = c.root, c.fingerprint
        regions = _regions(c, region, cuts)
        targets = noise_targets(c, region, cuts)
        target = _check_out(root, out, overwrite)
        with _atomic(target) as tmp:
            _copy_checkpoint(root, tmp)
            rel: dict[str, float | None] = {}
            for name in targets:
                canonical = c.canonical(name)
                w = c.read(name, release=True)
                new = noised(w, float(scale), _tensor_seed(seed, canonical))
                _pwrite_all(tmp / c.meta(name).file, tensor_bytes(new), _byte_offset(c, name))
                w32 = w.to(torch.float32)
                norm = float(torch.linalg.vector_norm(w32))
                rel[canonical] = float(torch.linalg.vector_norm(new.to(torch.float32) - w32)) / norm if norm else None
            names = " and ".join(r.describe(c.adapter) for r in regions)
            with Checkpoint(tmp) as written:
                record = PlantRecord(
                    kind="noise", source=source_name or str(root), source_fingerprint=fp,
                    fingerprint=written.fingerprint,
                    truth=(f"RL = IN + relative Gaussian noise (‖ΔW‖/‖W‖ ≈ {scale:g}, seed {seed}) on every 2-D "
                           f"weight matrix of {names}; every other tensor is bit-identical."),
                    regions=tuple(r.name for r in regions), region_spans=tuple(_span(r) for r in regions),
                    scale=float(scale), seed=int(seed), changed=tuple(rel), n_unchanged=len(c.names()) - len(rel),
                    relative_change=rel, extra={"dtypes": sorted({c.meta(n).dtype for n in targets})},
                )
            record.write(tmp)
    return record


# -- confined (trained) ------------------------------------------------------------------------
def freeze_outside(model: Any, region: str | list[str], cuts: str | tuple[int, ...] | None = None) -> list[str]:
    """``requires_grad=False`` on every parameter outside ``region``, embeddings, final norm and head included.

    Why: a region freeze spec cannot name the embeddings, final norm or lm_head, so "freeze vision, early
    and mid" still lets those move; a pair meant to change only in ``late`` must freeze them too.
    Returns the names it froze.
    """
    from frankenlab.arch.registry import adapter_for

    adapter = adapter_for(model.config.to_dict())
    regions = parse_regions(region, adapter, cuts)
    frozen = []
    for name, p in model.named_parameters():
        if not any(r.contains(adapter.classify(name)) for r in regions):
            p.requires_grad_(False)
            frozen.append(name)
    if len(frozen) == len(list(model.parameters())):
        raise PlantError(f"region {region!r} holds no parameter of this model; nothing would be trained.")
    return frozen


@dataclass
class Confinement:
    """Tensors of AFTER sorted by region membership and whether their bits differ from BEFORE."""

    inside_changed: list[str] = field(default_factory=list)
    inside_unchanged: list[str] = field(default_factory=list)
    outside_changed: list[str] = field(default_factory=list)
    outside_unchanged: list[str] = field(default_factory=list)
    #: ‖after − before‖_F / ‖before‖_F of each changed floating-point tensor inside the region
    relative_change: dict[str, float | None] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Nothing outside the region changed."""
        return not self.outside_changed


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    import torch

    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        width = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        return torch.equal(a.contiguous().view(width), b.contiguous().view(width))
    return torch.equal(a, b)


def verify_confined(before: str | os.PathLike[str], after: str | os.PathLike[str], region: str | list[str],
                    cuts: str | tuple[int, ...] | None = None) -> Confinement:
    """Stream both checkpoints and check that every tensor outside ``region`` is bit-identical."""
    with Checkpoint(before, label="BEFORE") as a, Checkpoint(after, label="AFTER") as b:
        names_a, names_b = set(a.canonical_names()), set(b.canonical_names())
        if names_a != names_b:
            diff = sorted(names_a ^ names_b)
            raise PlantError(f"BEFORE and AFTER hold different tensors ({len(diff)} differ, first: "
                             f"{', '.join(diff[:3])}); they are not one model before and after training.")
        regions = _regions(a, region, cuts)
        result = Confinement()
        for name in a.canonical_names():
            ta, tb = a.read(name, release=True), b.read(name, release=True)
            same = _same_bits(ta, tb)
            if _in_regions(a, name, regions):
                (result.inside_unchanged if same else result.inside_changed).append(name)
                if not same and ta.is_floating_point() and ta.shape == tb.shape:
                    result.relative_change[name] = _relative(ta, tb)
            else:
                (result.outside_unchanged if same else result.outside_changed).append(name)
        return result


def _relative(before: torch.Tensor, after: torch.Tensor) -> float | None:
    import torch

    w = before.to(torch.float32)
    norm = float(torch.linalg.vector_norm(w))
    return float(torch.linalg.vector_norm(after.to(torch.float32) - w)) / norm if norm else None


def record_confined(before: str | os.PathLike[str], after: str | os.PathLike[str], region: str, *,
                    frozen: str | None = None, seed: int | None = None, source_name: str | None = None,
                    how: str = "training", extra: dict[str, Any] | None = None) -> PlantRecord:
    """The truth of a pair (BEFORE, AFTER) whose change is confined to ``region``, proven on the saved files.

    For RL runs trained with everything outside ``region`` frozen (see :func:`freeze_outside`): raises a
    :class:`PlantError` when any tensor outside the region changed, and says so in the truth when none
    inside did (the pair is then null in effect). Write it next to AFTER with ``record.write(after)``.
    """
    check = verify_confined(before, after, region)
    if not check.ok:
        raise PlantError(f"{after}: {len(check.outside_changed)} tensor(s) outside {region!r} differ from {before} "
                         f"(first: {', '.join(check.outside_changed[:3])}); the change is not confined to {region!r}.")
    with Checkpoint(before) as a, Checkpoint(after) as b:
        regions = _regions(a, region, None)
        span = " and ".join(r.describe(a.adapter) for r in regions)
        root, fp_a, fp_b = a.root, a.fingerprint, b.fingerprint
    what = (f"only tensors of {span} differ" if check.inside_changed
            else f"no tensor differs: the {how} changed nothing inside {span} either (null in effect)")
    return PlantRecord(
        kind="trained", source=source_name or str(root), source_fingerprint=fp_a, fingerprint=fp_b,
        truth=f"RL = IN after {how} with everything outside {region} frozen{f' ({frozen})' if frozen else ''}; {what}.",
        regions=tuple(r.name for r in regions), region_spans=tuple(_span(r) for r in regions), seed=seed,
        frozen=frozen, changed=tuple(check.inside_changed),
        n_unchanged=len(check.inside_unchanged) + len(check.outside_unchanged),
        relative_change=check.relative_change, extra=dict(extra or {}),
    )
