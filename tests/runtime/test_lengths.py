"""Answer length per item kind (explicit always wins) and stop tokens that ignore the checkpoint's config."""

from __future__ import annotations

import pytest

from frankenlab.errors import FrankenlabError
from frankenlab.runtime.generate import (
    DEFAULT_MAX_NEW_TOKENS,
    GenerationSettings,
    HFBackend,
    backend_for_kind,
    decoding_record,
    resolve_max_new_tokens,
    stop_ids,
)
from frankenlab.testing.models import build_tiny_model, tiny_processor


def test_explicit_length_wins_and_none_means_the_kind_default():
    assert dict(DEFAULT_MAX_NEW_TOKENS) == {"perception": 256, "reasoning": 1024}
    assert resolve_max_new_tokens(None, "perception") == 256
    assert resolve_max_new_tokens(None, "reasoning") == 1024
    assert resolve_max_new_tokens(7, "reasoning") == 7
    with pytest.raises(FrankenlabError, match="unknown item kind"):
        resolve_max_new_tokens(None, "vibes")
    with pytest.raises(FrankenlabError, match="positive integer"):
        resolve_max_new_tokens(0, "perception")
    per_kind = GenerationSettings(max_new_tokens=None, batch_size=3)
    assert per_kind.for_kind("reasoning") == GenerationSettings(max_new_tokens=1024, batch_size=3)
    assert GenerationSettings(max_new_tokens=5).for_kind("reasoning").max_new_tokens == 5


def test_backend_for_kind_resolves_a_copy_and_refuses_unresolved_lengths():
    model, proc = build_tiny_model("qwen2_5_vl", seed=0, n_llm_layers=2, n_vision_blocks=2), tiny_processor(
        "qwen2_5_vl")
    backend = HFBackend(model, proc, settings=GenerationSettings(max_new_tokens=None))
    with pytest.raises(FrankenlabError, match="not resolved"):
        backend.generate_kwargs()
    short = backend_for_kind(backend, "perception")
    assert short is not backend and short.model is model
    assert short.generate_kwargs()["max_new_tokens"] == 256
    assert backend.settings.max_new_tokens is None  # the original is untouched
    fixed = HFBackend(model, proc, settings=GenerationSettings(max_new_tokens=9))
    assert backend_for_kind(fixed, "reasoning") is fixed


def test_stops_come_from_the_tokenizer_not_the_checkpoint_config():
    model, proc = build_tiny_model("qwen2_5_vl", seed=0, n_llm_layers=2, n_vision_blocks=2), tiny_processor(
        "qwen2_5_vl")
    odd = proc.tokenizer.convert_tokens_to_ids("7")
    model.generation_config.eos_token_id = [odd]
    assert odd not in stop_ids(proc)
    assert odd not in HFBackend(model, proc).generate_kwargs()["eos_token_id"]
    assert odd in HFBackend(model, proc, checkpoint_eos=True).generate_kwargs()["eos_token_id"]


def test_decoding_record_keeps_both_configs():
    from transformers import GenerationConfig

    own = GenerationConfig(repetition_penalty=1.05, top_k=20, eos_token_id=[2, 5], do_sample=True)
    rec = decoding_record({"do_sample": False, "eos_token_id": [0, 2], "max_new_tokens": 3}, {"reasoning": 3}, own)
    assert rec["greedy"] is True and rec["max_new_tokens"] == {"reasoning": 3}
    assert rec["checkpoint_generation_config"]["repetition_penalty"] == 1.05
    assert rec["generation_config"] == {"eos_token_id": [2, 5]}  # only the token ids survive
    assert rec["generate_kwargs"]["eos_token_id"] == [0, 2] and rec["checkpoint_generation_config_applied"] is False
