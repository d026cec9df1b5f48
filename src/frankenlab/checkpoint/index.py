"""The shard map of a checkpoint, from safetensors headers alone (no tensor data is read)."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from frankenlab.errors import CheckpointError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_MAX_HEADER = 100 * 1024 * 1024

DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}


@dataclass(frozen=True)
class TensorMeta:
    """Where one tensor lives and what it is, as the safetensors header says."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    file: str
    nbytes: int
    offset: int = 0  # absolute byte offset of the data in `file` (8-byte length + header + data_offsets start)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


def read_safetensors_header(path: Path) -> tuple[dict, bytes]:
    """Parse and validate a safetensors header; return (header, raw header bytes)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header).")
            (n,) = struct.unpack("<Q", head)
            if n <= 0 or n > _MAX_HEADER or n + 8 > size:
                raise CheckpointError(
                    f"{path}: corrupt or truncated safetensors header (declares {n} header bytes in a "
                    f"{size}-byte file). Re-download or re-save this shard."
                )
            raw = fh.read(n)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc}).") from exc
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: safetensors header is not valid JSON ({exc}); the file is corrupt.") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object; the file is corrupt.")
    data_len = size - 8 - n
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = entry["data_offsets"]
            dtype = entry["dtype"]
            shape = entry["shape"]
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: header entry {name!r} is malformed; the file is corrupt.") from exc
        if not 0 <= start <= end <= data_len:
            raise CheckpointError(
                f"{path}: tensor {name!r} lies past the end of the file (offsets {start}-{end}, "
                f"{data_len} data bytes): the shard is truncated. Re-download or re-save it."
            )
        expected = DTYPE_BYTES.get(dtype)
        numel = 1
        for s in shape:
            numel *= int(s)
        if expected is not None and numel * expected != end - start:
            raise CheckpointError(
                f"{path}: tensor {name!r} has {end - start} bytes but shape {shape} {dtype} needs "
                f"{numel * expected}; the file is corrupt."
            )
    return header, raw


@dataclass(frozen=True)
class ShardIndex:
    """Tensor name → metadata, over one file or many shards."""

    root: Path
    tensors: dict[str, TensorMeta]
    files: tuple[str, ...]
    headers: dict[str, bytes]
    metadata: dict[str, dict[str, str]]

    @classmethod
    def load(cls, root: Path) -> ShardIndex:
        index_path = root / INDEX_FILE
        if index_path.exists():
            try:
                weight_map = json.loads(index_path.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise CheckpointError(f"{index_path}: not a valid safetensors index ({exc}).") from exc
            files = tuple(dict.fromkeys(weight_map.values()))
            missing = [f for f in files if not (root / f).exists()]
            if missing:
                raise CheckpointError(
                    f"{index_path} points at missing shard(s): {', '.join(missing[:5])}"
                    f"{' …' if len(missing) > 5 else ''}. The download is incomplete; fetch those files."
                )
        else:
            files = tuple(sorted(p.name for p in root.glob("*.safetensors")))
            if not files:
                bins = sorted(p.name for p in root.glob("*.bin")) + sorted(p.name for p in root.glob("*.pt"))
                if bins:
                    raise CheckpointError(
                        f"{root} holds only pickled weights ({', '.join(bins[:3])}); frankenlab reads "
                        "safetensors only and never unpickles. Convert once with transformers: "
                        "`AutoModel...from_pretrained(dir).save_pretrained(out, safe_serialization=True)`."
                    )
                raise CheckpointError(
                    f"{root} contains no .safetensors files (and no {INDEX_FILE}); is this a Hugging Face "
                    "checkpoint directory?"
                )
            weight_map = None
        tensors: dict[str, TensorMeta] = {}
        headers: dict[str, bytes] = {}
        metadata: dict[str, dict[str, str]] = {}
        for fname in files:
            header, raw = read_safetensors_header(root / fname)
            headers[fname] = raw
            metadata[fname] = dict(header.get("__metadata__") or {})
            for name, entry in header.items():
                if name == "__metadata__":
                    continue
                if name in tensors:
                    raise CheckpointError(
                        f"{root}: tensor {name!r} appears in two shards ({tensors[name].file}, {fname})."
                    )
                start, end = entry["data_offsets"]
                shape = tuple(int(s) for s in entry["shape"])
                tensors[name] = TensorMeta(name, shape, entry["dtype"], fname, end - start, 8 + len(raw) + start)
        if weight_map is not None:
            absent = [n for n in weight_map if n not in tensors]
            if absent:
                raise CheckpointError(
                    f"{index_path}: {len(absent)} tensor(s) listed in the index are in no shard "
                    f"(first: {absent[0]!r}); the checkpoint is incomplete."
                )
        return cls(root=root, tensors=tensors, files=files, headers=headers, metadata=metadata)

    def total_bytes(self) -> int:
        return sum(m.nbytes for m in self.tensors.values())
