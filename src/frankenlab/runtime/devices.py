"""`auto` devices and dtypes, decided in one place for every command.

`auto` is the first CUDA GPU when one is visible, else the CPU; on a GPU the default dtype is bf16 (the
dtype checkpoints of this size are trained and served in), on the CPU the stored one.

A `device_map` (accelerate's placement: "auto", or module name -> device) replaces the single device for a
model too large for one GPU; then inputs go where the model reads them, `input_device(model)`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from frankenlab.errors import FrankenlabError

if TYPE_CHECKING:
    import torch

__all__ = ["DEVICE_MAPS", "DeviceError", "check_device_map", "default_dtype", "input_device", "module_device",
           "placement_device", "resolve_device"]

#: The named strategies accelerate accepts for `device_map` (the CLI offers only "auto").
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


class DeviceError(FrankenlabError):
    """A device name that is not usable here."""


def resolve_device(device: str | None) -> str:
    """'auto' (or None) → 'cuda' when a GPU is visible, else 'cpu'; 'cpu', 'cuda', 'cuda:N' are checked."""
    import torch

    name = (str(device) if device is not None else "auto").strip().lower()
    if name in ("auto", ""):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise DeviceError(f"device {device!r} is not a torch device; use auto, cpu, cuda or cuda:N.") from None
    if dev.type == "cpu":
        return "cpu"
    if dev.type != "cuda":
        raise DeviceError(f"device {device!r} is not supported; use auto, cpu, cuda or cuda:N.")
    if not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} was asked for, but no CUDA GPU is visible; use --device cpu (or auto).")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DeviceError(f"device {device!r}: only {torch.cuda.device_count()} GPU(s) are visible "
                          f"(cuda:0 … cuda:{torch.cuda.device_count() - 1}).")
    return name


def default_dtype(device: str, dtype: str | None) -> str | None:
    """The dtype to load in: the one asked for, else bf16 on a GPU, else None (as stored)."""
    if dtype is not None:
        return dtype
    return "bf16" if str(device).startswith("cuda") else None


def check_device_map(device_map: str | Mapping[str, Any] | None,
                     device: str | None = None) -> str | dict[str, Any] | None:
    """The device_map to pass to `from_pretrained` (None: none), checked before any weight is read.

    A device_map decides where every module goes, so it only goes with `device` None or "auto"; and it needs
    accelerate, which transformers uses to place and offload the modules.
    """
    if device_map is None:
        return None
    if isinstance(device_map, str):
        name = device_map.strip().lower()
        if name not in DEVICE_MAPS:
            raise DeviceError(f"device_map {device_map!r} is not understood; use auto (or omit it), or a mapping "
                              "of module names to devices.")
        value: str | dict[str, Any] = name
    elif isinstance(device_map, Mapping):
        if not device_map:
            raise DeviceError("device_map is an empty mapping; give module names -> devices, or use auto.")
        value = dict(device_map)
    else:
        raise DeviceError(f"device_map must be auto or a mapping of module names to devices, got "
                          f"{type(device_map).__name__}.")
    if device is not None and str(device).strip().lower() not in ("auto", ""):
        raise DeviceError(f"--device {device} and --device-map {device_map if isinstance(device_map, str) else 'MAP'} "
                          "both place the model; the device map decides where each layer goes, so leave --device "
                          "at auto (or drop --device-map).")
    if importlib.util.find_spec("accelerate") is None:
        raise DeviceError("--device-map needs accelerate, which transformers uses to split a model across devices; "
                          "install it (pip install accelerate, or pip install 'frankenlab[rl]').")
    return value


def placement_device(device_map: str | Mapping[str, Any]) -> str:
    """'cuda' when a device_map puts anything on a GPU (auto: when one is visible), else 'cpu': picks the dtype."""
    import torch

    if isinstance(device_map, str):
        return "cuda" if torch.cuda.is_available() else "cpu"
    for target in device_map.values():
        if isinstance(target, int) or (hasattr(target, "type") and target.type == "cuda") \
                or str(target).startswith("cuda"):
            return "cuda"
    return "cpu"


def module_device(module: Any) -> torch.device:
    """Where `module` computes: accelerate's execution device when it placed (or offloaded) the module, else the
    device of its first parameter that holds data; the CPU for a module without any."""
    import torch

    hook = getattr(module, "_hf_hook", None)
    execution = getattr(hook, "execution_device", None)
    if execution is not None:
        return torch.device(f"cuda:{execution}" if isinstance(execution, int) else execution)
    for param in module.parameters():
        if param.device.type != "meta":
            return param.device
    return torch.device("cpu")


def input_device(model: Any) -> torch.device:
    """The device model inputs must be on: the input embeddings' (on a split model the first layers', which
    need not be `model.device`)."""
    get = getattr(model, "get_input_embeddings", None)
    embeddings = get() if callable(get) else None
    if embeddings is None:
        return model.device
    return module_device(embeddings)
