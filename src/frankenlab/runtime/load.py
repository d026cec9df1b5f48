"""Checkpoint directory → transformers model (and processor), offline, with explicit dtype/device.

VLM families load with `AutoModelForImageTextToText`, text-only ones with `AutoModelForCausalLM`;
the adapter (from config.json) decides which. The in-memory parameter names of the result are
frankenlab's canonical tensor names.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from frankenlab.checkpoint import Checkpoint
from frankenlab.errors import CheckpointError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)


@contextlib.contextmanager
def hf_progress_off() -> Iterator[None]:
    """No transformers progress bars ("Loading weights", "Writing model shards") inside the block: frankenlab's
    commands show their own progress, and two bars per stage flood a log file."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _root_and_vision(path: str | os.PathLike[str] | Checkpoint) -> tuple[str, bool]:
    if isinstance(path, Checkpoint):
        return str(path.root), path.adapter.has_vision
    with Checkpoint(path) as c:
        return str(c.root), c.adapter.has_vision


def resolve_torch_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
    """None → "auto" (as stored); strings like "bf16", "bfloat16", "F32" → torch dtypes."""
    if dtype is None or dtype == "auto":
        return "auto"
    from frankenlab.io.shards import torch_dtype

    return torch_dtype(dtype)


def load_model(path: str | os.PathLike[str] | Checkpoint, *, dtype: str | torch.dtype | None = None,
               device: str | torch.device | None = None, attn_implementation: str | None = None,
               device_map: str | Mapping[str, Any] | None = None,
               offload_folder: str | os.PathLike[str] | None = None) -> PreTrainedModel:
    """Load a checkpoint directory (or an open Checkpoint) as a transformers model in eval mode.

    `device="auto"` is the GPU when there is one (`runtime.devices`); None is the CPU. `dtype=None` keeps the
    stored dtype on the CPU and means bf16 on a GPU; `attn_implementation` is passed through ("eager",
    "sdpa", ...). `device_map` ("auto", or module name -> device, "disk" offloading into `offload_folder`)
    lets accelerate place the modules instead, for a model larger than one GPU; `device` must then be None or
    "auto", and inputs go to `runtime.devices.input_device(model)`.
    """
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from frankenlab.runtime.devices import check_device_map, default_dtype, placement_device, resolve_device

    placement = check_device_map(device_map, None if device is None else str(device))
    if placement is not None:
        dtype = default_dtype(placement_device(placement), dtype) if isinstance(dtype, str) or dtype is None \
            else dtype
    elif device is None:
        device = "cpu"
    elif not hasattr(device, "type"):  # a torch.device is taken as it is
        device = resolve_device(str(device))
        dtype = default_dtype(device, dtype) if isinstance(dtype, str) or dtype is None else dtype
    root, has_vision = _root_and_vision(path)
    cls = AutoModelForImageTextToText if has_vision else AutoModelForCausalLM
    kwargs: dict[str, Any] = {"dtype": resolve_torch_dtype(dtype), "local_files_only": True}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if placement is not None:
        kwargs["device_map"] = placement
        if offload_folder is not None:
            kwargs["offload_folder"] = str(offload_folder)
    try:
        with hf_progress_off():
            model = cls.from_pretrained(root, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"transformers cannot load {root} with {cls.__name__} ({exc}).") from exc
    if placement is None and str(device) != "cpu":
        model = model.to(device)
    model.eval()
    return model


def load_processor(path: str | os.PathLike[str] | Checkpoint) -> Any:
    """The processor (VLMs) or tokenizer (text models) saved with a checkpoint."""
    root = str(path.root) if isinstance(path, Checkpoint) else str(path)
    try:
        from frankenlab.compat import load_processor as _compat_load
    except ImportError:  # pragma: no cover - compat ships with frankenlab; kept for partial installs
        _compat_load = None
    try:
        if _compat_load is not None:
            return _compat_load(root)
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(root, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"cannot load a processor or tokenizer from {root} ({exc}).") from exc


def load(path: str | os.PathLike[str] | Checkpoint, *, dtype: str | torch.dtype | None = None,
         device: str | torch.device | None = None, attn_implementation: str | None = None,
         device_map: str | Mapping[str, Any] | None = None,
         offload_folder: str | os.PathLike[str] | None = None) -> tuple[PreTrainedModel, Any]:
    """(model, processor) of a checkpoint directory (arguments as `load_model`)."""
    return (load_model(path, dtype=dtype, device=device, attn_implementation=attn_implementation,
                       device_map=device_map, offload_folder=offload_folder),
            load_processor(path))
