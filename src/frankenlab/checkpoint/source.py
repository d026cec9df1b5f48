"""Turn what the user typed (a directory or a hub id) into a local directory of safetensors."""

from __future__ import annotations

import os
import re
from pathlib import Path

from frankenlab.errors import CheckpointError

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]


def _first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, shortened: hub errors run over many lines."""
    text = (str(exc).strip().splitlines() or [""])[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}


def resolve_checkpoint(source: str | os.PathLike[str], *, revision: str | None = None) -> Path:
    """Return the local directory holding the checkpoint, downloading a hub id only when online."""
    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(
                f"{path} is a file; give the checkpoint's directory (the folder with config.json "
                "and the .safetensors files)."
            )
        return path.resolve()
    text = str(source)
    if not _HUB_ID.match(text):
        raise CheckpointError(
            f"checkpoint {text!r} not found: no such directory, and it is not a hub id of the form "
            "'org/name'. Check the path."
        )
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - huggingface_hub is a dependency
        raise CheckpointError(f"{text!r} looks like a hub id but huggingface_hub is missing") from exc
    try:
        local = snapshot_download(text, revision=revision, allow_patterns=_HUB_PATTERNS, local_files_only=True)
        return Path(local)
    except Exception as cached_exc:  # noqa: BLE001 - any miss falls through to the online attempt
        if _offline():
            raise CheckpointError(
                f"hub id {text!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set. "
                f"Download it on a connected machine (`hf download {text}`) and copy the "
                "cache, or pass the checkpoint's local directory instead."
            ) from cached_exc
    try:
        local = snapshot_download(text, revision=revision, allow_patterns=_HUB_PATTERNS)
    except Exception as exc:  # noqa: BLE001 - every download failure becomes one clear message
        raise CheckpointError(
            f"could not download hub id {text!r} ({type(exc).__name__}: {_first_line(exc)}). If this machine "
            f"is offline, download it elsewhere (`hf download {text}`) and pass the local directory instead."
        ) from exc
    return Path(local)
