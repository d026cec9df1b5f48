"""Eval throughput: batched HF generation vs batch size 1, same tiny VLM and items, identical greedy answers;
with ``--vllm``, HF vs vLLM answers/s on the same items and checkpoint (run it in .venv-vllm).

    .venv/bin/python benchmarks/bench_eval.py [--items 48] [--new-tokens 8] [--batch-sizes 1,4,8,16] [--threads 1]
    .venv-vllm/bin/python benchmarks/bench_eval.py --vllm [--items 96] [--new-tokens 32] [--model CKPT]

Items are mini-world test items in the three eval settings (real image, black image, described),
built exactly as `frankenlab eval` builds them; answers/s counts generated answers.

``--vllm`` writes a tiny random Llama checkpoint (``--hidden``, ``--layers``) to a temporary directory, or
uses ``--model CKPT`` (a VLM needs a torchvision that loads; on the CPU build it does not, see docs/eval.md),
and runs the same prompts greedily through ``HFBackend`` (``--hf-batch-size``) and ``VLLMBackend``
(continuous batching over all prompts). Text models get the items' question text without the image. Model
loading and vLLM's engine start are timed apart from generation; the ratio is vLLM/HF generation answers/s,
and the share of identical answers is printed too.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import torch

from frankenlab.eval.settings import build_prompt, settings_for
from frankenlab.miniworld.tasks import make_split
from frankenlab.runtime.generate import HFBackend, without_checkpoint_generation_config
from frankenlab.testing.models import build_tiny_model, tiny_processor


def _prompts(n: int) -> list:
    families = ["count", "read_digit", "count_arith", "digit_arith", "color", "text_arith"]
    out = []
    for item in make_split(n, 0, families=families, split="test"):
        for setting in settings_for(item, ("image", "black", "described")):
            out.append(build_prompt(item, setting, description=item.description))
            if len(out) == n:
                return out
    return out


def _best_of(repeats: int, backend, prompts: list) -> tuple[float, list[str]]:
    best, answers = float("inf"), []
    for _ in range(repeats):
        t0 = time.perf_counter()
        answers = backend.generate(prompts)
        best = min(best, time.perf_counter() - t0)
    return best, answers


def bench_vllm(args: argparse.Namespace) -> None:
    """HF vs vLLM greedy answers/s on one checkpoint and the same prompts."""
    from frankenlab.runtime.generate import GenerationSettings, Prompt
    from frankenlab.runtime.load import load, load_processor
    from frankenlab.runtime.vllm import VLLMBackend, cuda_available, pick_backend
    from frankenlab.testing.models import save_tiny_checkpoint

    pick_backend("vllm")  # a clear message when vLLM is missing
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.model) if args.model else save_tiny_checkpoint(
            "llama", Path(tmp) / "llama", seed=0, hidden=args.hidden, n_heads=4, n_kv_heads=2, n_llm_layers=args.layers)
        t0 = time.perf_counter()
        model, proc = load(path, device="auto")
        hf_load = time.perf_counter() - t0
        vision = bool(getattr(model.config, "vision_config", None))
        prompts = _prompts(args.items)
        if not vision:
            prompts = [Prompt(p.text) for p in prompts]
        n_params = sum(p.numel() for p in model.parameters())
        device = "cuda" if cuda_available() else "cpu"
        print(f"model {path.name if args.model else 'llama tiny'} ({n_params:,} parameters, {model.dtype}), "
              f"{len(prompts)} prompts{' with images' if vision else ' (text)'}, max_new_tokens={args.new_tokens}, "
              f"device={device}, torch threads={args.threads}")
        with without_checkpoint_generation_config(model):
            hf = HFBackend(model, proc, batch_size=args.hf_batch_size, max_new_tokens=args.new_tokens)
            hf.generate(prompts[:2])  # warm-up
            hf_secs, hf_answers = _best_of(args.repeats, hf, prompts)
        del model, hf
        t0 = time.perf_counter()
        vb = VLLMBackend(path, load_processor(path), settings=GenerationSettings(max_new_tokens=args.new_tokens))
        v_start = time.perf_counter() - t0
        vb.generate(prompts[:2])  # warm-up
        v_secs, v_answers = _best_of(args.repeats, vb, prompts)
    same = sum(a == b for a, b in zip(hf_answers, v_answers))
    n = len(prompts)
    print(f"{'backend':>8} {'load s':>7} {'gen s':>7} {'answers/s':>10}")
    print(f"{'hf':>8} {hf_load:>7.1f} {hf_secs:>7.2f} {n / hf_secs:>10.1f}   (batch size {args.hf_batch_size})")
    print(f"{'vllm':>8} {v_start:>7.1f} {v_secs:>7.2f} {n / v_secs:>10.1f}   (engine start incl. load)")
    print(f"vLLM/HF answers/s ratio {hf_secs / v_secs:.2f}x; identical greedy answers {same}/{n} "
          f"({100 * same / n:.1f} %)")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {rss:.0f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=48)
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--batch-sizes", default="1,4,8,16")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2, help="best of N timings per batch size")
    ap.add_argument("--vllm", action="store_true", help="HF vs vLLM on one checkpoint instead of batch sizes")
    ap.add_argument("--model", default=None, help="--vllm: checkpoint directory (default: a tiny random Llama)")
    ap.add_argument("--hidden", type=int, default=256, help="--vllm: hidden size of the tiny Llama")
    ap.add_argument("--layers", type=int, default=4, help="--vllm: layers of the tiny Llama")
    ap.add_argument("--hf-batch-size", type=int, default=16, help="--vllm: HF generation batch size")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.vllm:
        bench_vllm(args)
        return
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
