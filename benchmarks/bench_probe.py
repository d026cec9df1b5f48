"""Visual K/V swap: batched layer variants vs. one generate per layer; one image encoding per pair vs. per row.

Two comparisons on the same model, pairs and greedy settings, each printing wall times, their ratio,
whether every greedy answer (and margin) is identical, and peak RSS:

* layers — batched (`layer_batch` = all variants) against the loop `swap_pair(..., layer_batch=1)` (it
  still shares one source prefill per pair, so the ratio is a lower bound against the paper's script);
* vision — the batched swap encoding each pair's images once (`reuse_vision=True`, the default)
  against re-encoding the pixels in every row (`reuse_vision=False`, the earlier path).

By default a tiny seeded Qwen2.5-VL and procedurally drawn pairs; ``--model DIR --pairs JSONL`` runs a
real checkpoint on a pair set instead (the first ``--pairs-per-task`` rows of each task).

    python benchmarks/bench_probe.py [--compare layers,vision] [--layers 12] [--hidden 128]
        [--vision-blocks 4] [--vision-hidden 32] [--pairs-per-task 3] [--new 8] [--threads 2] [--device cpu]
    python benchmarks/bench_probe.py --compare vision --model ckpt/rl --pairs pairs/pairs.jsonl
"""

from __future__ import annotations

import argparse
import math
import resource
import time
from typing import Any

import torch


def _tiny(args: argparse.Namespace) -> tuple[Any, Any, Any, list[dict[str, Any]], str]:
    from frankenlab.arch import adapter_for
    from frankenlab.miniworld.probe_pairs import make_probe_pairs
    from frankenlab.testing import build_tiny_model, tiny_processor

    model = build_tiny_model("qwen2_5_vl", n_llm_layers=args.layers, hidden=args.hidden, n_heads=4, n_kv_heads=2,
                             n_vision_blocks=args.vision_blocks, vision_hidden=args.vision_hidden,
                             attn_implementation="sdpa", dtype=getattr(torch, args.dtype)).to(args.device)
    desc = (f"tiny qwen2_5_vl llm_layers={args.layers} hidden={args.hidden} vision_blocks={args.vision_blocks} "
            f"vision_hidden={args.vision_hidden}")
    return model, tiny_processor("qwen2_5_vl"), adapter_for(model.config.to_dict()), \
        make_probe_pairs(args.pairs_per_task, seed=0), desc


def _checkpoint(args: argparse.Namespace) -> tuple[Any, Any, Any, list[dict[str, Any]], str]:
    from PIL import Image

    from frankenlab.miniworld.probe_pairs import load_probe_pairs
    from frankenlab.probe.run import first_per_task, open_model

    pm = open_model(args.model, dtype=args.dtype, device=args.device)
    pairs = []
    for row in first_per_task(load_probe_pairs(args.pairs), args.pairs_per_task, lambda r: r["task"]):
        with Image.open(row["target_image"]) as t, Image.open(row["source_image"]) as s:
            pairs.append({**row, "target_image": t.convert("RGB"), "source_image": s.convert("RGB")})
    desc = f"{args.model} ({pm.adapter.family}, {pm.adapter.n_llm_layers} llm layers) on {args.pairs}"
    return pm.model, pm.processor, pm.adapter, pairs, desc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare", default="layers,vision", help="comma list of: layers, vision")
    ap.add_argument("--model", default=None, help="a VLM checkpoint directory (default: a tiny seeded Qwen2.5-VL)")
    ap.add_argument("--pairs", default=None, help="probe pairs JSONL for --model")
    ap.add_argument("--layers", type=int, default=12, help="LLM decoder layers of the tiny Qwen2.5-VL")
    ap.add_argument("--hidden", type=int, default=128, help="LLM hidden size of the tiny model")
    ap.add_argument("--vision-blocks", type=int, default=4, help="vision blocks of the tiny model")
    ap.add_argument("--vision-hidden", type=int, default=32, help="vision hidden size of the tiny model")
    ap.add_argument("--pairs-per-task", type=int, default=3)
    ap.add_argument("--new", type=int, default=8, help="max new tokens")
    ap.add_argument("--layer-batch", type=int, default=0, help="rows per batched pass (0: all variants at once)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per pair and implementation (mean)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    compare = [c.strip() for c in args.compare.split(",") if c.strip()]
    if set(compare) - {"layers", "vision"} or (args.model is None) != (args.pairs is None):
        ap.error("--compare takes layers and/or vision; --model and --pairs go together")

    from frankenlab.probe.kv_swap import VisionProbeSettings, swap_pair

    model, processor, adapter, pairs, desc = _checkpoint(args) if args.model else _tiny(args)
    n_layers = len(adapter.decoder_layers(model))
    rows = args.layer_batch or n_layers + 2

    def once(pair: dict, layer_batch: int, reuse: bool = True) -> tuple[float, Any]:
        settings = VisionProbeSettings(max_new_tokens=args.new, layer_batch=layer_batch, reuse_vision=reuse)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = swap_pair(model, processor, adapter, pair["target_image"], pair["source_image"], pair["prompt"],
                        pair["meta"]["target_answer"], pair["meta"]["source_answer"], settings)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0, res

    def race(name_a: str, a: dict[str, Any], name_b: str, b: dict[str, Any]) -> None:
        """Interleave the two implementations pair by pair, so a busy machine slows both alike."""
        once(pairs[0], **a)  # warm-up (allocators, kernels)
        once(pairs[0], **b)
        t_a = t_b = 0.0
        r_a, r_b = [], []
        for pair in pairs:
            for _ in range(args.repeats):
                ta, ra = once(pair, **a)
                tb, rb = once(pair, **b)
                t_a, t_b = t_a + ta / args.repeats, t_b + tb / args.repeats
            r_a.append(ra)
            r_b.append(rb)
        n_diff = sum(x.answers[k] != y.answers[k] for x, y in zip(r_a, r_b) for k in x.answers)
        pairs_m = [(x.margins[k], y.margins[k]) for x, y in zip(r_a, r_b) for k in x.margins]
        same_m = all(u == v or (math.isnan(u) and math.isnan(v)) for u, v in pairs_m)  # exact; NaN: no margin
        dm = [abs(u - v) for u, v in pairs_m if not (math.isnan(u) and math.isnan(v))]
        print(f"{name_a}: {t_a:.2f} s   {name_b}: {t_b:.2f} s   ratio {t_b / t_a:.2f}x   "
              f"identical greedy answers: {n_diff == 0} ({n_diff} differ)   identical margins: {same_m} "
              f"(max |diff| {max(dm, default=0.0):.3g})")

    print(f"{desc}; device={args.device} dtype={args.dtype} threads={args.threads} pairs={len(pairs)} "
          f"variants/pair={n_layers + 2} max_new_tokens={args.new}")
    if "layers" in compare:
        race(f"batched (layer_batch={rows})", {"layer_batch": rows}, "loop (layer_batch=1)", {"layer_batch": 1})
    if "vision" in compare:
        race(f"one encoding per pair (layer_batch={rows})", {"layer_batch": rows},
             "pixels per row (reuse_vision=False)", {"layer_batch": rows, "reuse": False})
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
