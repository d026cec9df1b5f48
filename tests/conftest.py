"""Shared fixtures: offline, single-threaded torch, small helpers for hand-made checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _torch_threads() -> None:
    """One torch thread for every test, restored before each one: CLI entry points set their own count (the
    adaptive default), and bit-exactness tests must not depend on which test ran before them."""
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@pytest.fixture
def text_tensors():
    import torch

    g = torch.Generator().manual_seed(0)
    out = {"model.embed_tokens.weight": torch.randn(16, 8, generator=g), "model.norm.weight": torch.ones(8),
           "lm_head.weight": torch.randn(16, 8, generator=g)}
    for k in range(2):
        p = f"model.layers.{k}."
        for m in ("q", "k", "v", "o"):
            out[p + f"self_attn.{m}_proj.weight"] = torch.randn(8, 8, generator=g)
        for m in ("gate", "up"):
            out[p + f"mlp.{m}_proj.weight"] = torch.randn(12, 8, generator=g)
        out[p + "mlp.down_proj.weight"] = torch.randn(8, 12, generator=g)
        out[p + "input_layernorm.weight"] = torch.ones(8)
        out[p + "post_attention_layernorm.weight"] = torch.ones(8)
    return out


@pytest.fixture(scope="session")
def fast_world(tmp_path_factory) -> Path:
    """OUT of `frankenlab miniworld build OUT --fast --seed 0` (read it, never write into it)."""
    pytest.importorskip("trl", reason="the mini-world build trains RL with TRL: pip install 'frankenlab[rl]'")
    from frankenlab.cli.app import main

    out = tmp_path_factory.mktemp("mw-shared") / "world"
    with pytest.raises(SystemExit) as exc:
        main(["miniworld", "build", str(out), "--fast", "--seed", "0"])
    assert exc.value.code == 0
    return out
