from __future__ import annotations

import pytest
import torch

from frankenlab.runtime.generate import GenerationSettings, HFBackend, Prompt, render_prompt, suppressed_ids
from frankenlab.testing.models import build_tiny_model, tiny_image, tiny_processor


@pytest.fixture(scope="module")
def vlm():
    return build_tiny_model("qwen2_5_vl", seed=0, n_llm_layers=3, n_vision_blocks=2), tiny_processor("qwen2_5_vl")


def _prompts():
    return [Prompt(f"What is shown in picture {i}?", tiny_image(i)) for i in range(5)] + [
        Prompt("How much is 2 plus 3?"), Prompt("Count the shapes.", tiny_image(9, size=(84, 84)))]


def test_batched_equals_one_at_a_time(vlm):
    model, proc = vlm
    prompts = _prompts()
    batched = HFBackend(model, proc, batch_size=4, max_new_tokens=6).generate(prompts)
    single = HFBackend(model, proc, batch_size=1, max_new_tokens=6).generate(prompts)
    assert batched == single
    assert len(batched) == len(prompts)


def test_vision_tokens_are_never_generated(vlm):
    model, proc = vlm
    image_pad = proc.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert image_pad in suppressed_ids(proc, model.config)
    head = model.get_output_embeddings()
    saved = head.weight.detach().clone()
    from frankenlab.runtime.generate import encode, to_model

    inputs = to_model(model, encode(proc, _prompts()[:2]))
    try:
        with torch.no_grad():  # point <|image_pad|>'s output row along the final hidden states
            h = model(**inputs, output_hidden_states=True).hidden_states[-1][:, -1].mean(0)
            head.weight[image_pad] = h / h.norm() * 1e4
        backend = HFBackend(model, proc, batch_size=2, max_new_tokens=4)
        with torch.no_grad():  # without suppression the model would pick <|image_pad|> first
            logits = model(**inputs).logits
        assert (logits[:, -1].argmax(-1) == image_pad).all()
        inputs_ids = []
        out = backend.generate(_prompts()[:2], progress=inputs_ids.append)
        assert inputs_ids == [2]
        assert all("<|image_pad|>" not in s for s in out)
    finally:
        with torch.no_grad():
            head.weight.copy_(saved)


def test_system_prompt_is_explicit(vlm):
    _, proc = vlm
    text = render_prompt(proc, Prompt("Q?", tiny_image(0)), "Answer briefly.")
    assert text.startswith("<|im_start|>system\nAnswer briefly.")
    assert "<|vision_start|><|image_pad|><|vision_end|>Q?" in text
    assert "system" not in render_prompt(proc, Prompt("Q?"))


def test_settings_are_recorded_and_overridable(vlm):
    model, proc = vlm
    b = HFBackend(model, proc, settings=GenerationSettings(max_new_tokens=3), batch_size=2)
    assert b.settings.to_dict()["max_new_tokens"] == 3 and b.settings.batch_size == 2
    assert b.generate_kwargs()["do_sample"] is False


def test_text_model_backend():
    from frankenlab.testing.tokenizer import build_tokenizer

    model = build_tiny_model("qwen2", seed=0, n_llm_layers=2)
    tok = build_tokenizer()
    prompts = [Prompt("2 plus 3?"), Prompt("A longer question about numbers 1 2 3 4?")]
    batched = HFBackend(model, tok, batch_size=2).generate(prompts)
    assert batched == HFBackend(model, tok, batch_size=1).generate(prompts)
