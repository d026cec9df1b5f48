"""Generate a ≥ 1 GB IN/RL checkpoint pair with real Qwen2.5-VL-7B widths and few layers.

Used by the compare and merge benchmarks (never by tests). RL = IN + a low-rank update with a
decaying spectrum on every matrix of chosen LLM layers, so spectral metrics have a known shape.

    python benchmarks/bigpair.py OUT_DIR [--llm-layers 2] [--vision-blocks 2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

HIDDEN, INTER, KV, VOCAB = 3584, 18944, 512, 32000
V_HIDDEN, V_INTER = 1280, 3420


def _config(n_llm: int, n_vis: int) -> dict:
    from transformers import Qwen2_5_VLConfig

    cfg = Qwen2_5_VLConfig(
        text_config=dict(hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=n_llm,
                         num_attention_heads=28, num_key_value_heads=4, vocab_size=VOCAB,
                         rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24],
                                          "rope_theta": 1e6}),
        vision_config=dict(depth=n_vis, hidden_size=V_HIDDEN, intermediate_size=V_INTER, num_heads=16,
                           out_hidden_size=HIDDEN, fullatt_block_indexes=[n_vis - 1]),
        torch_dtype="bfloat16",
        architectures=["Qwen2_5_VLForConditionalGeneration"],  # mergekit (and AutoConfig users) need it
    )
    return cfg.to_dict()


def _llm_layer(k: int) -> dict[str, tuple[int, ...]]:
    p = f"model.layers.{k}."
    return {
        p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN), p + "self_attn.q_proj.bias": (HIDDEN,),
        p + "self_attn.k_proj.weight": (KV, HIDDEN), p + "self_attn.k_proj.bias": (KV,),
        p + "self_attn.v_proj.weight": (KV, HIDDEN), p + "self_attn.v_proj.bias": (KV,),
        p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
        p + "mlp.gate_proj.weight": (INTER, HIDDEN), p + "mlp.up_proj.weight": (INTER, HIDDEN),
        p + "mlp.down_proj.weight": (HIDDEN, INTER),
        p + "input_layernorm.weight": (HIDDEN,), p + "post_attention_layernorm.weight": (HIDDEN,),
    }


def _vision_block(k: int) -> dict[str, tuple[int, ...]]:
    p = f"visual.blocks.{k}."
    return {
        p + "norm1.weight": (V_HIDDEN,), p + "norm2.weight": (V_HIDDEN,),
        p + "attn.qkv.weight": (3 * V_HIDDEN, V_HIDDEN), p + "attn.qkv.bias": (3 * V_HIDDEN,),
        p + "attn.proj.weight": (V_HIDDEN, V_HIDDEN), p + "attn.proj.bias": (V_HIDDEN,),
        p + "mlp.gate_proj.weight": (V_INTER, V_HIDDEN), p + "mlp.gate_proj.bias": (V_INTER,),
        p + "mlp.up_proj.weight": (V_INTER, V_HIDDEN), p + "mlp.up_proj.bias": (V_INTER,),
        p + "mlp.down_proj.weight": (V_HIDDEN, V_INTER), p + "mlp.down_proj.bias": (V_HIDDEN,),
    }


def _shards(n_llm: int, n_vis: int) -> list[dict[str, tuple[int, ...]]]:
    head = {
        "visual.patch_embed.proj.weight": (V_HIDDEN, 3, 2, 14, 14),
        "visual.merger.ln_q.weight": (V_HIDDEN,),
        "visual.merger.mlp.0.weight": (4 * V_HIDDEN, 4 * V_HIDDEN), "visual.merger.mlp.0.bias": (4 * V_HIDDEN,),
        "visual.merger.mlp.2.weight": (HIDDEN, 4 * V_HIDDEN), "visual.merger.mlp.2.bias": (HIDDEN,),
        "model.embed_tokens.weight": (VOCAB, HIDDEN),
    }
    for k in range(n_vis):
        head.update(_vision_block(k))
    shards = [head]
    shards += [_llm_layer(k) for k in range(n_llm)]
    shards.append({"model.norm.weight": (HIDDEN,), "lm_head.weight": (VOCAB, HIDDEN)})
    return shards


def _lowrank_update(shape: tuple[int, ...], gen: torch.Generator, rank: int = 16, scale: float = 1e-3) -> torch.Tensor:
    m, n = shape
    u = torch.randn(m, rank, generator=gen)
    v = torch.randn(rank, n, generator=gen)
    decay = torch.tensor([0.7**i for i in range(rank)])
    return (u * decay) @ v * (scale / (m * n) ** 0.25)


def make_big_pair(out: Path, n_llm: int = 2, n_vis: int = 2, seed: int = 0,
                  changed_layers: tuple[int, ...] | None = None) -> tuple[Path, Path]:
    """Write OUT/in and OUT/rl (bf16, sharded with an index); return their paths."""
    changed = set(range(n_llm)) if changed_layers is None else set(changed_layers)
    cfg = _config(n_llm, n_vis)
    paths = (out / "in", out / "rl")
    for p in paths:
        p.mkdir(parents=True, exist_ok=True)
        (p / "config.json").write_text(json.dumps(cfg, indent=2))
    gen = torch.Generator().manual_seed(seed)
    shards = _shards(n_llm, n_vis)
    weight_map: dict[str, str] = {}
    total = 0
    for i, spec in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        base: dict[str, torch.Tensor] = {}
        rl: dict[str, torch.Tensor] = {}
        for name, shape in spec.items():
            w = (torch.randn(*shape, generator=gen) * 0.02).to(torch.bfloat16)
            base[name] = w
            layer = int(name.split(".")[2]) if name.startswith("model.layers.") else None
            if layer is not None and layer in changed and len(shape) == 2:
                rl[name] = (w.float() + _lowrank_update(shape, gen)).to(torch.bfloat16)
            else:
                rl[name] = w
            weight_map[name] = fname
            total += w.numel() * 2
        save_file(base, str(paths[0] / fname), metadata={"format": "pt"})
        save_file(rl, str(paths[1] / fname), metadata={"format": "pt"})
        del base, rl
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    for p in paths:
        (p / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return paths


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--llm-layers", type=int, default=2)
    ap.add_argument("--vision-blocks", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    i, r = make_big_pair(a.out, a.llm_layers, a.vision_blocks, a.seed)
    size = sum(f.stat().st_size for f in i.glob("*.safetensors"))
    print(f"wrote {i} and {r}: {size / 1e9:.2f} GB each")
