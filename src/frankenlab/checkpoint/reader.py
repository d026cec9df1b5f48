"""`Checkpoint`: one open checkpoint, read one tensor at a time through memory-mapped shards."""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from frankenlab.checkpoint.fingerprint import fingerprint as _fingerprint
from frankenlab.checkpoint.fingerprint import full_hash as _full_hash
from frankenlab.checkpoint.index import ShardIndex, TensorMeta
from frankenlab.checkpoint.source import resolve_checkpoint
from frankenlab.errors import CheckpointError

if TYPE_CHECKING:
    import torch

    from frankenlab.arch.base import Adapter, TensorInfo


class Checkpoint:
    """A checkpoint directory opened lazily; owns its safetensors handles (use it with `with`).

    Names given to `read`/`meta` may be the on-disk names or the canonical (transformers-5
    in-memory) names; `names()` lists on-disk names, `canonical_names()` canonical ones.
    """

    def __init__(self, source: str | os.PathLike[str], *, label: str | None = None) -> None:
        self.source = str(source)
        self.root: Path = resolve_checkpoint(source)
        self.label = label or self.root.name
        cfg_path = self.root / "config.json"
        if not cfg_path.exists():
            raise CheckpointError(
                f"{self.root} has no config.json; a Hugging Face checkpoint directory needs one "
                "(save the model with save_pretrained, or copy the config next to the weights)."
            )
        self.config_bytes = cfg_path.read_bytes()
        try:
            self.config: dict[str, Any] = json.loads(self.config_bytes)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{cfg_path}: not valid JSON ({exc}).") from exc
        self.index = ShardIndex.load(self.root)
        self._handles: dict[str, Any] = {}

    # -- context management ------------------------------------------------------------------
    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        handles, self._handles = self._handles, {}
        for handle in handles.values():
            exit_ = getattr(handle, "__exit__", None)
            if exit_ is not None:
                exit_(None, None, None)

    def __repr__(self) -> str:
        return f"Checkpoint({self.label!r}, {str(self.root)!r})"

    # -- identity ----------------------------------------------------------------------------
    @property
    def model_type(self) -> str:
        mt = self.config.get("model_type")
        if not mt:
            raise CheckpointError(f"{self.root / 'config.json'} has no 'model_type'; cannot pick an adapter.")
        return str(mt)

    @cached_property
    def fingerprint(self) -> str:
        return _fingerprint(self.index, self.config_bytes)

    def full_hash(self) -> str:
        return _full_hash(self.index)

    @cached_property
    def adapter(self) -> Adapter:
        from frankenlab.arch.registry import adapter_for

        return adapter_for(self.config)

    # -- names -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """On-disk tensor names, in shard order then header order."""
        return list(self.index.tensors)

    @cached_property
    def _canon(self) -> tuple[dict[str, str], dict[str, str]]:
        to_canon: dict[str, str] = {}
        to_disk: dict[str, str] = {}
        for disk in self.index.tensors:
            canon = self.adapter.to_canonical(disk)
            if canon in to_disk:
                raise CheckpointError(
                    f"{self.root}: tensors {to_disk[canon]!r} and {disk!r} map to the same canonical name "
                    f"{canon!r}; the checkpoint mixes two key layouts."
                )
            to_canon[disk] = canon
            to_disk[canon] = disk
        return to_canon, to_disk

    def canonical_names(self) -> list[str]:
        return [self._canon[0][n] for n in self.index.tensors]

    def canonical(self, disk_name: str) -> str:
        return self._canon[0][disk_name]

    def disk_name(self, name: str) -> str:
        """On-disk name for a canonical or on-disk name; a clear error when absent."""
        if name in self.index.tensors:
            return name
        to_disk = self._canon[1]
        if name in to_disk:
            return to_disk[name]
        raise CheckpointError(f"{self.label}: no tensor named {name!r} in {self.root}.")

    @cached_property
    def layout(self) -> str:
        """'hub' when the on-disk names are save_pretrained's, 'transformers5' when in-memory ones."""
        return self.adapter.detect_layout(self.names())

    def info(self, name: str) -> TensorInfo:
        return self.adapter.classify(self.canonical(self.disk_name(name)))

    def meta(self, name: str) -> TensorMeta:
        return self.index.tensors[self.disk_name(name)]

    # -- data --------------------------------------------------------------------------------
    def _handle(self, fname: str) -> Any:
        handle = self._handles.get(fname)
        if handle is None:
            from safetensors import safe_open

            try:
                handle = safe_open(str(self.root / fname), framework="pt", device="cpu")
                enter = getattr(handle, "__enter__", None)
                if enter is not None:
                    handle = enter()
            except Exception as exc:  # noqa: BLE001 - safetensors raises its own types
                raise CheckpointError(f"{self.root / fname}: cannot open ({exc}).") from exc
            self._handles[fname] = handle
        return handle

    def read(self, name: str, *, dtype: torch.dtype | None = None, release: bool = False) -> torch.Tensor:
        """One tensor (on-disk or canonical name), optionally cast; other tensors stay unread.

        safetensors returns memory-mapped tensors whose touched pages stay resident while the shard
        is open; a walk over a whole model therefore passes `release=True`, which copies the tensor
        and closes the shard, so resident memory stays near one tensor.
        """
        meta = self.meta(name)
        try:
            tensor = self._handle(meta.file).get_tensor(meta.name)
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"{self.root / meta.file}: cannot read tensor {meta.name!r} ({exc}).") from exc
        if dtype is not None and tensor.dtype != dtype:
            tensor = tensor.to(dtype)
        if release:
            tensor = tensor.clone()
            handle = self._handles.pop(meta.file, None)
            exit_ = getattr(handle, "__exit__", None)
            if exit_ is not None:
                exit_(None, None, None)
        return tensor


def open_checkpoint(source: str | os.PathLike[str] | Checkpoint, *, label: str | None = None) -> Checkpoint:
    """Accept a Checkpoint or anything `Checkpoint` accepts."""
    if isinstance(source, Checkpoint):
        return source
    return Checkpoint(source, label=label)
