"""Tiny IN/RL pairs shared by the merge tests (built once per session, fully offline).

Qwen2.5-VL with 6 LLM layers (thirds 2/2/2) and 2 vision blocks, bf16; IN and RL are two seeds.
RL's generation_config.json carries a marker so tests can tell which model the files came from.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from frankenlab.testing.models import save_tiny_checkpoint

N_LLM = 6


def make_pair(root: Path, *, family: str = "qwen2_5_vl", layout: str = "hub", **kw) -> tuple[Path, Path]:
    in_ = save_tiny_checkpoint(family, root / "in", layout=layout, seed=0, dtype=torch.bfloat16,
                               n_llm_layers=N_LLM, n_vision_blocks=2, **kw)
    rl = save_tiny_checkpoint(family, root / "rl", layout=layout, seed=1, dtype=torch.bfloat16,
                              n_llm_layers=N_LLM, n_vision_blocks=2, **kw)
    gen = rl / "generation_config.json"
    cfg = json.loads(gen.read_text())
    cfg["frankenlab_test_marker"] = "RL"
    gen.write_text(json.dumps(cfg))
    return in_, rl


@pytest.fixture(scope="session")
def vlm_pairs(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """layout ("hub", "transformers5") → (IN, RL) directories."""
    root = tmp_path_factory.mktemp("merge-pairs")
    return {layout: make_pair(root / layout, layout=layout) for layout in ("hub", "transformers5")}


@pytest.fixture(scope="session")
def hub_pair(vlm_pairs) -> tuple[Path, Path]:
    return vlm_pairs["hub"]


@pytest.fixture(scope="session")
def tied_text_pair(tmp_path_factory) -> tuple[Path, Path]:
    """A text-only Qwen2 pair with tied embeddings (no lm_head.weight stored)."""
    root = tmp_path_factory.mktemp("merge-text")
    return make_pair(root, family="qwen2", tie_word_embeddings=True)
