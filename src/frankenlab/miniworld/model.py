"""The mini-world's tiny vision-language model: genuine transformers Qwen2.5-VL classes at toy size.

Why these pieces: the tokenizer is a byte-level BPE trained offline on the task vocabulary, so every
question word is one or two tokens and sequences stay ~35 tokens; the processor keeps 84x84 scenes at
exactly 3x3 merged visual tokens (one per grid cell); six decoder layers give early / mid / late
thirds of two layers each. The directory that :func:`save_pair_member` writes is a normal Hugging
Face checkpoint (``AutoModelForImageTextToText`` + :func:`frankenlab.compat.load_processor`).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForImageTextToText, PreTrainedModel, PreTrainedTokenizerFast

from frankenlab.miniworld.probe_pairs import make_probe_pairs
from frankenlab.miniworld.tasks import FAMILIES, make_split
from frankenlab.synth.scenes import describe, random_scene
from frankenlab.tiny.models import safe_generate_kwargs, tiny_config, tiny_processor
from frankenlab.tiny.tokenizer import build_tokenizer

__all__ = [
    "FAMILY",
    "ModelSpec",
    "build_miniworld_model",
    "build_miniworld_processor",
    "build_miniworld_tokenizer",
    "save_pair_member",
    "task_corpus",
]

FAMILY = "qwen2_5_vl"
#: Corpus seed is fixed (not the build seed): the vocabulary is part of the architecture, so every
#: build and every seed shares one tokenizer and checkpoints stay comparable tensor by tensor.
_CORPUS_SEED = 0
_CORPUS_ITEMS_PER_FAMILY = 60
_WINDOW_PX = 112  # 4x4 merged tokens: a whole 3x3 scene in one window


@dataclass(frozen=True)
class ModelSpec:
    """Sizes of the tiny model (defaults: ~0.38M parameters, ~1.5 MB in float32)."""

    n_llm_layers: int = 6
    n_vision_blocks: int = 4
    hidden: int = 64
    n_heads: int = 4
    n_kv_heads: int = 2
    vision_hidden: int = 32
    vision_heads: int = 2
    vocab_size: int = 400
    #: Qwen's 1e6 leaves the column rotary frequencies of a 16-dim head at ~1e-4 rad per cell: the
    #: model could not tell grid cells apart. A small base gives rows and columns distinct angles.
    rope_theta: float = 4.0
    #: Initial weight std. At Qwen's 0.02 this tiny model sat on a loss plateau for most of the SFT
    #: budget whenever tasks were mixed; 0.1 lets attention find the image tokens within ~300 steps.
    init_std: float = 0.1


def task_corpus() -> list[str]:
    """Every template the mini-world speaks: questions, answers, descriptions, probe prompts, chat roles."""
    lines = ["user", "assistant", "system", "user assistant"]
    for it in make_split(_CORPUS_ITEMS_PER_FAMILY * len(FAMILIES), _CORPUS_SEED, split="train", unique=False):
        lines += [it.question, it.answer, it.description]
    lines += [row["prompt"] for row in make_probe_pairs(5, _CORPUS_SEED)]
    rng = random.Random(f"frankenlab.miniworld.corpus:{_CORPUS_SEED}")
    lines += [describe(random_scene(rng, n_digits=(0, 2))) for _ in range(20)]
    return lines


def build_miniworld_tokenizer(spec: ModelSpec | None = None) -> PreTrainedTokenizerFast:
    """The byte-level BPE trained on :func:`task_corpus`; identical on every call."""
    spec = spec or ModelSpec()
    return build_tokenizer(task_corpus(), vocab_size=spec.vocab_size)


def build_miniworld_processor(tokenizer: PreTrainedTokenizerFast) -> Any:
    """Qwen2.5-VL processor (PIL image processor, no torchvision); 84x84 -> 36 patches -> 9 merged tokens."""
    return tiny_processor(FAMILY, tokenizer)


def build_miniworld_model(
    tokenizer: PreTrainedTokenizerFast, *, seed: int = 0, spec: ModelSpec | None = None
) -> PreTrainedModel:
    """A freshly initialised float32 model (eager attention: deterministic, and the reference path)."""
    spec = spec or ModelSpec()
    cfg = tiny_config(
        FAMILY,
        tokenizer=tokenizer,
        n_llm_layers=spec.n_llm_layers,
        n_vision_blocks=spec.n_vision_blocks,
        hidden=spec.hidden,
        n_heads=spec.n_heads,
        n_kv_heads=spec.n_kv_heads,
        vision_hidden=spec.vision_hidden,
        vision_heads=spec.vision_heads,
    )
    # One attention window per 84x84 scene: outside flash attention the vision tower loops over windows
    # in Python, and 4 windows per image made it the slowest part of a training step.
    cfg.vision_config.window_size = _WINDOW_PX
    cfg.text_config.rope_parameters = {**cfg.text_config.rope_parameters, "rope_theta": spec.rope_theta}
    for sub in (cfg, cfg.text_config, cfg.vision_config):
        sub.initializer_range = spec.init_std
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    model.eval()
    set_generation_defaults(model, tokenizer)
    return model


def set_generation_defaults(model: PreTrainedModel, tokenizer: Any) -> None:
    """Greedy, short answers, vision tokens suppressed: what every consumer of the checkpoint should get."""
    kw = safe_generate_kwargs(tokenizer)
    gen = model.generation_config
    gen.do_sample = False
    gen.temperature = None
    gen.top_p = None
    gen.top_k = None
    gen.eos_token_id = kw["eos_token_id"]
    gen.pad_token_id = kw["pad_token_id"]
    gen.suppress_tokens = kw["suppress_tokens"]
    gen.max_new_tokens = 8


def save_pair_member(model: PreTrainedModel, processor: Any, out_dir: str | os.PathLike[str]) -> Path:
    """``save_pretrained`` of model and processor into ``out_dir`` (which the caller makes atomic)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_generation_defaults(model, processor.tokenizer)
    with torch.no_grad():
        model.save_pretrained(str(out))
    processor.save_pretrained(str(out))
    return out
