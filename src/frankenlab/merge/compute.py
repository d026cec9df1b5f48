"""Values of planned output tensors, read from the inputs in bounded chunks.

Everything here is elementwise, so a tensor computed in chunks (on-disk path), whole (in-memory
path) or again (`--verify`) comes out bit-identical. Interpolation is

    W = IN + α·(RL − IN)

evaluated as three separately rounded float32 operations (float64 for F64 tensors: `d = RL − IN`,
`d *= α`, `d += IN`), then cast to the output dtype with round-to-nearest-even. No fused or
reordered formula (`torch.lerp` switches formula at α=0.5), so results do not depend on chunking.

The rank-K transplant `W = IN + [α·] SVD_K(RL − IN)` is not elementwise: it needs the whole
matrix. It is computed whole (on disk too, then streamed out in chunks) with one fixed sequence of
operations (`low_rank_delta`), under a fixed intra-op thread count, because LAPACK/BLAS results
change with the thread count (measured: MKL's SVD differs in the last bits between 1 and 2
threads). Same torch build, same thread count, same bits; the count is recorded in provenance.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import torch

from frankenlab.checkpoint import Checkpoint
from frankenlab.errors import CheckpointError, RecipeError
from frankenlab.io.shards import ST_TO_TORCH
from frankenlab.merge.plan import ANCHOR, TARGET, TensorPlan, matrix_shape

DEFAULT_CHUNK_ELEMS = 1024 * 1024  # ~14 MB of scratch; cache-sized chunks are several times faster than big ones


@contextlib.contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """Cap torch's intra-op threads for a block, restoring the previous count afterwards.

    Chunked elementwise work gains little from intra-op threads, and on a busy machine their
    barriers make it many times slower (measured 5-10x on 2 shared cores); merges default to 1.
    `None` leaves torch's setting alone.
    """
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def interpolate(anchor: torch.Tensor, target: torch.Tensor, alpha: float, out: torch.dtype) -> torch.Tensor:
    """anchor + α·(target − anchor) in float32 (float64 for float64 inputs), cast to `out`."""
    work = torch.float64 if anchor.dtype == torch.float64 else torch.float32
    a = anchor.to(work)
    d = target.to(work) - a
    d.mul_(alpha)
    d.add_(a)
    return d.to(out)


def low_rank_delta(anchor: torch.Tensor, target: torch.Tensor, rank: int, out: torch.dtype, *,
                   alpha: float | None = None, threads: int | None = 1, name: str = "tensor") -> torch.Tensor:
    """anchor + [α·] SVD_K(target − anchor), in float32 (float64 for float64 inputs), cast to `out`.

    The delta is viewed as (shape[0], -1) (as `compare` does for its spectra). Operations, each
    rounded once: d = target − anchor; U, S, Vh = svd(d) (reduced); low = (U[:, :K] * S[:K]) @ Vh[:K];
    low *= α (when given); low += anchor; cast. `threads` fixes the intra-op thread count for the
    SVD and the product (None: torch's current setting), which makes the bits reproducible.
    """
    shape = tuple(anchor.shape)
    dims = matrix_shape(shape)
    if dims is None or rank >= min(dims):
        raise ValueError(f"rank {rank} does not truncate a tensor of shape {list(shape)}; copy or interpolate it.")
    work = torch.float64 if anchor.dtype == torch.float64 else torch.float32
    a = anchor.to(work).reshape(dims)
    d = target.to(work).reshape(dims) - a
    with intra_op_threads(threads):
        try:
            u, s, vh = torch.linalg.svd(d, full_matrices=False)
        except RuntimeError as exc:  # torch.linalg.LinAlgError included: NaN/inf in the delta, no convergence
            finite = bool(torch.isfinite(d).all())
            why = "the delta RL − IN holds NaN or inf values" if not finite else f"the SVD did not converge ({exc})"
            raise RecipeError(f"rank-{rank} transplant of {name!r} failed: {why}; take this tensor from IN or RL "
                              "instead (--take) or leave it out of the --rank region.") from None
        low = (u[:, :rank] * s[:rank]) @ vh[:rank]
    if alpha is not None:
        low.mul_(alpha)
    low.add_(a)
    return low.to(out).reshape(shape)


class Sources:
    """Raw byte ranges and values of tensors in labelled checkpoints; use it with `with`."""

    def __init__(self, models: Mapping[str, Checkpoint], *, chunk_elems: int = DEFAULT_CHUNK_ELEMS,
                 svd_threads: int | None = 1) -> None:
        self.models = {str(k).upper(): v for k, v in models.items()}
        self.chunk_elems = max(1, int(chunk_elems))
        self.svd_threads = svd_threads
        self._starts: dict[tuple[str, str], dict[str, int]] = {}
        self._files: dict[Path, BinaryIO] = {}
        self._bufs: dict[str, torch.Tensor] = {}

    def __enter__(self) -> Sources:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._bufs = {}
        files, self._files = self._files, {}
        for fh in files.values():
            fh.close()

    def byte_range(self, label: str, name: str) -> tuple[Path, int, int]:
        """(file, absolute offset, length) of a stored tensor (canonical or on-disk name)."""
        c = self.models[label]
        meta = c.meta(name)
        key = (label, meta.file)
        starts = self._starts.get(key)
        if starts is None:
            raw = c.index.headers[meta.file]
            header = json.loads(raw)
            base = 8 + len(raw)
            starts = {k: base + v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}
            self._starts[key] = starts
        return c.root / meta.file, starts[meta.name], meta.nbytes

    def _fh(self, path: Path) -> BinaryIO:
        fh = self._files.get(path)
        if fh is None:
            fh = self._files[path] = open(path, "rb")  # noqa: SIM115 - closed in close()
        return fh

    def scratch(self, key: str, dtype: torch.dtype, n: int) -> torch.Tensor:
        """A reusable buffer of at least `n` elements: fresh allocations page-fault on every chunk."""
        buf = self._bufs.get(key)
        if buf is None or buf.dtype != dtype or buf.numel() < n:
            buf = self._bufs[key] = torch.empty(max(n, self.chunk_elems), dtype=dtype)
        return buf[:n]

    def read_bytes(self, path: Path, offset: int, nbytes: int, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """`nbytes` bytes at `offset` of `path` as a uint8 tensor (into `out` when given; never zero-filled)."""
        buf = torch.empty(nbytes, dtype=torch.uint8) if out is None else out
        if nbytes == 0:
            return buf
        view, done = memoryview(buf.numpy()), 0
        fd = self._fh(path).fileno()
        while done < nbytes:
            n = os.preadv(fd, [view[done:]], offset + done)
            if n == 0:
                raise CheckpointError(f"{path}: ended early (truncated shard?) while reading {nbytes} bytes.")
            done += n
        return buf

    def read_flat(self, label: str, name: str, start: int = 0, count: int | None = None, *,
                  scratch: str | None = None) -> torch.Tensor:
        """Elements [start, start+count) of a stored tensor, flattened, in its stored dtype.

        With `scratch`, the result lives in a reused buffer: valid until the next read into it.
        """
        meta = self.models[label].meta(name)
        dtype = ST_TO_TORCH[meta.dtype]
        item = torch.empty((), dtype=dtype).element_size()
        count = meta.numel - start if count is None else count
        path, offset, _ = self.byte_range(label, name)
        if count == 0:
            return torch.empty(0, dtype=dtype)
        out = None if scratch is None else self.scratch(scratch, torch.uint8, count * item)
        return self.read_bytes(path, offset + start * item, count * item, out=out).view(dtype)

    # -- planned tensors ---------------------------------------------------------------------
    def raw_copy(self, t: TensorPlan) -> tuple[Path, int, int] | None:
        """Byte range to copy verbatim, when the output bytes are exactly a stored tensor's."""
        label = t.copy_from
        if label is None or t.out_dtype != t.in_dtype:
            return None
        return self.byte_range(label, t.name)

    def low_rank(self, t: TensorPlan) -> torch.Tensor:
        """The whole rank-K output tensor, flattened, in the output dtype (see `low_rank_delta`)."""
        assert t.rank_k is not None
        out = ST_TO_TORCH[t.out_dtype]
        anchor = self.read_flat(ANCHOR, t.name).reshape(t.shape)
        target = self.read_flat(TARGET, t.name).reshape(t.shape)
        return low_rank_delta(anchor, target, t.rank_k, out, alpha=t.alpha, threads=self.svd_threads,
                              name=t.name).reshape(-1)

    def _piece(self, t: TensorPlan, start: int, count: int) -> torch.Tensor:
        out = ST_TO_TORCH[t.out_dtype]
        if t.rank_k is not None:
            return self.low_rank(t)[start:start + count]
        label = t.copy_from
        if label is not None:
            return self.read_flat(label, t.name, start, count).to(out)
        assert t.alpha is not None
        anchor = self.read_flat(ANCHOR, t.name, start, count)
        target = self.read_flat(TARGET, t.name, start, count)
        return interpolate(anchor, target, t.alpha, out)

    def _streamed_piece(self, t: TensorPlan, start: int, count: int) -> torch.Tensor:
        """`_piece` with the same operations, written into reused buffers (see `chunks`)."""
        out = ST_TO_TORCH[t.out_dtype]
        label = t.copy_from
        if label is not None:
            raw = self.read_flat(label, t.name, start, count, scratch="a")
            return raw if raw.dtype == out else self.scratch("out", out, count).copy_(raw)
        assert t.alpha is not None
        anchor = self.read_flat(ANCHOR, t.name, start, count, scratch="a")
        target = self.read_flat(TARGET, t.name, start, count, scratch="b")
        work = torch.float64 if anchor.dtype == torch.float64 else torch.float32
        a = self.scratch("wa", work, count).copy_(anchor)
        d = self.scratch("wd", work, count).copy_(target)
        d.sub_(a)  # the same three roundings as `interpolate`
        d.mul_(t.alpha)
        d.add_(a)
        return d if out == work else self.scratch("out", out, count).copy_(d)

    def chunks(self, t: TensorPlan) -> Iterator[torch.Tensor]:
        """The output tensor as consecutive flat pieces in the output dtype, in bounded memory.

        Pieces live in buffers reused for the next piece: consume (write, compare) each one before
        asking for the next, or clone it.
        """
        numel = 1
        for s in t.shape:
            numel *= s
        if t.rank_k is not None:  # needs the whole matrix: computed once, handed out in chunks
            whole = self.low_rank(t)
            for start in range(0, numel, self.chunk_elems):
                yield whole[start:start + self.chunk_elems]
            return
        for start in range(0, numel, self.chunk_elems):
            yield self._streamed_piece(t, start, min(self.chunk_elems, numel - start))

    def tensor(self, t: TensorPlan) -> torch.Tensor:
        """The whole output tensor, shaped, in the output dtype."""
        numel = 1
        for s in t.shape:
            numel *= s
        return self._piece(t, 0, numel).reshape(t.shape)
