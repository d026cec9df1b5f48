"""Every intervention undoes itself: no hooks, no attention function, same outputs, also after an error."""

from __future__ import annotations

import pytest
import torch
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from frankenlab.errors import ProbeError
from frankenlab.probe.hooks import (
    VisualKV,
    capture_kv,
    record_attention,
    skip_layers,
    swap_visual_kv,
    text_attn_implementation,
)
from tests.probe.conftest import logits, no_hooks


class Boom(Exception):
    pass


def _registered() -> set[str]:
    return {k for k in [*ALL_ATTENTION_FUNCTIONS, *ALL_MASK_ATTENTION_FUNCTIONS] if k.startswith("frankenlab")}


def test_skip_layers_removes_hooks_on_error(qwen, images):
    inputs = qwen.inputs(image=images[0])
    before = logits(qwen.model, inputs)
    with pytest.raises(Boom), skip_layers(qwen.model, qwen.adapter, [1, 2]):
        assert not no_hooks(qwen.model)
        changed = logits(qwen.model, inputs)
        assert not torch.allclose(changed, before)
        raise Boom
    assert no_hooks(qwen.model)
    assert torch.equal(logits(qwen.model, inputs), before)


@pytest.mark.parametrize("which", ["swap", "record", "capture"])
def test_attention_functions_restored_on_error(qwen, images, which):
    model, adapter = qwen.model, qwen.adapter
    inputs = qwen.inputs(image=images[0])
    before = logits(model, inputs)
    impl, vision_impl = text_attn_implementation(model), model.config.vision_config._attn_implementation
    n = len(adapter.decoder_layers(model))
    pos = torch.arange(4, 6)
    if which == "swap":
        src = VisualKV(pos, tuple(torch.zeros(2, 2, 16) for _ in range(n)), tuple(torch.zeros(2, 2, 16) for _ in
                       range(n)), inputs["input_ids"].shape[1])
        ctx = swap_visual_kv(model, adapter, src, [range(n)])
    elif which == "record":
        ctx = record_attention(model, adapter, pos[None], torch.zeros(1, inputs["input_ids"].shape[1], 1, dtype=bool))
    else:
        ctx = capture_kv(model, adapter, pos)
    with pytest.raises(Boom), ctx:
        assert text_attn_implementation(model).startswith("frankenlab")
        assert model.config.vision_config._attn_implementation == vision_impl  # text model only
        logits(model, inputs)
        raise Boom
    assert text_attn_implementation(model) == impl
    assert model.config.vision_config._attn_implementation == vision_impl
    assert _registered() == set()
    assert no_hooks(model)
    assert torch.equal(logits(model, inputs), before)


def test_per_row_skip_matches_whole_batch_skip(qwen):
    """Row plan {2: [1]}: row 0 is the plain model, row 1 the model with layer 2 skipped."""
    inputs = qwen.inputs("Add 2 and 3.")
    two = {k: torch.cat([v, v]) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    plain = logits(qwen.model, inputs)
    with skip_layers(qwen.model, qwen.adapter, [2]):
        skipped = logits(qwen.model, inputs)
    with skip_layers(qwen.model, qwen.adapter, {2: [1]}):
        mixed = logits(qwen.model, two)
    torch.testing.assert_close(mixed[0], plain[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed[1], skipped[0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(plain, skipped)


def test_bad_layers_are_refused_before_anything_is_installed(qwen):
    with pytest.raises(ProbeError, match="cannot skip decoder layer 9"), skip_layers(qwen.model, qwen.adapter, [9]):
        pass
    assert no_hooks(qwen.model)
