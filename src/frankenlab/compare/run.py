"""`compare_checkpoints`: validate, walk the tensors (resumably), aggregate, write the output directory.

Output directory contract (see docs/compare.md):
- every check (inputs, architectures, tensor sets, shapes, dtypes, cuts, device, the output
  directory itself) runs before DIR is touched, so a refused run leaves nothing behind;
- while tensors are computed, DIR holds only `.cache/<key>.jsonl` (one JSON line per finished
  tensor) and, with masks, `.cache/<key>.masks/`; DIR appears with the first finished tensor;
- the final tables, summary and plots are staged in DIR/.staging-*, moved in file by file, then
  `manifest.json` and the `.done-compare.json` marker are written last: only a DIR with that marker
  (matching the settings) is a finished comparison.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from frankenlab.checkpoint import Checkpoint, open_checkpoint
from frankenlab.compare import aggregate as agg
from frankenlab.compare.metrics import DEFAULT_SPARSITY_TOLS, SpectrumSettings
from frankenlab.compare.stream import (
    MaskWriter,
    ProgressFn,
    ResultCache,
    cpu_threads,
    plan_comparison,
    resolve_device,
    walk,
)
from frankenlab.errors import CompareError, OutputError
from frankenlab.io import write_json, write_table
from frankenlab.io.store import claim_out_dir, clear_out_dir
from frankenlab.manifest import build_manifest, done_marker, mark_done, settings_key, write_manifest
from frankenlab.regions import Partition

log = logging.getLogger(__name__)

STAGE = "compare"
CACHE_DIR = ".cache"
CACHE_VERSION = 2  # bump when a metric's definition changes: old caches then no longer match
TABLES = {
    "tensors": agg.TENSOR_COLUMNS, "layers": agg.LAYER_COLUMNS, "kinds": agg.KIND_COLUMNS,
    "regions": agg.REGION_COLUMNS, "spectra": agg.SPECTRA_COLUMNS, "region_spectra": agg.REGION_SPECTRA_COLUMNS,
    "sparsity": agg.SPARSITY_COLUMNS,
}
MASKS_DIR = "masks"
MASK_FORMAT = ("numpy.packbits (big bit order) of the C-order flattened mask Δ ≠ 0 of the matrix viewed as "
               "stored, zero-padded to a whole byte")
DONE_MARKER = done_marker(".", STAGE).name
FINAL_NAMES = {f"{t}.{ext}" for t in TABLES for ext in ("csv", "parquet")} | {
    "summary.json", "manifest.json", "plots", MASKS_DIR, DONE_MARKER}
OUTPUT_NAMES = FINAL_NAMES | {CACHE_DIR, ".staging-*"}  # everything a comparison writes into its directory


@dataclass
class CompareResult:
    """Tidy tables (pandas), the summary dict and the manifest of one comparison."""

    tensors: pd.DataFrame
    layers: pd.DataFrame
    kinds: pd.DataFrame
    regions: pd.DataFrame
    spectra: pd.DataFrame
    region_spectra: pd.DataFrame
    sparsity: pd.DataFrame
    summary: dict[str, Any]
    manifest: dict[str, Any] = field(default_factory=dict)
    out_dir: Path | None = None
    computed: int = 0  # tensors computed by this call (the rest came from the cache)
    reloaded: bool = False  # True when a finished output directory was read back instead of recomputed


def _claim_out(out: Path, output_key: str, overwrite: bool) -> bool:
    """True when `out` holds this very comparison, finished; otherwise it is made ready to resume.

    Refuses a directory that is not a compare output, or that holds a finished comparison with other
    inputs or settings (unless `overwrite`). Any earlier final file is removed before computing, so stale
    tables never look current; the per-tensor cache, keyed by itself, is always kept.
    """
    claim = claim_out_dir(out, what="comparison", ours=OUTPUT_NAMES, marker=DONE_MARKER, key=output_key,
                          keep=(CACHE_DIR,), overwrite=overwrite)
    if claim.current and all((out / f"{t}.parquet").exists() for t in TABLES):
        return True
    clear_out_dir(out, OUTPUT_NAMES, keep=(CACHE_DIR,))
    return False


def load_result(out_dir: str | os.PathLike[str]) -> CompareResult:
    """Read a finished output directory back into a CompareResult (nothing is recomputed)."""
    out = Path(out_dir)
    if not (out / DONE_MARKER).exists():
        raise OutputError(f"{out} is not a finished compare output (no {DONE_MARKER}); rerun the comparison.")
    tables = {t: pd.read_parquet(out / f"{t}.parquet") for t in TABLES}
    summary = json.loads((out / "summary.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    return CompareResult(**tables, summary=summary, manifest=manifest, out_dir=out, computed=0, reloaded=True)


def parse_tols(tols: str | tuple[float, ...] | list[float] | None) -> tuple[float, ...]:
    """'0,1e-8,1e-6,1e-4' (or a sequence) → sorted distinct tolerances ≥ 0, relative to |w_ref|."""
    if tols is None:
        return DEFAULT_SPARSITY_TOLS
    items = [t for t in tols.replace(" ", "").split(",") if t] if isinstance(tols, str) else list(tols)
    try:
        values = sorted({float(t) for t in items})
    except (TypeError, ValueError) as exc:
        raise CompareError(f"sparsity tolerances {tols!r} are not numbers; give e.g. '0,1e-8,1e-6,1e-4'.") from exc
    if not values or values[0] < 0 or any(v != v or v == float("inf") for v in values):
        raise CompareError(f"sparsity tolerances {tols!r} must be finite and ≥ 0 (relative to |w_ref|), "
                           "e.g. '0,1e-8,1e-6,1e-4'.")
    return tuple(values)


def _mask_index(plan: Any, records: list[dict[str, Any]], regions: list[Any], masks_root: Path,
                inputs: dict[str, Any]) -> dict[str, Any]:
    """What `compare overlap` needs to read the masks: format, fingerprints and one entry per matrix and phase."""
    by_name = {r["canonical"]: r for r in records}
    entries = []
    for phase in plan.phases:
        for tp in plan.tensors:
            info = by_name[tp.canonical].get("masks", {}).get(phase)
            if not tp.is_matrix:
                continue
            if info is None or not (masks_root / info["file"]).exists():
                raise OutputError(f"the changed-entry mask of {tp.canonical} ({phase}) is missing from the cache "
                                  f"{masks_root}; rerun with --overwrite to recompute it.")
            entries.append({"phase": phase, "canonical": tp.canonical, "name": tp.name, "shape": list(tp.shape),
                            "numel": tp.numel, "n_changed": info["n_changed"], "file": info["file"],
                            "section": tp.info.section, "layer": tp.info.layer, "block": tp.info.block,
                            "kind": tp.info.kind, "regions": [r.name for r in regions if r.contains(tp.info)]})
    return {"format": MASK_FORMAT, "phases": list(plan.phases), "family": plan.adapter.family,
            "fingerprints": {r: v["fingerprint"] for r, v in inputs.items()},
            "regions": [r.name for r in regions], "tensors": entries}


def _link_tree(src: Path, dst: Path) -> None:
    """dst mirrors src's files as hard links (a copy where links are not possible)."""
    for f in sorted(src.rglob("*.bits")):
        target = dst / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, target)
        except OSError:
            shutil.copy2(f, target)


def _write_outputs(out: Path, result: CompareResult, spans: list[tuple[str, int, int]], plots: bool,
                   masks: tuple[Path, dict[str, Any]] | None = None) -> list[str]:
    """Stage everything, then move it into `out`; the manifest and done marker come after this."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".staging-*"):  # left by a run killed while staging
        shutil.rmtree(stale, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=out))
    try:
        for name, columns in TABLES.items():
            write_table(agg.public(getattr(result, name)), stage / name, columns=list(columns))
        write_json(stage / "summary.json", result.summary)
        if masks is not None:
            _link_tree(masks[0], stage / MASKS_DIR)
            write_json(stage / MASKS_DIR / "index.json", masks[1])
        if plots:
            from frankenlab.compare.plots import write_plots  # matplotlib only when figures are wanted

            write_plots(stage / "plots", result.tensors, result.layers, result.region_spectra, spans)
        with contextlib.suppress(FileNotFoundError):
            (out / DONE_MARKER).unlink()
        written = []
        for p in sorted(stage.iterdir()):
            target = out / p.name
            if p.is_dir():
                if target.exists():
                    shutil.rmtree(target)
                os.replace(p, target)
                written += [f"{p.name}/{q.name}" for q in sorted(target.iterdir())] if p.name != MASKS_DIR \
                    else [f"{MASKS_DIR}/index.json", f"{MASKS_DIR}/<phase>/<canonical>.bits"]
            else:
                os.replace(p, target)
                written.append(p.name)
        return written
    except OSError as exc:
        raise OutputError(f"writing results into {out} failed ({exc}); the per-tensor cache is kept, rerun to "
                          "finish.") from exc
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def compare_checkpoints(
    in_: str | os.PathLike[str] | Checkpoint,
    rl: str | os.PathLike[str] | Checkpoint,
    base: str | os.PathLike[str] | Checkpoint | None = None,
    *,
    out_dir: str | os.PathLike[str] | None = None,
    svd: str = "auto",
    top_k: int = 32,
    oversample: int = 8,
    niter: int = 8,
    exact_max_dim: int = 1024,
    seed: int = 0,
    subspace_k: int = 16,
    rank_tol: float = 1e-3,
    sparsity_tols: str | tuple[float, ...] | None = None,
    masks: bool = False,
    cuts: str | tuple[int, ...] | None = None,
    device: str = "auto",
    threads: int | None = None,
    plots: bool = True,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    prefetch: bool = True,
) -> CompareResult:
    """What did each phase change, per tensor, layer, module kind and region.

    With `base`, ΔIN = IN − BASE and ΔRL = RL − IN; without, ΔRL only. Tensors stream one at a
    time in float32. With `out_dir`, results are cached per tensor there, so an interrupted run
    resumes and a finished one (same inputs and settings) is read back instead of recomputed.
    Geometry of W_ref → W_after (top-`subspace_k` singular subspaces) is computed unless
    svd='none' or subspace_k=0; `masks` writes bit-packed changed-entry masks for `compare overlap`
    (needs `out_dir`). `prefetch` reads the next tensor ahead on a background thread (results are
    identical either way; off only to measure what it saves).
    """
    settings = SpectrumSettings(svd, top_k, oversample, niter, exact_max_dim, seed, subspace_k, rank_tol)
    tols = parse_tols(sparsity_tols)
    if masks and out_dir is None:
        raise CompareError("masks=True needs out_dir: the masks are files for `frankenlab compare overlap`.")
    if threads is not None and threads < 1:
        raise CompareError(f"threads must be ≥ 1 (got {threads}); leave it unset to use every CPU core.")
    t0 = time.time()
    with contextlib.ExitStack() as stack:
        ckpts: dict[str, Checkpoint] = {}
        for role, src, label in (("base", base, "BASE"), ("in", in_, "IN"), ("rl", rl, "RL")):
            if src is None:
                continue
            ckpt = open_checkpoint(src, label=label)
            if not isinstance(src, Checkpoint):
                stack.enter_context(ckpt)
            ckpts[role] = ckpt
        plan = plan_comparison(ckpts)
        n_llm = plan.adapter.n_llm_layers
        # Default thirds need 3 LLM layers; a smaller model without --cuts just has no partition.
        partition = None if cuts is None and n_llm < 3 else Partition.make(n_llm, cuts)
        cut_list = list(partition.cuts) if partition is not None else []
        regions = agg.all_regions(plan, partition)
        dev = resolve_device(device)
        inputs = {r: {"source": c.source, "path": str(c.root), "fingerprint": c.fingerprint, "layout": c.layout,
                      "model_type": c.model_type} for r, c in ckpts.items()}
        spectrum_settings = asdict(settings)
        compute_key = settings_key({"fingerprints": {r: v["fingerprint"] for r, v in inputs.items()},
                                    "spectrum": spectrum_settings, "sparsity_tols": list(tols), "masks": masks,
                                    "version": CACHE_VERSION})
        output_key = settings_key({"compute": compute_key, "cuts": cut_list, "plots": plots})
        out = Path(out_dir).resolve() if out_dir is not None else None
        cache = None
        if out is not None:
            if _claim_out(out, output_key, overwrite):
                log.info("%s already holds this comparison; nothing to compute", out)
                return load_result(out)
            cache = ResultCache(out / CACHE_DIR / f"{compute_key}.jsonl")
        masks_root = out / CACHE_DIR / f"{compute_key}.masks" if out is not None and masks else None
        writer = MaskWriter(masks_root) if masks_root is not None else None
        with cpu_threads(threads) as n_threads:
            records, computed = walk(plan, ckpts, settings, dev, cache, progress, tols, writer, prefetch)

    tensors = agg.tensors_table(plan, records)
    layers = agg.layers_table(tensors)
    spectra = agg.spectra_table(plan, records)
    region_table = agg.regions_table(tensors, plan, regions)
    result = CompareResult(
        tensors=tensors, layers=layers, kinds=agg.kinds_table(tensors), regions=region_table, spectra=spectra,
        region_spectra=agg.region_spectra_table(spectra, plan, regions),
        sparsity=agg.sparsity_table(plan, records),
        summary=agg.build_summary(plan, tensors, layers, region_table, spectrum_settings),
        out_dir=out, computed=computed,
    )
    result.summary["cuts"] = cut_list
    result.summary["regions"] = [r.describe(plan.adapter) for r in regions]
    result.summary["sparsity_tols"] = list(tols)
    result.summary["masks"] = bool(masks)
    args = {"svd": svd, "top_k": top_k, "oversample": oversample, "niter": niter, "exact_max_dim": exact_max_dim,
            "seed": seed, "subspace_k": subspace_k, "rank_tol": rank_tol, "sparsity_tols": list(tols),
            "masks": masks, "cuts": cut_list, "device": device, "threads": threads, "plots": plots}
    result.manifest = build_manifest("compare", args=args, inputs={r: v["path"] for r, v in inputs.items()},
                                     seed=seed, extra={
                                         "checkpoints": inputs, "compute_key": compute_key, "output_key": output_key,
                                         "device": str(dev), "torch_threads": n_threads,
                                         "tensors_computed": computed, "tensors_from_cache": len(records) - computed,
                                     })
    if out is not None:
        spans = [(r.name, *r.unified_span(plan.adapter)) for r in (partition.regions() if partition else [])]
        mask_files = (masks_root, _mask_index(plan, records, regions, masks_root, inputs)) \
            if masks_root is not None else None
        files = _write_outputs(out, result, spans, plots, mask_files)
        result.manifest["files"] = files + ["manifest.json"]
        result.manifest["elapsed_s"] = round(time.time() - t0, 3)
        write_manifest(out, result.manifest)
        mark_done(out, STAGE, output_key)
    else:
        result.manifest["elapsed_s"] = round(time.time() - t0, 3)
    for name in TABLES:
        setattr(result, name, agg.public(getattr(result, name)))
    return result
