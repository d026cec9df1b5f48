"""Walk two or three checkpoints tensor by tensor: float32 deltas, metrics, a resumable cache.

Only one tensor (from each checkpoint) is in memory at a time, streamed in blocks, so peak memory
is a few times the largest tensor in float32 whatever the model size. Every check that can fail (architecture,
tensor sets, shapes, dtypes) runs in `plan_comparison`, before anything is computed or written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from frankenlab.arch.base import Adapter, TensorInfo
from frankenlab.checkpoint import Checkpoint
from frankenlab.checkpoint.direct import ByteRange, resident_fraction
from frankenlab.compare import fused
from frankenlab.compare.blocks import ITEMSIZE, Block, BlockStream, StreamedTensor
from frankenlab.compare.metrics import (
    DEFAULT_SPARSITY_TOLS,
    DeltaFacts,
    RelativeCounts,
    RunningStats,
    Spectrum,
    SpectrumSettings,
    compute_metrics,
    dot,
    spectrum_if_wanted,
    zero_spectrum,
)
from frankenlab.compare.spectra import Geometry, gram, oriented, phase_geometry, singular_values_from_gram
from frankenlab.errors import CompareError

log = logging.getLogger(__name__)

FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
_SHOW = 5
_BLOCK = 1 << 24  # entries per streamed block (64 MB in float32): big enough to keep threads busy


@dataclass(frozen=True)
class TensorPlan:
    """One tensor to compare, matched across checkpoints by canonical name."""

    canonical: str
    name: str  # as stored in the RL checkpoint's files
    info: TensorInfo
    shape: tuple[int, ...]
    dtypes: tuple[tuple[str, str], ...]  # (role, safetensors dtype)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def is_matrix(self) -> bool:
        return len(self.shape) >= 2


@dataclass(frozen=True)
class ComparePlan:
    roles: tuple[str, ...]  # ("in", "rl") or ("base", "in", "rl")
    phases: tuple[str, ...]  # ("rl",) or ("in", "rl")
    adapter: Adapter
    tensors: tuple[TensorPlan, ...]

    @property
    def total_numel(self) -> int:
        return sum(t.numel for t in self.tensors)


@dataclass(frozen=True)
class ProgressEvent:
    """Reported after each tensor; `cached` means it came from an earlier (interrupted) run."""

    index: int
    total: int
    name: str
    numel_done: int
    numel_total: int
    cached: bool


ProgressFn = Callable[[ProgressEvent], None]


# -- validation --------------------------------------------------------------------------------
def _first(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOW])
    return shown + (f", … ({len(items) - _SHOW} more)" if len(items) > _SHOW else "")


def plan_comparison(ckpts: dict[str, Checkpoint]) -> ComparePlan:
    """Check that the checkpoints are comparable and list the tensors in RL's file order."""
    roles = tuple(r for r in ("base", "in", "rl") if r in ckpts)
    labels = {r: ckpts[r].label for r in roles}
    types = {r: ckpts[r].model_type for r in roles}
    if len(set(types.values())) > 1:
        raise CompareError(
            "architectures differ: " + ", ".join(f"{labels[r]} is {types[r]!r}" for r in roles)
            + ". Compare checkpoints of the same model."
        )
    adapters = {r: ckpts[r].adapter for r in roles}
    for what, attr in (("LLM layers", "n_llm_layers"), ("vision blocks", "n_vision_blocks")):
        counts = {r: getattr(adapters[r], attr) for r in roles}
        if len(set(counts.values())) > 1:
            raise CompareError(
                f"architectures differ: {what} " + ", ".join(f"{labels[r]} {counts[r]}" for r in roles)
                + " (config.json). Compare checkpoints of the same model."
            )
    canon = {r: {ckpts[r].canonical(n): n for n in ckpts[r].names()} for r in roles}
    ref_set = set(canon["rl"])
    for r in roles:
        if r == "rl" or set(canon[r]) == ref_set:
            continue
        only_r = sorted(set(canon[r]) - ref_set)
        only_rl = sorted(ref_set - set(canon[r]))
        parts = []
        if only_r:
            parts.append(f"{len(only_r)} only in {labels[r]} ({_first(only_r)})")
        if only_rl:
            parts.append(f"{len(only_rl)} only in {labels['rl']} ({_first(only_rl)})")
        raise CompareError(
            f"tensor sets differ between {labels[r]} and {labels['rl']} (canonical names): " + "; ".join(parts)
            + ". Both must hold the same weights (same model, same tied-embedding setting)."
        )
    shape_diffs: list[str] = []
    dtype_bad: list[str] = []
    tensors: list[TensorPlan] = []
    for disk in ckpts["rl"].names():
        c = ckpts["rl"].canonical(disk)
        metas = {r: ckpts[r].meta(canon[r][c]) for r in roles}
        shapes = {r: metas[r].shape for r in roles}
        if len(set(shapes.values())) > 1:
            shape_diffs.append(c + " " + " vs ".join(f"{labels[r]} {list(shapes[r])}" for r in roles))
        bad = [f"{labels[r]} {metas[r].dtype}" for r in roles if metas[r].dtype not in FLOAT_DTYPES]
        if bad:
            dtype_bad.append(f"{c} ({', '.join(bad)})")
        info = adapters["rl"].classify(c)
        tensors.append(TensorPlan(c, disk, info, shapes["rl"], tuple((r, metas[r].dtype) for r in roles)))
    if shape_diffs:
        raise CompareError(f"shapes differ for {len(shape_diffs)} tensor(s): {_first(shape_diffs)}. "
                           "These checkpoints are not the same architecture size.")
    if dtype_bad:
        raise CompareError(f"{len(dtype_bad)} tensor(s) have dtypes that cannot be compared (not floating point): "
                           f"{_first(dtype_bad)}. Only F64/F32/F16/BF16/F8 weights have deltas.")
    phases = ("in", "rl") if "base" in ckpts else ("rl",)
    return ComparePlan(roles, phases, adapters["rl"], tuple(tensors))


def resolve_device(device: str) -> torch.device:
    """:func:`frankenlab.runtime.devices.resolve_device` (one rule for every command), as a CompareError."""
    from frankenlab.runtime.devices import DeviceError
    from frankenlab.runtime.devices import resolve_device as resolve

    try:
        return torch.device(resolve(device))
    except DeviceError as exc:
        raise CompareError(str(exc)) from exc


@contextlib.contextmanager
def cpu_threads(n: int | None = None) -> Iterator[int]:
    """torch uses `n` CPU threads inside the block (default: `runtime.threads.resolve_threads`, the cores this
    process may run on); restored afterwards."""
    from frankenlab.runtime.threads import torch_threads

    if n is not None and n < 1:
        raise CompareError(f"threads must be ≥ 1 (got {n}).")
    with torch_threads(n) as used:
        yield used


# -- one tensor --------------------------------------------------------------------------------
def _compute_dtype(tp: TensorPlan) -> torch.dtype:
    return torch.float64 if any(d == "F64" for _, d in tp.dtypes) else torch.float32


class Workspace:
    """Reusable buffers by name, grown to the largest request so far.

    A fresh multi-hundred-MB tensor is mapped from the OS and zero-filled by the kernel on first
    touch, then unmapped on free; doing that for every tensor made the float32 upcasts ~5× slower.
    Peak memory is unchanged: these are exactly the buffers the computation needs anyway.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._buffers: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def take(self, name: str, numel: int, dtype: torch.dtype) -> torch.Tensor:
        buf = self._buffers.get((name, dtype))
        if buf is None or buf.numel() < numel:
            self._buffers.pop((name, dtype), None)  # free the smaller one before allocating
            buf = torch.empty(numel, dtype=dtype, device=self.device)
            self._buffers[(name, dtype)] = buf
        return buf[:numel]


PHASE_ROLES = {"in": ("base", "in"), "rl": ("in", "rl")}  # phase → (W_ref role, W_after role)


class MaskWriter:
    """Bit-packed changed-entry masks (Δ ≠ 0), one file per matrix and phase, streamed block by block.

    `<root>/<phase>/<canonical>.bits` holds numpy `packbits` (big bit order) of the flattened,
    C-order mask, zero-padded to a whole byte. A file appears only once complete (temporary + rename).
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def open(self, canonical: str, phase: str) -> _BitFile:
        return _BitFile(self.root / phase / f"{canonical}.bits", f"{phase}/{canonical}.bits")


class _BitFile:
    def __init__(self, path: Path, rel: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.rel = path, rel
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self._fh = self.tmp.open("wb")
        self._carry = np.zeros(0, dtype=bool)
        self.numel = 0
        self.changed = 0

    def add(self, mask: torch.Tensor) -> None:
        bits = mask.reshape(-1).cpu().numpy()
        self.numel += bits.size
        self.changed += int(np.count_nonzero(bits))
        if self._carry.size:
            bits = np.concatenate([self._carry, bits])
        whole = bits.size // 8 * 8
        self._fh.write(np.packbits(bits[:whole]).tobytes())
        self._carry = bits[whole:].copy()

    def commit(self) -> dict[str, Any]:
        if self._carry.size:
            self._fh.write(np.packbits(self._carry).tobytes())
        self._fh.close()
        os.replace(self.tmp, self.path)
        return {"file": self.rel, "numel": self.numel, "n_changed": self.changed}

    def abort(self) -> None:
        self._fh.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


@contextlib.contextmanager
def _stored(tp: TensorPlan, ckpts: dict[str, Checkpoint]) -> Iterator[dict[str, torch.Tensor]]:
    """The tensor as stored in each checkpoint (memory-mapped, flat); shard maps dropped afterwards,
    since pages touched through an open map count as our resident memory."""
    stored = {r: c.read(c.disk_name(tp.canonical)).reshape(-1) for r, c in ckpts.items()}
    try:
        yield stored
    finally:
        stored.clear()
        for c in ckpts.values():
            c.close()


def _phase_record(facts: DeltaFacts, settings: SpectrumSettings) -> dict[str, Any]:
    spec = facts.spectrum
    rec: dict[str, Any] = compute_metrics(facts)
    rec["ref_fro"] = facts.ref_fro
    rec["svd_method"] = spec.method if spec is not None else None
    rec["effective_rank_scope"] = spec.scope if spec is not None else None
    rec["spectrum"] = [float(v) for v in spec.values[: settings.top_k]] if spec is not None else []
    rec["subspace_k"] = facts.geometry.k if facts.geometry is not None else None
    rel = facts.relative
    rec["sparsity"] = [[t, f] for t, f in rel.frac_changed().items()] if rel is not None else []
    return rec


def _fused_pass(f: fused.FusedStats, ref: RunningStats, stats: RunningStats, rel: RelativeCounts) -> None:
    """Pass 1 from the compiled read (:mod:`frankenlab.compare.fused`), into the torch path's accumulators."""
    ref.sumsq, ref.numel = f.ref_sumsq, f.numel
    stats.sumsq, stats.numel, stats.nonzero = f.sumsq, f.numel, f.nonzero
    if f.numel:
        stats.lo, stats.hi = f.lo, f.hi
    rel.changed, rel.below_bf16, rel.numel = list(f.changed), f.below_bf16, f.numel


def compare_tensor(tp: TensorPlan, ckpts: dict[str, Checkpoint], settings: SpectrumSettings, work: Workspace,
                   tols: tuple[float, ...] = DEFAULT_SPARSITY_TOLS, masks: MaskWriter | None = None,
                   blocks: Iterator[Block] | None = None) -> dict[str, Any]:
    """All phase metrics of one tensor (and cos(ΔIN, ΔRL) with a base), as a JSON-able record.

    Pass 1 walks the stored tensors (memory-mapped, in their own dtype) in flat blocks of `_BLOCK`
    entries: each block is upcast to float32 *before* subtracting, and norms, counts, the tolerance
    sweep and the masks are accumulated (float64 sums). Exact spectra and the subspace geometry
    then stream the stored tensors again in float64 column blocks (`spectra`): Gram matrices, never
    a whole float32 copy. Only a lowrank spectrum keeps the whole float32 delta.

    `blocks` (from :class:`~frankenlab.compare.blocks.BlockStream`, for a tensor :func:`streamable`
    accepted) feeds pass 1 with bytes already read, instead of the memory map.
    """
    dtype = _compute_dtype(tp)
    method = settings.method_for(tp.shape)
    has_base = "base" in ckpts
    phases = ("in", "rl") if has_base else ("rl",)
    n = tp.numel
    full = {p: work.take(f"delta_{p}", n, dtype) for p in phases} if method == "lowrank" else {}
    ref = {p: RunningStats() for p in phases}
    stats = {p: RunningStats() for p in phases}
    rel = {p: RelativeCounts(tols) for p in phases}
    bits = {p: masks.open(tp.canonical, p) for p in phases} if masks is not None and tp.is_matrix else {}
    dot_in_rl = 0.0
    try:
        if blocks is not None:
            acc = fused.FusedAccumulator(tols)
            for block in blocks:
                acc.add(*block["rl"], *block["in"])
            _fused_pass(acc.result(), ref["rl"], stats["rl"], rel["rl"])
        with contextlib.nullcontext({}) if blocks is not None else _stored(tp, ckpts) as stored:
            one_read = blocks is not None or (
                work.device.type == "cpu" and not has_base and not full and not bits
                and dtype == torch.float32 and fused.supports(*stored.values()))
            if one_read and blocks is None:
                _fused_pass(fused.fused_stats(stored["rl"], stored["in"], tols), ref["rl"], stats["rl"], rel["rl"])
            for lo in range(0, 0 if one_read else n, _BLOCK):
                hi = min(n, lo + _BLOCK)
                w_in = work.take("block_in", hi - lo, dtype).copy_(stored["in"][lo:hi])
                d_in = None
                if has_base:
                    w_base = work.take("block_base", hi - lo, dtype).copy_(stored["base"][lo:hi])
                    ref["in"].update(w_base, norm_only=True)
                    d_in = full["in"][lo:hi] if full else work.take("block_d_in", hi - lo, dtype)
                    torch.sub(w_in, w_base, out=d_in)  # IN − BASE
                    stats["in"].update(d_in)
                    rel["in"].update(d_in, w_base, work.take)
                ref["rl"].update(w_in, norm_only=True)
                d_rl = full["rl"][lo:hi] if full else work.take("block_rl", hi - lo, dtype)
                d_rl.copy_(stored["rl"][lo:hi]).sub_(w_in)  # RL − IN
                stats["rl"].update(d_rl)
                rel["rl"].update(d_rl, w_in, work.take)
                if d_in is not None:
                    dot_in_rl += dot(d_in, d_rl)
                for p, d in (("in", d_in), ("rl", d_rl)):
                    if p in bits:
                        bits[p].add(torch.ne(d, 0, out=work.take("mask", hi - lo, torch.bool)))
        mask_info = {p: b.commit() for p, b in bits.items()}
    except BaseException:
        for b in bits.values():
            b.abort()
        raise
    specs: dict[str, Spectrum | None] = {}
    for p in phases:
        if method == "lowrank":
            specs[p] = spectrum_if_wanted(full[p].view(tp.shape), stats[p].fro, method, settings)
        elif method == "exact" and stats[p].fro == 0:
            specs[p] = zero_spectrum(tp.shape, method, settings)
        elif method == "exact":
            before, after = PHASE_ROLES[p]
            with _stored(tp, ckpts) as stored:
                pair = (oriented(stored[after], tp.shape), oriented(stored[before], tp.shape))
                values = singular_values_from_gram(gram(pair, work.device))
            specs[p] = Spectrum(values, True, "exact", settings.top_k)
        else:
            specs[p] = None
    geo: dict[str, Geometry] = {}
    if settings.geometry_for(tp.shape):
        with _stored(tp, ckpts) as stored:
            mats = {r: oriented(stored[r], tp.shape) for r in stored}
            geo = phase_geometry(mats, {p: PHASE_ROLES[p] for p in phases}, settings.subspace_k, work.device,
                                 {p for p in phases if stats[p].fro == 0}, settings.seed)
    out = {p: _phase_record(DeltaFacts(stats[p], ref[p].fro, specs[p], None, rel[p], geo.get(p), tp.shape,
                                       settings.rank_tol), settings) for p in phases}
    cos = None
    if has_base:
        denom = stats["in"].fro * stats["rl"].fro
        cos = dot_in_rl / denom if denom > 0 else float("nan")
    rec: dict[str, Any] = {"canonical": tp.canonical, "name": tp.name, "phases": out, "cos_in_rl": cos}
    if mask_info:
        rec["masks"] = mask_info
    return rec


# -- read-ahead --------------------------------------------------------------------------------
class Prefetcher:
    """Reads the next tensor's bytes into the page cache on a background thread.

    The walk is I/O-bound on a cold cache: computing on tensor i while the kernel fetches tensor i+1
    hides one behind the other. `pread` into a small reused buffer fills the page cache without
    growing our resident memory (cached file pages are not ours), and releases the GIL while it
    waits on the disk. Read-ahead is advisory: a failed read is logged and counted, and the real
    read then reports the error.
    """

    CHUNK = 8 << 20

    def __init__(self, ckpts: dict[str, Checkpoint]) -> None:
        self._ckpts = ckpts
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="frankenlab-readahead")
        self._buf = bytearray(self.CHUNK)
        self.bytes_read = 0
        self.failures = 0

    def ranges(self, tp: TensorPlan) -> list[tuple[Path, int, int]]:
        out = []
        for c in self._ckpts.values():
            meta = c.meta(c.disk_name(tp.canonical))
            out.append((c.root / meta.file, meta.offset, meta.nbytes))
        return out

    def _read(self, ranges: list[tuple[Path, int, int]]) -> int:
        done = 0
        view = memoryview(self._buf)
        for path, offset, nbytes in ranges:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as exc:
                self.failures += 1
                log.warning("read-ahead of %s failed (%s); reading on demand instead", path, exc)
                continue
            try:
                pos, end = offset, offset + nbytes
                while pos < end:
                    got = os.preadv(fd, [view[: min(self.CHUNK, end - pos)]], pos)
                    if got <= 0:
                        break
                    pos += got
                    done += got
            except OSError as exc:
                self.failures += 1
                log.warning("read-ahead of %s failed (%s); reading on demand instead", path, exc)
            finally:
                os.close(fd)
        self.bytes_read += done
        return done

    def ahead(self, tp: TensorPlan | None) -> None:
        """Start fetching `tp` (None: nothing); at most one read-ahead runs, later ones queue behind it."""
        if tp is not None:
            self._pool.submit(self._read, self.ranges(tp))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def direct_mode() -> str:
    """``FRANKENLAB_DIRECT``: 'auto' (default: stream what is not in the page cache), '1' (always), '0' (never)."""
    mode = os.environ.get("FRANKENLAB_DIRECT", "auto").strip().lower()
    if mode not in ("auto", "1", "0"):
        raise CompareError(f"FRANKENLAB_DIRECT={mode!r}: use auto, 1 or 0.")
    return mode


def streamable(tp: TensorPlan, ckpts: dict[str, Checkpoint], settings: SpectrumSettings, device: torch.device,
               masks: MaskWriter | None, mode: str = "auto") -> StreamedTensor | None:
    """A :class:`StreamedTensor` when pass 1 of `tp` can be fed by the block stream, else None.

    That needs the fused kernel's case (CPU, no base, no masks, BF16/F32 stored) and nothing after pass 1
    that reads the stored tensor again (no spectrum, no geometry): a direct read bypasses the page
    cache, so a second pass would go back to the disk. Under 'auto', a tensor mostly in the page cache
    already is left to the memory map, which reads it at memory speed.
    """
    if (mode == "0" or device.type != "cpu" or "base" in ckpts or set(ckpts) != {"in", "rl"}
            or (masks is not None and tp.is_matrix) or not fused.available() or tp.numel == 0
            or settings.method_for(tp.shape) is not None or settings.geometry_for(tp.shape)
            or _compute_dtype(tp) != torch.float32):
        return None
    ranges: dict[str, tuple[ByteRange, str]] = {}
    for role, c in ckpts.items():
        meta = c.meta(c.disk_name(tp.canonical))
        size = ITEMSIZE.get(meta.dtype)
        if size is None or meta.offset % size or meta.nbytes != tp.numel * size:
            return None
        ranges[role] = (ByteRange(c.root / meta.file, meta.offset, meta.nbytes), meta.dtype)
    if mode == "auto" and sum(resident_fraction(r) for r, _ in ranges.values()) / len(ranges) >= 0.5:
        return None
    return StreamedTensor(tp.canonical, tp.numel, ranges)


# -- the resumable cache -----------------------------------------------------------------------
class ResultCache:
    """Per-tensor records appended as JSON lines, flushed per line; a torn last line is dropped.

    The file name carries the settings key (checkpoint fingerprints + spectral settings), so a
    record is reused only for exactly the same inputs and settings.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: Any = None

    def load(self, wanted: set[str], phases: tuple[str, ...]) -> dict[str, dict[str, Any]]:
        """Records for `wanted` canonical names holding every phase; the file is cut after the last good line."""
        if not self.path.exists():
            return {}
        good: dict[str, dict[str, Any]] = {}
        keep = 0
        with self.path.open("rb") as fh:
            for raw in fh:
                try:
                    rec = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    log.warning("%s: dropping a torn record after %d good ones", self.path, len(good))
                    break
                if not raw.endswith(b"\n"):
                    break
                keep += len(raw)
                if (isinstance(rec, dict) and rec.get("canonical") in wanted
                        and set(rec.get("phases") or ()) == set(phases)):
                    good[rec["canonical"]] = rec
        if keep != self.path.stat().st_size:
            with self.path.open("r+b") as fh:
                fh.truncate(keep)
        return good

    def append(self, rec: dict[str, Any]) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("a", encoding="utf-8")
        self._fh.write(json.dumps(rec) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def walk(plan: ComparePlan, ckpts: dict[str, Checkpoint], settings: SpectrumSettings, device: torch.device,
         cache: ResultCache | None = None, progress: ProgressFn | None = None,
         tols: tuple[float, ...] = DEFAULT_SPARSITY_TOLS,
         masks: MaskWriter | None = None, prefetch: bool = True) -> tuple[list[dict[str, Any]], int]:
    """Records for every planned tensor, reusing cached ones; returns (records, number computed).

    With `prefetch`, the next tensor still to compute is read ahead while the current one is computed:
    through the block stream (direct reads, see :func:`streamable`) where pass 1 is all that reads
    it, into the page cache otherwise.
    """
    done = cache.load({t.canonical for t in plan.tensors}, plan.phases) if cache is not None else {}
    if done:
        log.info("resuming: %d of %d tensors already computed", len(done), len(plan.tensors))
    records: list[dict[str, Any]] = []
    work = Workspace(device)
    computed = 0
    numel_done = 0
    todo = [tp for tp in plan.tensors if tp.canonical not in done]
    mode = direct_mode() if prefetch else "0"
    items = {tp.canonical: item for tp in todo
             if (item := streamable(tp, ckpts, settings, device, masks, mode)) is not None}
    mapped = [tp for tp in todo if tp.canonical not in items]
    following = {a.canonical: b for a, b in zip(mapped, mapped[1:], strict=False)}
    reader = Prefetcher(ckpts) if prefetch and mapped else None
    stream = BlockStream(list(items.values())) if items else None
    try:
        if reader is not None:
            reader.ahead(mapped[0])
        for i, tp in enumerate(plan.tensors):
            rec = done.get(tp.canonical)
            cached = rec is not None
            if rec is None:
                blocks = stream.blocks(tp.canonical) if stream is not None and tp.canonical in items else None
                if reader is not None and blocks is None:
                    reader.ahead(following.get(tp.canonical))
                rec = compare_tensor(tp, ckpts, settings, work, tols, masks, blocks)
                computed += 1
                if cache is not None:
                    cache.append(rec)
            records.append(rec)
            numel_done += tp.numel
            if progress is not None:
                progress(ProgressEvent(i + 1, len(plan.tensors), tp.name, numel_done, plan.total_numel, cached))
    finally:
        if stream is not None:
            stream.close()
        if reader is not None:
            reader.close()
            if reader.failures:
                log.warning("read-ahead failed %d time(s); those tensors were read on demand", reader.failures)
        if cache is not None:
            cache.close()
    return records, computed
