"""Visual K/V swap: batched layer variants vs. one generate per layer at batch size 1.

Same model, same pairs, same greedy settings; the loop is `swap_pair(..., layer_batch=1)` (it still
shares one source prefill per pair, so the ratio is a lower bound against the paper's script).
Prints wall times, their ratio, whether every greedy answer is identical, and peak RSS.

    python benchmarks/bench_probe.py [--layers 12] [--hidden 128] [--pairs-per-task 3] [--new 8]
        [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12, help="LLM decoder layers of the tiny Qwen2.5-VL")
    ap.add_argument("--hidden", type=int, default=128, help="LLM hidden size")
    ap.add_argument("--pairs-per-task", type=int, default=3)
    ap.add_argument("--new", type=int, default=8, help="max new tokens")
    ap.add_argument("--layer-batch", type=int, default=0, help="rows per batched pass (0: all variants at once)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per pair and implementation (mean)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from frankenlab.arch import adapter_for
    from frankenlab.miniworld.probe_pairs import make_probe_pairs
    from frankenlab.probe.kv_swap import VisionProbeSettings, swap_pair
    from frankenlab.testing import build_tiny_model, tiny_processor

    model = build_tiny_model("qwen2_5_vl", n_llm_layers=args.layers, hidden=args.hidden, n_heads=4, n_kv_heads=2,
                             attn_implementation="sdpa", dtype=getattr(torch, args.dtype)).to(args.device)
    processor = tiny_processor("qwen2_5_vl")
    adapter = adapter_for(model.config.to_dict())
    pairs = make_probe_pairs(args.pairs_per_task, seed=0)
    rows = args.layer_batch or args.layers + 2

    def once(pair: dict, layer_batch: int) -> tuple[float, dict[str, str]]:
        settings = VisionProbeSettings(max_new_tokens=args.new, layer_batch=layer_batch)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = swap_pair(model, processor, adapter, pair["target_image"], pair["source_image"], pair["prompt"],
                        pair["meta"]["target_answer"], pair["meta"]["source_answer"], settings)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0, res.answers

    once(pairs[0], rows)  # warm-up (allocators, kernels)
    once(pairs[0], 1)
    # Interleave the two implementations pair by pair, so a busy machine slows both alike.
    t_batched = t_loop = 0.0
    a_batched, a_loop = [], []
    for pair in pairs:
        for _ in range(args.repeats):
            tb, ab = once(pair, rows)
            tl, al = once(pair, 1)
            t_batched, t_loop = t_batched + tb / args.repeats, t_loop + tl / args.repeats
        a_batched.append(ab)
        a_loop.append(al)
    same = a_batched == a_loop
    n_diff = sum(x[k] != y[k] for x, y in zip(a_batched, a_loop) for k in x)
    print(f"device={args.device} dtype={args.dtype} threads={args.threads} llm_layers={args.layers} "
          f"hidden={args.hidden} pairs={len(pairs)} variants/pair={args.layers + 2} max_new_tokens={args.new}")
    print(f"batched (layer_batch={rows}): {t_batched:.2f} s   loop (layer_batch=1): {t_loop:.2f} s   "
          f"ratio {t_loop / t_batched:.2f}x   identical greedy answers: {same} ({n_diff} differ)")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
