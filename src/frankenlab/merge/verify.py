"""Re-read a merged checkpoint and check every tensor against the source its provenance declares.

Works from the output directory alone (its `provenance.json` and safetensors headers) plus the
inputs, so it checks the artifact as recorded, not the plan object that produced it. Verbatim
tensors must match their source byte for byte; interpolated, re-typed and rank-K ones must match
the formula recomputed exactly as the writer computes it (see `merge.compute`): rank-K tensors
with the SVD thread count recorded in provenance, bit for bit on the same torch build and CPU.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from frankenlab.checkpoint import Checkpoint
from frankenlab.errors import OutputError
from frankenlab.merge.compute import DEFAULT_CHUNK_ELEMS, Sources
from frankenlab.merge.plan import ANCHOR, TensorPlan, truncates

_BYTES_CHUNK = 16 * 1024 * 1024


@dataclass(frozen=True)
class VerifyReport:
    tensors: int
    bytes: int
    verbatim: int
    computed: int


def _fail(out: Path, msg: str) -> OutputError:
    return OutputError(f"verification of {out} failed: {msg}")


def verify_merged(out: str | os.PathLike[str], models: Mapping[str, Checkpoint], *,
                  chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> VerifyReport:
    """Check `out` tensor by tensor against `models` (label → Checkpoint); raise OutputError on any
    difference, naming the tensor and its declared source."""
    root = Path(out)
    try:
        prov = json.loads((root / "provenance.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise _fail(root, f"cannot read provenance.json ({exc}).") from exc
    models = {k.upper(): v for k, v in models.items()}
    for label, fp in prov.get("inputs", {}).items():
        if label not in models:
            raise _fail(root, f"the output was made from {label}, which was not given.")
        if models[label].fingerprint != fp:
            raise _fail(root, f"{label} ({models[label].root}) is not the checkpoint the output was made from "
                              f"(fingerprint {models[label].fingerprint}, recorded {fp}).")
    records: dict[str, dict] = prov.get("tensors", {})
    svd = prov.get("svd") or {}
    svd_threads = int(svd.get("threads", 1))
    n = nbytes = verbatim = 0
    with Checkpoint(root, label="OUT") as outc, \
            Sources(models, chunk_elems=chunk_elems, svd_threads=svd_threads) as src, \
            Sources({"OUT": outc}) as got:
        names = outc.names()
        if set(names) != set(records):
            extra, missing = sorted(set(names) - set(records)), sorted(set(records) - set(names))
            raise _fail(root, f"stored tensors and provenance disagree (unrecorded: {extra[:3]}, "
                              f"missing: {missing[:3]}).")
        for name in names:
            rec, meta = records[name], outc.meta(name)
            canonical = outc.canonical(name)
            source, alpha, rank = str(rec["source"]).upper(), rec.get("alpha"), rec.get("rank")
            ref_label = ANCHOR if alpha is not None or rank is not None else source
            ref = models[ref_label].meta(canonical)
            if ref.shape != meta.shape:
                raise _fail(root, f"{name!r} has shape {list(meta.shape)}, its source {ref_label} {list(ref.shape)}.")
            if rank is not None and rec.get("full_delta") is not None \
                    and bool(rec["full_delta"]) == truncates(meta.shape, int(rank)):
                raise _fail(root, f"{name!r}: provenance says full_delta={rec['full_delta']} for rank {rank}, which "
                                  f"does not fit its shape {list(meta.shape)}.")
            info = outc.info(name)
            t = TensorPlan(name=canonical, out_name=name, source=source, alpha=alpha, shape=meta.shape,
                           in_dtype=ref.dtype, out_dtype=meta.dtype, section=info.section, block=info.block,
                           region="", rank=None if rank is None else int(rank))
            what = t.formula
            out_path, out_off, _ = got.byte_range("OUT", name)
            raw = src.raw_copy(t)
            if raw is not None:
                path, off, size = raw
                for start in range(0, size, _BYTES_CHUNK):
                    k = min(_BYTES_CHUNK, size - start)
                    want = src.read_bytes(path, off + start, k, out=src.scratch("verify", torch.uint8, k))
                    have = got.read_bytes(out_path, out_off + start, k, out=got.scratch("verify", torch.uint8, k))
                    if not torch.equal(want, have):
                        raise _fail(root, f"{name!r} differs from its declared source {what} "
                                          f"(first difference in bytes {start}–{start + k}).")
                verbatim += 1
            else:
                pos = 0
                for piece in src.chunks(t):
                    expected = piece.reshape(-1).view(torch.uint8)
                    k = expected.numel()
                    have = got.read_bytes(out_path, out_off + pos, k, out=got.scratch("verify", torch.uint8, k))
                    if not torch.equal(have, expected):
                        hint = ""
                        if t.rank_k is not None:
                            hint = (f" It was recomputed with torch.linalg.svd on {svd_threads} thread(s) (as "
                                    f"recorded); the output records torch {svd.get('torch', '?')}. Another torch/"
                                    "LAPACK build or CPU can change the last bits of an SVD.")
                        raise _fail(root, f"{name!r} differs from {what} (first difference in bytes "
                                          f"{pos}–{pos + expected.numel()}).{hint}")
                    pos += expected.numel()
            n += 1
            nbytes += meta.nbytes
    return VerifyReport(tensors=n, bytes=nbytes, verbatim=verbatim, computed=n - verbatim)
