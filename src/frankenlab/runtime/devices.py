"""`auto` devices and dtypes, decided in one place for every command.

`auto` is the first CUDA GPU when one is visible, else the CPU; on a GPU the default dtype is bf16 (the
dtype checkpoints of this size are trained and served in), on the CPU the stored one.
"""

from __future__ import annotations

from frankenlab.errors import FrankenlabError

__all__ = ["DeviceError", "default_dtype", "resolve_device"]


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
