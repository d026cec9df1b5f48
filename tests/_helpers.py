"""Small builders shared by tests (hand-made checkpoints without transformers)."""

from __future__ import annotations

import json
from pathlib import Path


def write_text_ckpt(root: Path, tensors: dict, *, model_type: str = "llama", n_layers: int = 2,
                    extra_config: dict | None = None) -> Path:
    """A minimal text-model checkpoint directory from a dict of torch tensors."""
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    cfg = {"model_type": model_type, "num_hidden_layers": n_layers, **(extra_config or {})}
    (root / "config.json").write_text(json.dumps(cfg))
    save_file(tensors, str(root / "model.safetensors"), metadata={"format": "pt"})
    return root
