"""Run manifests (versions, seeds, arguments, input fingerprints) and stage-done markers."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from frankenlab.io.atomic import write_json
from frankenlab.io.store import marker_key


def versions() -> dict[str, str]:
    """Versions of the packages that decide results."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for mod in ("frankenlab", "torch", "transformers", "safetensors", "numpy", "trl", "vllm"):
        try:
            m = __import__(mod)
            out[mod] = str(getattr(m, "__version__", "?"))
        except ImportError:
            continue
    return out


def settings_key(settings: dict[str, Any]) -> str:
    """Stable short hash of JSON-able settings: decides whether cached results still apply."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def build_manifest(command: str, *, args: dict[str, Any], inputs: dict[str, str] | None = None,
                   seed: int | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "command": command,
        "args": args,
        "inputs": inputs or {},
        "seed": seed,
        "versions": versions(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"cpus": os.cpu_count()},
        **(extra or {}),
    }


def write_manifest(out_dir: str | os.PathLike[str], manifest: dict[str, Any]) -> Path:
    return write_json(Path(out_dir) / "manifest.json", manifest)


def done_marker(out_dir: str | os.PathLike[str], stage: str) -> Path:
    """Where `mark_done` records that `stage` finished in `out_dir`."""
    return Path(out_dir) / f".done-{stage}.json"


def mark_done(out_dir: str | os.PathLike[str], stage: str, key: str) -> None:
    write_json(done_marker(out_dir, stage), {"stage": stage, "key": key, "time": time.time()})


def is_current(marker: str | os.PathLike[str], key: str) -> bool:
    """True when the marker file records `key`; a missing or unreadable marker is never current."""
    return marker_key(marker) == key


def is_done(out_dir: str | os.PathLike[str], stage: str, key: str) -> bool:
    return is_current(done_marker(out_dir, stage), key)
