"""Tiny models shared by the probe tests (built once per session; every test leaves them untouched)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch

from frankenlab.arch import adapter_for
from frankenlab.probe.run import ProbeModel
from frankenlab.runtime.generate import Prompt, encode, to_model
from frankenlab.testing import build_tiny_model, tiny_image, tiny_processor


@dataclass
class Tiny:
    model: Any
    processor: Any
    adapter: Any

    def probe_model(self, name: str = "tiny") -> ProbeModel:
        return ProbeModel(self.model, self.processor, self.adapter, f"fp-{name}", name)

    def inputs(self, text: str = "How many shapes are there?", image: Any = None) -> dict[str, Any]:
        return to_model(self.model, encode(self.processor, [Prompt(text, image)]))


def _tiny(family: str, attn: str = "sdpa", seed: int = 0) -> Tiny:
    model = build_tiny_model(family, seed=seed, attn_implementation=attn)
    return Tiny(model, tiny_processor(family), adapter_for(model.config.to_dict()))


@pytest.fixture(scope="session")
def qwen() -> Tiny:
    return _tiny("qwen2_5_vl")


@pytest.fixture(scope="session")
def qwen_eager() -> Tiny:
    """Same weights as `qwen`, eager attention (the reference for attention weights)."""
    return _tiny("qwen2_5_vl", attn="eager")


@pytest.fixture(scope="session")
def qwen_rl() -> Tiny:
    return _tiny("qwen2_5_vl", seed=1)


@pytest.fixture(scope="session")
def llava() -> Tiny:
    return _tiny("llava")


@pytest.fixture
def images():
    """(target, source): two different 84×84 images (9 image tokens on the tiny Qwen processor)."""
    return tiny_image(0, (84, 84)), tiny_image(1, (84, 84))


def no_hooks(model: Any) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def logits(model: Any, inputs: dict[str, Any]) -> torch.Tensor:
    with torch.inference_mode():
        return model(**inputs, use_cache=False).logits
