"""What every probe run shares: opening a checkpoint for probing, hashing inputs, decoding, finishing outputs.

Probes decode exactly as eval does: greedy, the checkpoint's generation_config neutralised
(`runtime.generate.without_checkpoint_generation_config`), stops from the tokenizer, answer length per
item kind unless given; `probe_decoding` records all of it in the manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from frankenlab.arch.base import Adapter
from frankenlab.io import write_table
from frankenlab.manifest import build_manifest, mark_done, write_manifest

__all__ = ["ProbeModel", "ProgressFn", "append_tokens", "describe_model", "file_digest", "finish", "first_per_task",
           "open_model", "probe_decoding", "repeat_rows"]

log = logging.getLogger(__name__)
ProgressFn = Callable[[int, int], None]  # (items finished so far, items in total)


@dataclass
class ProbeModel:
    """A loaded model with what the probes need next to it."""

    model: Any
    processor: Any
    adapter: Adapter
    fingerprint: str
    path: str

    @property
    def n_layers(self) -> int:
        return len(self.adapter.decoder_layers(self.model))


def open_model(path: str | os.PathLike[str], *, dtype: str | None = None, device: str | None = None,
               attn_implementation: str | None = "sdpa", device_map: str | Mapping[str, Any] | None = None,
               offload_folder: str | os.PathLike[str] | None = None) -> ProbeModel:
    """Load model + processor; the adapter checks the family before the weights are read.

    `device` None is the CPU; `device_map` (with `device` None or "auto") splits the model as
    `runtime.load.load_model` does, and the probes' hooks and attention functions work on the split model.
    """
    from frankenlab.checkpoint import Checkpoint
    from frankenlab.runtime.load import load

    with Checkpoint(path) as c:
        adapter, fingerprint, root = c.adapter, c.fingerprint, str(c.root)
        model, processor = load(c, dtype=dtype, device=device, attn_implementation=attn_implementation,
                                device_map=device_map, offload_folder=offload_folder)
    return ProbeModel(model, processor, adapter, fingerprint, root)


def load_dtype(dtype: str | None, device: str | None = "cpu", device_map: Any = None) -> str | None:
    """The dtype :func:`open_model` loads in (bf16 by default on a GPU): what resume keys must record, so a
    GPU run and a CPU run of the same settings never share results."""
    from frankenlab.runtime.devices import default_dtype, placement_device, resolve_device

    return default_dtype(placement_device(device_map) if device_map is not None else resolve_device(device), dtype)


def describe_model(m: str | os.PathLike[str] | ProbeModel) -> tuple[Adapter, str, str]:
    """(adapter, fingerprint, path) from config and headers only: validate and key a run before loading weights."""
    if isinstance(m, ProbeModel):
        return m.adapter, m.fingerprint, m.path
    from frankenlab.checkpoint import Checkpoint

    with Checkpoint(m) as c:
        return c.adapter, c.fingerprint, str(c.root)


def _checkpoint_generation_config(pm: ProbeModel | None, path: str) -> Any:
    """The checkpoint's own GenerationConfig: the loaded model's, else generation_config.json beside it."""
    if pm is not None:
        return getattr(pm.model, "generation_config", None)
    if not (Path(path) / "generation_config.json").is_file():
        return None
    from transformers import GenerationConfig

    return GenerationConfig.from_pretrained(path)


def probe_decoding(pm: ProbeModel | None, path: str, lengths: Mapping[str, int], out_dir: Path,
                   label: str | None = None) -> dict[str, Any]:
    """The manifest's ``decoding`` entry: greedy, ``lengths`` (max_new_tokens per item kind), the generate
    arguments, the neutralised generation_config and the checkpoint's own (recorded, not applied).

    Without a loaded model (a finished run re-tabulated) the earlier manifest's entry is kept when it has one
    (``decoding[label]`` for probes of several models).
    """
    from frankenlab.runtime.generate import GenerationSettings, HFBackend, decoding_record

    if pm is None:
        prev = out_dir / "manifest.json"
        old = None
        if prev.is_file():
            try:
                old = json.loads(prev.read_text()).get("decoding")
                old = old.get(label) if isinstance(old, dict) and label is not None else old
            except json.JSONDecodeError as exc:
                log.warning("%s is not JSON (%s); the decoding entry is rebuilt without generate arguments", prev, exc)
        if isinstance(old, dict) and old.get("max_new_tokens") == dict(lengths):
            return old
        kwargs = None
    else:
        kwargs = HFBackend(pm.model, pm.processor, settings=GenerationSettings(max_new_tokens=1)).generate_kwargs()
        kwargs.pop("max_new_tokens")
    return decoding_record(kwargs, dict(lengths), _checkpoint_generation_config(pm, path))


def first_per_task(rows: list[Any], limit: int | None, task: Callable[[Any], str]) -> list[Any]:
    """The first `limit` rows of every task, in the original order (all rows when limit is None)."""
    if limit is None:
        return list(rows)
    seen: dict[str, int] = {}
    out = []
    for row in rows:
        t = task(row)
        if seen.get(t, 0) < limit:
            seen[t] = seen.get(t, 0) + 1
            out.append(row)
    return out


def file_digest(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes (first 16 hex digits): identifies a task or pair set in the resume key."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def finish(out: Path, name: str, key: str, tables: dict[str, tuple[pd.DataFrame, list[str]]],
           manifest_args: dict[str, Any], inputs: dict[str, str], extra: dict[str, Any],
           plots: Callable[[Path], list[str]] | None) -> dict[str, Any]:
    """Write tables (Parquet + CSV), plots, the manifest and the done marker, in that order."""
    for table, (df, columns) in tables.items():
        write_table(df, out / table, columns=columns)
    written = plots(out / "plots") if plots is not None else []
    manifest = build_manifest(f"probe {name}", args=manifest_args, inputs=inputs,
                              seed=manifest_args.get("seed"), extra={**extra, "plots": written, "settings_key": key})
    write_manifest(out, manifest)
    mark_done(out, name, key)
    return manifest


def repeat_rows(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack single-prompt encodings row-wise (Qwen's flattened pixel patches concatenate the same way)."""
    out: dict[str, Any] = {}
    for key, value in batches[0].items():
        out[key] = torch.cat([b[key] for b in batches], dim=0) if isinstance(value, torch.Tensor) else value
    return out


def append_tokens(inputs: dict[str, Any], tokens: list[int]) -> dict[str, Any]:
    """Append the same text tokens to every row (attention 1, multimodal type 0): teacher forcing."""
    if not tokens:
        return inputs
    out = dict(inputs)
    ids = inputs["input_ids"]
    ext = torch.tensor(tokens, dtype=ids.dtype, device=ids.device).expand(ids.shape[0], -1)
    out["input_ids"] = torch.cat([ids, ext], dim=1)
    for key, fill in (("attention_mask", 1), ("mm_token_type_ids", 0), ("token_type_ids", 0)):
        value = inputs.get(key)
        if isinstance(value, torch.Tensor):
            out[key] = torch.cat([value, torch.full(ext.shape, fill, dtype=value.dtype, device=value.device)], dim=1)
    return out
