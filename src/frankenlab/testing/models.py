"""Tiny seeded checkpoints saved fully offline, plus images and generation helpers for tests.

The builders themselves (configs, models, processors, generation kwargs) live in
:mod:`frankenlab.tiny.models`, because the mini-world needs them; they are re-exported here unchanged.

Weight-name layouts written by :func:`save_tiny_checkpoint` (transformers 5.24); ``hub`` is what
``save_pretrained`` writes, ``transformers5`` the in-memory ``model.state_dict()`` names:

* qwen2_vl, qwen2_5_vl -- hub: ``model.layers.N.*``, ``model.embed_tokens.weight``, ``model.norm.weight``,
  ``visual.blocks.N.*``, ``visual.merger.*``, ``lm_head.weight``; transformers5:
  ``model.language_model.layers.N.*``, ``model.language_model.embed_tokens.weight``,
  ``model.visual.blocks.N.*``, ``model.visual.merger.*``, ``lm_head.weight``.
* qwen3_vl -- both layouts: ``model.language_model.layers.N.*``, ``model.visual.blocks.N.*``,
  ``model.visual.deepstack_merger_list.K.*``, ``lm_head.weight`` (Qwen3-VL never had the legacy names).
* llava -- hub: ``language_model.model.layers.N.*``, ``language_model.lm_head.weight``,
  ``vision_tower.encoder.layers.N.*``, ``multi_modal_projector.linear_{1,2}.*``; transformers5:
  ``model.language_model.layers.N.*``, ``model.vision_tower.encoder.layers.N.*``,
  ``model.multi_modal_projector.*``, ``lm_head.weight``.
* llama, qwen2, qwen3 -- both layouts: ``model.layers.N.*``, ``model.embed_tokens.weight``, ``lm_head.weight``.

With ``tie_word_embeddings=True`` no ``lm_head`` tensor is written (as ``save_pretrained`` does).
Note for LLaVA: real llava-hf checkpoints store the CLIP tower as ``vision_tower.vision_model.*``; transformers
5.24 loads that too (it strips ``vision_model.``) but saves a fresh model without it, as listed above.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from frankenlab.tiny.models import (
    ALL_FAMILIES,
    FAMILIES,
    QWEN_VL_FAMILIES,
    TEXT_FAMILIES,
    VISION_SPECIAL_TOKENS,
    VLM_FAMILIES,
    auto_model_class,
    available_families,
    build_tiny_model,
    safe_generate_kwargs,
    suppressed_token_ids,
    tiny_config,
    tiny_processor,
)
from frankenlab.tiny.tokenizer import build_tokenizer

__all__ = [
    "ALL_FAMILIES",
    "FAMILIES",
    "QWEN_VL_FAMILIES",
    "TEXT_FAMILIES",
    "VISION_SPECIAL_TOKENS",
    "VLM_FAMILIES",
    "Layout",
    "auto_model_class",
    "available_families",
    "build_tiny_model",
    "checkpoint_state_dict",
    "generate_text",
    "generate_with_image",
    "safe_generate_kwargs",
    "save_tiny_checkpoint",
    "suppressed_token_ids",
    "tiny_config",
    "tiny_image",
    "tiny_processor",
]

Layout = Literal["hub", "transformers5"]


def tiny_image(seed: int = 0, size: tuple[int, int] = (56, 56)) -> Image.Image:
    """A seeded random RGB image; ``size`` is (width, height) as in PIL."""
    width, height = size
    arr = np.random.RandomState(seed).randint(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(arr, mode="RGB")


def _model_inputs(model: PreTrainedModel, batch: Any) -> dict[str, Any]:
    from frankenlab.runtime.generate import to_model

    return to_model(model, batch)


def generate_with_image(
    model: PreTrainedModel,
    processor: Any,
    image: Image.Image,
    prompt: str,
    max_new_tokens: int = 4,
) -> str:
    """Greedy-generate an answer about ``image``; shows the one correct way to call a VLM.

    Every key the processor returns is passed on -- notably ``mm_token_type_ids``, without which Qwen2.5-VL
    (and the other Qwen-VLs) silently fall back to 1-D positions -- and vision tokens are suppressed.
    """
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    batch = processor(text=[text], images=[image], return_tensors="pt")
    inputs = _model_inputs(model, batch)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, **safe_generate_kwargs(processor))
    new_tokens = out[:, inputs["input_ids"].shape[1] :]
    return processor.batch_decode(new_tokens, skip_special_tokens=True)[0]


def generate_text(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    max_new_tokens: int = 4,
) -> str:
    """Greedy chat-formatted generation for any family (text-only input); returns the new text."""
    messages = [{"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    batch = tokenizer([text], return_tensors="pt")
    inputs = _model_inputs(model, batch)
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, **safe_generate_kwargs(tokenizer))
    return tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]


def _reshard(out_dir: Path, shards: int) -> None:
    """Split ``model.safetensors`` into ``shards`` files + index, as ``save_pretrained`` names them."""
    single = out_dir / "model.safetensors"
    with safe_open(str(single), "pt") as f:
        metadata = f.metadata() or {"format": "pt"}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    names = sorted(tensors)
    if not 1 <= shards <= len(names):
        raise ValueError(f"shards={shards} must be between 1 and the number of tensors ({len(names)})")
    sizes = [tensors[n].numel() * tensors[n].element_size() for n in names]
    total = sum(sizes)
    # Contiguous split in sorted-name order, balanced by bytes, no shard empty.
    groups: list[list[str]] = [[]]
    acc = 0
    for i, (name, size) in enumerate(zip(names, sizes, strict=True)):
        still_to_open = shards - len(groups)
        if (
            groups[-1]
            and still_to_open > 0
            and (acc >= total * len(groups) / shards or len(names) - i == still_to_open)
        ):
            groups.append([])
        groups[-1].append(name)
        acc += size
    weight_map: dict[str, str] = {}
    for idx, group in enumerate(groups, start=1):
        fname = f"model-{idx:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n].contiguous() for n in group}, str(out_dir / fname), metadata=metadata)
        weight_map.update(dict.fromkeys(group, fname))
    index = {
        "metadata": {"total_parameters": sum(t.numel() for t in tensors.values()), "total_size": total},
        "weight_map": weight_map,
    }
    with open(out_dir / "model.safetensors.index.json", "w", encoding="utf-8") as fh:
        fh.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
    single.unlink()


def save_tiny_checkpoint(
    family: str,
    out_dir: str | os.PathLike[str],
    *,
    layout: Layout = "hub",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    n_llm_layers: int = 4,
    n_vision_blocks: int = 4,
    with_processor: bool = True,
    shards: int | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    **kw: Any,
) -> Path:
    """Write a normal Hugging Face checkpoint directory for a tiny ``family`` model; returns its path.

    ``layout="hub"`` is plain ``save_pretrained`` (legacy names, see the module table);
    ``layout="transformers5"`` is ``save_pretrained(save_original_format=False)``: the in-memory names, tied
    weights dropped as usual, metadata ``{"format": "pt"}``. For qwen3_vl and the text families both layouts
    are the same names. ``shards=N`` writes ``model-0000i-of-0000N.safetensors`` plus
    ``model.safetensors.index.json``. ``with_processor`` adds the tokenizer, chat template and (VLMs) the
    processor config; load the latter with :func:`frankenlab.compat.load_processor`. Extra ``kw`` go to
    :func:`tiny_config`. ``out_dir`` must not exist or be empty.
    """
    if layout not in ("hub", "transformers5"):
        raise ValueError(f"layout must be 'hub' or 'transformers5', got {layout!r}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} exists and is not an empty directory")
    out.mkdir(parents=True, exist_ok=True)
    tok = tokenizer if tokenizer is not None else build_tokenizer()
    model = build_tiny_model(
        family,
        seed=seed,
        dtype=dtype,
        tokenizer=tok,
        n_llm_layers=n_llm_layers,
        n_vision_blocks=n_vision_blocks,
        **kw,
    )
    model.save_pretrained(str(out), save_original_format=(layout == "hub"))
    if shards is not None:
        _reshard(out, shards)
    if with_processor:
        tiny_processor(family, tok).save_pretrained(str(out))
    return out


def checkpoint_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """All tensors stored in a checkpoint directory under their on-disk names (single file or sharded)."""
    path = Path(path)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"no .safetensors files in {path}")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
    return tensors
