"""Hand-made tiny checkpoints for the compare tests: tensors written directly with safetensors.

Names are built canonically and written in the requested on-disk layout through the adapter, so
the same weights can be stored hub-style for one checkpoint and transformers-5-style for another.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from frankenlab.arch.registry import adapter_for

H, INTER, VH, VI = 16, 24, 8, 12


def qwen_config(n_llm: int = 4, n_vis: int = 2) -> dict:
    return {"model_type": "qwen2_5_vl", "text_config": {"num_hidden_layers": n_llm}, "vision_config": {"depth": n_vis}}


def text_config(n_llm: int = 3) -> dict:
    return {"model_type": "llama", "num_hidden_layers": n_llm}


def _llm_layer(prefix: str) -> dict[str, tuple[int, ...]]:
    return {
        prefix + "self_attn.q_proj.weight": (H, H), prefix + "self_attn.q_proj.bias": (H,),
        prefix + "self_attn.k_proj.weight": (8, H), prefix + "self_attn.v_proj.weight": (8, H),
        prefix + "self_attn.o_proj.weight": (H, H),
        prefix + "mlp.gate_proj.weight": (INTER, H), prefix + "mlp.up_proj.weight": (INTER, H),
        prefix + "mlp.down_proj.weight": (H, INTER),
        prefix + "input_layernorm.weight": (H,), prefix + "post_attention_layernorm.weight": (H,),
    }


def qwen_shapes(n_llm: int = 4, n_vis: int = 2) -> dict[str, tuple[int, ...]]:
    """Canonical names → shapes of a tiny Qwen2.5-VL (conv patch embedding, merger, tied nothing)."""
    shapes: dict[str, tuple[int, ...]] = {"model.visual.patch_embed.proj.weight": (VH, 3, 2, 2, 2)}
    for k in range(n_vis):
        p = f"model.visual.blocks.{k}."
        shapes |= {p + "norm1.weight": (VH,), p + "norm2.weight": (VH,), p + "attn.qkv.weight": (3 * VH, VH),
                   p + "attn.qkv.bias": (3 * VH,), p + "attn.proj.weight": (VH, VH),
                   p + "mlp.gate_proj.weight": (VI, VH), p + "mlp.up_proj.weight": (VI, VH),
                   p + "mlp.down_proj.weight": (VH, VI)}
    shapes |= {"model.visual.merger.ln_q.weight": (VH,), "model.visual.merger.mlp.0.weight": (4 * VH, 4 * VH),
               "model.visual.merger.mlp.2.weight": (H, 4 * VH), "model.language_model.embed_tokens.weight": (40, H)}
    for k in range(n_llm):
        shapes |= _llm_layer(f"model.language_model.layers.{k}.")
    shapes |= {"model.language_model.norm.weight": (H,), "lm_head.weight": (40, H)}
    return shapes


def text_shapes(n_llm: int = 3) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (40, H)}
    for k in range(n_llm):
        shapes |= _llm_layer(f"model.layers.{k}.")
    return shapes | {"model.norm.weight": (H,), "lm_head.weight": (40, H)}


def random_weights(shapes: dict[str, tuple[int, ...]], seed: int = 0,
                   dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: (torch.randn(*s, generator=gen) * 0.05).to(dtype) for n, s in shapes.items()}


def perturb(weights: dict[str, torch.Tensor], chosen: Callable[[str], bool], seed: int = 1,
            scale: float = 0.01) -> dict[str, torch.Tensor]:
    """A copy where only the tensors `chosen` picks get a random change (others bit-identical)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, w in weights.items():
        if chosen(name):
            out[name] = (w.float() + torch.randn(w.shape, generator=gen) * scale).to(w.dtype)
        else:
            out[name] = w.clone()
    return out


def write_checkpoint(path: Path, weights: dict[str, torch.Tensor], config: dict, layout: str = "hub",
                     shards: int = 1) -> Path:
    """config.json + safetensors in `layout`; with shards > 1 also an index, as save_pretrained would."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    adapter = adapter_for(config)
    disk = {adapter.to_layout(n, layout): w.contiguous() for n, w in weights.items()}
    names = list(disk)
    if shards == 1:
        save_file(disk, str(path / "model.safetensors"), metadata={"format": "pt"})
        return path
    weight_map = {}
    per = -(-len(names) // shards)
    for i in range(shards):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: disk[n] for n in names[i * per:(i + 1) * per]}
        save_file(part, str(path / fname), metadata={"format": "pt"})
        weight_map |= dict.fromkeys(part, fname)
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path
