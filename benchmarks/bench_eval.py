"""Eval throughput: batched HF generation vs batch size 1, same tiny VLM and items, identical greedy answers.

    .venv/bin/python benchmarks/bench_eval.py [--items 48] [--new-tokens 8] [--batch-sizes 1,4,8,16] [--threads 1]

Items are mini-world test items in the three eval settings (real image, black image, described),
built exactly as `frankenlab eval` builds them; answers/s counts generated answers.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from frankenlab.eval.settings import build_prompt, settings_for
from frankenlab.miniworld.tasks import make_split
from frankenlab.runtime.generate import HFBackend, without_checkpoint_generation_config
from frankenlab.tasks.schema import TaskItem
from frankenlab.testing.models import build_tiny_model, tiny_processor


def _prompts(n: int) -> list:
    families = ["count", "read_digit", "count_arith", "digit_arith", "color", "text_arith"]
    out = []
    for it in make_split(n, 0, families=families, split="test"):
        item = TaskItem(it.id, it.question, it.answer, "numeric", it.image, None, it.description)
        for setting in settings_for(item, ("image", "black", "described")):
            out.append(build_prompt(item, setting, description=item.description))
            if len(out) == n:
                return out
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=48)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--batch-sizes", default="1,4,8,16")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2, help="best of N timings per batch size")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = build_tiny_model("qwen2_5_vl", seed=0)  # 4 LLM layers, 4 vision blocks, real Qwen2.5-VL code
    proc = tiny_processor("qwen2_5_vl")
    prompts = _prompts(args.items)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    print(f"model qwen2_5_vl tiny ({sum(p.numel() for p in model.parameters()):,} parameters), "
          f"{len(prompts)} prompts (image/black/described/text), max_new_tokens={args.new_tokens}, "
          f"torch threads={args.threads}")
    results: dict[int, tuple[float, list[str]]] = {}
    with without_checkpoint_generation_config(model):
        HFBackend(model, proc, batch_size=4, max_new_tokens=2).generate(prompts[:4])  # warm-up
        for bs in sizes:
            backend = HFBackend(model, proc, batch_size=bs, max_new_tokens=args.new_tokens)
            best = float("inf")
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                answers = backend.generate(prompts)
                best = min(best, time.perf_counter() - t0)
            results[bs] = (best, answers)
    base_time, base_answers = results[sizes[0]]
    print(f"{'batch':>6} {'seconds':>9} {'answers/s':>10} {'speedup':>8}  identical to batch {sizes[0]}")
    for bs, (secs, answers) in results.items():
        same = answers == base_answers
        print(f"{bs:>6} {secs:>9.2f} {len(prompts) / secs:>10.1f} {base_time / secs:>7.2f}x  {same}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {rss:.0f} MB")
    if not all(a == base_answers for _, a in results.values()):
        raise SystemExit("batched answers differ from batch size 1")


if __name__ == "__main__":
    main()
