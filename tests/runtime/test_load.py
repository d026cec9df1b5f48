from __future__ import annotations

import pytest
import torch

from frankenlab.errors import CheckpointError
from frankenlab.runtime import load, load_model, resolve_torch_dtype
from frankenlab.testing.models import save_tiny_checkpoint


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("runtime")
    return {
        "vlm": save_tiny_checkpoint("qwen2_5_vl", root / "vlm", dtype=torch.bfloat16, n_llm_layers=2,
                                    n_vision_blocks=2),
        "text": save_tiny_checkpoint("qwen2", root / "text", n_llm_layers=2),
    }


def test_vlm_and_text_pick_their_auto_class(ckpts):
    vlm, proc = load(ckpts["vlm"])
    assert type(vlm).__name__ == "Qwen2_5_VLForConditionalGeneration" and vlm.dtype == torch.bfloat16
    assert not vlm.training and hasattr(proc, "image_processor")
    text = load_model(ckpts["text"], dtype="bf16", attn_implementation="eager")
    assert type(text).__name__ == "Qwen2ForCausalLM" and text.dtype == torch.bfloat16
    assert text.config._attn_implementation == "eager"


def test_dtype_spelling_and_errors(tmp_path):
    assert resolve_torch_dtype(None) == "auto"
    assert resolve_torch_dtype("float32") is torch.float32
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing")
