"""Streaming sharded safetensors writer plus index, used with `with`.

Two modes:

* **Planned** (`specs` given): every tensor's name, shape and dtype are known up front, so shard
  boundaries, headers and byte offsets are fixed before any data is written. Each tensor's bytes
  then go straight to their place in the file (`os.pwrite`), in any order and in any number of
  chunks, or are copied from a byte range of another file in the kernel (`os.copy_file_range`).
  Peak memory is one chunk, whatever the model size.
* **Buffered** (`specs=None`): tensors are held until the shard budget is reached, then flushed;
  peak memory is about one shard plus one tensor. Use it when shapes are not known in advance.

Both write `model-0000i-of-0000N.safetensors` and `model.safetensors.index.json` as
`save_pretrained` does. Within a shard, tensors are ordered by element size (largest first, as
safetensors itself does), so every tensor's data is aligned to its element size.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from frankenlab.checkpoint.index import DTYPE_BYTES, INDEX_FILE
from frankenlab.errors import OutputError

DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3
_COPY_CHUNK = 64 * 1024 * 1024

TORCH_TO_ST: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
    torch.uint16: "U16", torch.uint32: "U32", torch.uint64: "U64",
}
ST_TO_TORCH: dict[str, torch.dtype] = {v: k for k, v in TORCH_TO_ST.items()}
_DTYPE_ALIASES = {
    "bf16": "BF16", "bfloat16": "BF16", "fp16": "F16", "f16": "F16", "float16": "F16", "half": "F16",
    "fp32": "F32", "f32": "F32", "float32": "F32", "float": "F32", "fp64": "F64", "f64": "F64",
    "float64": "F64",
}


def st_dtype(dtype: str | torch.dtype) -> str:
    """A safetensors dtype string ("BF16", "F32", ...) from a torch dtype or a common spelling."""
    if isinstance(dtype, torch.dtype):
        if dtype not in TORCH_TO_ST:
            raise OutputError(f"dtype {dtype} cannot be stored in safetensors.")
        return TORCH_TO_ST[dtype]
    text = str(dtype).strip()
    if text.startswith("torch."):
        text = text[len("torch."):]
    if text in ST_TO_TORCH:
        return text
    if text.lower() in _DTYPE_ALIASES:
        return _DTYPE_ALIASES[text.lower()]
    raise OutputError(f"unknown dtype {dtype!r}; use one of bfloat16, float16, float32 (or BF16, F16, F32).")


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    return ST_TO_TORCH[st_dtype(dtype)]


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and safetensors dtype of one tensor to be written."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        n = DTYPE_BYTES[self.dtype]
        for s in self.shape:
            n *= s
        return n


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a CPU tensor, without copying when it is contiguous."""
    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous().reshape(-1)
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.view(torch.uint8).numpy())


def _header(entries: Sequence[TensorSpec], metadata: Mapping[str, str] | None) -> tuple[bytes, dict[str, int]]:
    """Serialized, 8-byte padded header and each tensor's data offset within the shard."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offsets: dict[str, int] = {}
    pos = 0
    for spec in entries:
        header[spec.name] = {"dtype": spec.dtype, "shape": list(spec.shape), "data_offsets": [pos, pos + spec.nbytes]}
        offsets[spec.name] = pos
        pos += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw, offsets


def _order(entries: Sequence[TensorSpec]) -> list[TensorSpec]:
    return sorted(entries, key=lambda s: -DTYPE_BYTES[s.dtype])  # stable: keeps the given order otherwise


def plan_shards(specs: Sequence[TensorSpec], max_shard_bytes: int) -> list[list[TensorSpec]]:
    """Greedy split in the given order; a tensor larger than the budget gets a shard of its own."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


def shard_name(i: int, n: int, prefix: str = "model") -> str:
    return f"{prefix}-{i + 1:05d}-of-{n:05d}.safetensors"


@contextlib.contextmanager
def _io_errors(path: Path) -> Iterator[None]:
    """Turn "no space left" into an OutputError that says so; other OSErrors pass unchanged."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OutputError(f"disk full while writing {path.name} in {path.parent} ({exc.strerror}); free some "
                              "space or write the output elsewhere.") from exc
        raise


class ShardWriter:
    """Write tensors into bounded safetensors shards plus an index (see the module docstring)."""

    def __init__(self, out_dir: str | os.PathLike[str], specs: Sequence[TensorSpec] | None = None, *,
                 max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, metadata: Mapping[str, str] | None = None,
                 prefix: str = "model", check_free_space: bool = True) -> None:
        if max_shard_bytes <= 0:
            raise OutputError(f"max shard size must be positive, got {max_shard_bytes}.")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.max_shard_bytes = int(max_shard_bytes)
        self.metadata = {"format": "pt", **dict(metadata or {})}
        self.prefix = prefix
        self.weight_map: dict[str, str] = {}
        self.files: list[str] = []
        self._closed = False
        self._total = 0
        self._planned = specs is not None
        # planned mode
        self._where: dict[str, tuple[int, int, TensorSpec]] = {}  # name → (shard, absolute offset, spec)
        self._written: dict[str, int] = {}
        self._fds: dict[int, int] = {}
        # buffered mode
        self._buffer: list[tuple[TensorSpec, torch.Tensor]] = []
        self._buffer_bytes = 0
        if specs is not None:
            self._plan(specs, check_free_space)

    # -- planned mode ------------------------------------------------------------------------
    def _plan(self, specs: Sequence[TensorSpec], check_free_space: bool) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise OutputError(f"tensor {dup!r} is listed twice for one output.")
        shards = plan_shards(list(specs), self.max_shard_bytes)
        n = len(shards)
        self._headers: list[bytes] = []
        for i, entries in enumerate(shards):
            fname = shard_name(i, n, self.prefix)
            header, offsets = _header(_order(entries), self.metadata)
            self._headers.append(header)
            self.files.append(fname)
            for spec in entries:
                self._where[spec.name] = (i, len(header) + offsets[spec.name], spec)
                self.weight_map[spec.name] = fname
        self._total = sum(s.nbytes for s in specs)
        if check_free_space:
            free = _free_bytes(self.out_dir)
            if free is not None and free < self._total:
                raise OutputError(
                    f"not enough disk space in {self.out_dir.parent}: the output needs {self._total / 1e9:.2f} GB, "
                    f"{free / 1e9:.2f} GB are free. Free some space or write the output elsewhere."
                )

    def _fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is None:
            path = self.out_dir / self.files[shard]
            with _io_errors(path):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            self._fds[shard] = fd
            self._pwrite(fd, memoryview(self._headers[shard]), 0, path)
        return fd

    def _pwrite(self, fd: int, data: memoryview, offset: int, path: Path) -> None:
        with _io_errors(path):
            while len(data):
                n = os.pwrite(fd, data, offset)
                data, offset = data[n:], offset + n

    def _target(self, name: str) -> tuple[int, int, TensorSpec]:
        if not self._planned:
            raise OutputError("ShardWriter: chunked writes and byte copies need the tensor specs up front.")
        if self._closed:
            raise OutputError("ShardWriter is closed.")
        try:
            where = self._where[name]
        except KeyError:
            raise OutputError(f"tensor {name!r} was not declared for this output.") from None
        if name in self._written:
            raise OutputError(f"tensor {name!r} was written twice.")
        return where

    def write_chunks(self, name: str, chunks: Iterable[torch.Tensor | bytes | memoryview]) -> None:
        """Stream one declared tensor as consecutive pieces of its raw bytes (tensors in its dtype)."""
        shard, offset, spec = self._target(name)
        fd, path = self._fd(shard), self.out_dir / self.files[shard]
        done = 0
        for chunk in chunks:
            if isinstance(chunk, torch.Tensor):
                if TORCH_TO_ST.get(chunk.dtype) != spec.dtype:
                    raise OutputError(f"tensor {name!r} is declared {spec.dtype} but a chunk is {chunk.dtype}.")
                data = tensor_bytes(chunk)
            else:
                data = memoryview(chunk).cast("B")
            if done + len(data) > spec.nbytes:
                raise OutputError(f"tensor {name!r}: more bytes than its declared {spec.shape} {spec.dtype}.")
            self._pwrite(fd, data, offset + done, path)
            done += len(data)
        if done != spec.nbytes:
            raise OutputError(f"tensor {name!r}: wrote {done} bytes, its declared shape needs {spec.nbytes}.")
        self._written[name] = done

    def copy_range(self, name: str, src: str | os.PathLike[str], offset: int, nbytes: int) -> None:
        """Copy one declared tensor's bytes verbatim from `src[offset:offset+nbytes]` (kernel copy)."""
        shard, dst_off, spec = self._target(name)
        if nbytes != spec.nbytes:
            raise OutputError(f"tensor {name!r}: source range has {nbytes} bytes, declared {spec.nbytes}.")
        fd, path = self._fd(shard), self.out_dir / self.files[shard]
        with open(src, "rb") as fh:
            _copy_file_range(fh.fileno(), offset, fd, dst_off, nbytes, path)
        self._written[name] = nbytes

    # -- both modes --------------------------------------------------------------------------
    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write one whole tensor (planned mode: at its place; buffered mode: into the open shard)."""
        if self._planned:
            self.write_chunks(name, [tensor])
            return
        if self._closed:
            raise OutputError("ShardWriter is closed.")
        if name in self.weight_map or any(s.name == name for s, _ in self._buffer):
            raise OutputError(f"tensor {name!r} was written twice.")
        spec = TensorSpec(name, tuple(tensor.shape), st_dtype(tensor.dtype))
        if self._buffer and self._buffer_bytes + spec.nbytes > self.max_shard_bytes:
            self._flush()
        self._buffer.append((spec, tensor))
        self._buffer_bytes += spec.nbytes

    def _flush(self) -> None:
        if not self._buffer:
            return
        fname = f".{self.prefix}-{len(self.files) + 1:05d}.partial"
        path = self.out_dir / fname
        entries = _order([s for s, _ in self._buffer])
        tensors = {s.name: t for s, t in self._buffer}
        header, _ = _header(entries, self.metadata)
        with _io_errors(path), open(path, "wb") as fh:
            fh.write(header)
            for spec in entries:
                fh.write(tensor_bytes(tensors[spec.name]))
        self.files.append(fname)
        for spec in entries:
            self.weight_map[spec.name] = fname
        self._total += self._buffer_bytes
        self._buffer, self._buffer_bytes = [], 0

    def finalize(self) -> Path:
        """Close the shards, check completeness, write the index; returns the index path."""
        if self._closed:
            raise OutputError("ShardWriter was already finalized.")
        if self._planned:
            missing = [n for n in self._where if n not in self._written]
            if missing:
                raise OutputError(f"{len(missing)} declared tensor(s) were never written (first: {missing[0]!r}).")
            for i in range(len(self.files)):
                self._fd(i)  # a shard of zero-byte tensors only was never opened: it still needs its header
            self._close_fds()
        else:
            self._flush()
            n = len(self.files)
            renamed = {}
            for i, fname in enumerate(self.files):
                final = shard_name(i, n, self.prefix)
                os.replace(self.out_dir / fname, self.out_dir / final)
                renamed[fname] = final
            self.files = [renamed[f] for f in self.files]
            self.weight_map = {k: renamed[v] for k, v in self.weight_map.items()}
        self._closed = True
        index = {"metadata": {"total_size": self._total},
                 "weight_map": dict(sorted(self.weight_map.items()))}
        path = self.out_dir / INDEX_FILE
        with _io_errors(path):
            path.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        return path

    def _close_fds(self) -> None:
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.finalize()
        else:  # leave cleanup of partial files to the enclosing atomic_dir; just release handles
            self._close_fds()
            self._buffer = []
            self._closed = True


def _free_bytes(path: Path) -> int | None:
    try:
        st = os.statvfs(path)
        return st.f_bavail * st.f_frsize
    except (OSError, AttributeError):
        return None


def _copy_file_range(src_fd: int, src_off: int, dst_fd: int, dst_off: int, nbytes: int, path: Path) -> None:
    """Kernel-side copy; falls back to bounded read/write where copy_file_range is unsupported."""
    remaining = nbytes
    use_kernel = hasattr(os, "copy_file_range")
    with _io_errors(path):
        while remaining > 0 and use_kernel:
            try:
                n = os.copy_file_range(src_fd, dst_fd, min(remaining, 1 << 30), src_off, dst_off)
            except OSError as exc:
                if exc.errno in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
                    use_kernel = False
                    break
                raise
            if n == 0:
                raise OutputError(f"source ended early while copying into {path.name}; is the input truncated?")
            src_off, dst_off, remaining = src_off + n, dst_off + n, remaining - n
        buf = bytearray(min(_COPY_CHUNK, max(remaining, 1)))
        view = memoryview(buf)
        while remaining > 0:
            want = min(remaining, len(buf))
            n = os.preadv(src_fd, [view[:want]], src_off)
            if n == 0:
                raise OutputError(f"source ended early while copying into {path.name}; is the input truncated?")
            data = view[:n]
            while len(data):
                w = os.pwrite(dst_fd, data, dst_off)
                data, dst_off = data[w:], dst_off + w
            src_off, remaining = src_off + n, remaining - n


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'2GB' → 2·10⁹, '2GiB' → 2·2³⁰, '500MB', '1.5G', plain bytes."""
    m = _SIZE.match(text)
    if not m:
        raise OutputError(f"size {text!r}: expected a size such as 2GB, 500MB or 2GiB (--max-shard-size).")
    value, unit = float(m.group(1)), (m.group(2) or "B").upper()
    base = 1024 if "I" in unit else 1000
    power = {"B": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit[0]]
    return int(value * base**power)
