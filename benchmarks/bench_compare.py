"""Benchmarks for `frankenlab compare` (never imported by tests). Prints figures; asserts nothing.

    python benchmarks/bench_compare.py [--work benchmarks/_work] [--repeats 3] [--skip-transformers] [--skip-svd]
                                       [--skip-memory] [--scaling]

1. Memory: peak RSS of streaming compare vs loading both full models through transformers (as the
   paper's scripts do), each in its own subprocess, on the ≥ 1 GB bf16 pair in _work/bigpair.
2. Time: `--svd none` vs simply reading both checkpoints once (interleaved repeats, min taken).
3. Spectra: randomized top-k SVD vs exact `svdvals` on a 3584×18944 delta (CPU, all threads), with
   the relative error of σ1..σ8 — on the bigpair's real down_proj delta and on a synthetic one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# Each worker runs in a fresh interpreter and prints one JSON line: its own time and peak RSS.
_WORKER = r'''
import json, os, resource, sys, time
sys.path.insert(0, {src!r})
mode, a, b, out, threads = sys.argv[1:6]
import torch
from frankenlab.checkpoint import Checkpoint
from frankenlab.compare import compare_checkpoints
n_threads = os.cpu_count() if threads == "all" else int(threads)
torch.set_num_threads(n_threads)
t0 = time.perf_counter()
extra = {{}}
if mode == "idle":
    pass  # fixed overhead: interpreter + torch + pandas + frankenlab.compare
elif mode == "read":
    n = 0
    for path in (a, b):
        with Checkpoint(path) as c:
            for name in c.names():
                n += c.read(name).clone().numel()  # every byte read into memory once
                c.close()
    extra["elements"] = n
elif mode.startswith("stream"):
    svd = mode.split(":")[1]
    res = compare_checkpoints(a, b, svd=svd, out_dir=out if out != "-" else None, plots=out != "-",
                              threads=n_threads)
    extra["energy_rl"] = float(res.summary["per_phase"]["rl"]["fro_total"])
elif mode == "transformers":
    from transformers import Qwen2_5_VLForConditionalGeneration
    m_in = Qwen2_5_VLForConditionalGeneration.from_pretrained(a, dtype=torch.bfloat16)
    m_rl = Qwen2_5_VLForConditionalGeneration.from_pretrained(b, dtype=torch.bfloat16)
    extra["load_s"] = time.perf_counter() - t0
    p_in = dict(m_in.named_parameters())
    total = 0.0
    for name, w_rl in m_rl.named_parameters():  # the same norm metrics, fp32 deltas
        w = p_in[name].detach().float()
        d = w_rl.detach().float() - w
        fro = float(torch.linalg.vector_norm(d))
        _ = fro / float(torch.linalg.vector_norm(w)), float(d.abs().max()), float((d == 0).float().mean())
        total += fro * fro
    extra["energy_rl"] = total ** 0.5
elapsed = time.perf_counter() - t0
print(json.dumps({{"mode": mode, "threads": n_threads, "seconds": elapsed,
                   "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra}}))
'''


def worker(mode: str, a: Path, b: Path, out: str = "-", threads: str = "all") -> dict:
    code = _WORKER.format(src=str(ROOT / "src"))
    proc = subprocess.run([sys.executable, "-c", code, mode, str(a), str(b), out, threads], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"worker {mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def largest_tensor_f32_mb(path: Path) -> tuple[float, str]:
    sys.path.insert(0, str(ROOT / "src"))
    from frankenlab.checkpoint import Checkpoint

    with Checkpoint(path) as c:
        meta = max((c.meta(n) for n in c.names()), key=lambda m: m.numel)
        return meta.numel * 4 / 2**20, f"{meta.name} {list(meta.shape)}"


def bench_memory_and_time(a: Path, b: Path, repeats: int, skip_transformers: bool) -> None:
    size_gb = sum(f.stat().st_size for f in a.glob("*.safetensors")) / 1e9
    big_mb, big_name = largest_tensor_f32_mb(a)
    print(f"pair: {a} / {b}: {size_gb:.2f} GB each (bf16); largest tensor {big_name} = {big_mb:.0f} MB in float32")
    print(f"cpu threads: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f} (shared machine: min of repeats)")
    worker("read", a, b)  # warm the page cache so every measurement reads from memory
    idle = worker("idle", a, b)
    print(f"fixed overhead (python + torch + frankenlab imported): peak RSS {idle['peak_rss_mb']:.0f} MB")

    runs: dict[tuple[str, str], list[dict]] = {}
    for _ in range(repeats):
        for threads in ("all", "1"):
            for mode in ("read", "stream:none"):
                runs.setdefault((mode, threads), []).append(worker(mode, a, b, threads=threads))
    for threads in ("all", "1"):
        read = min(r["seconds"] for r in runs["read", threads])
        none = min(r["seconds"] for r in runs["stream:none", threads])
        label = f"{os.cpu_count()} threads (all)" if threads == "all" else "1 thread"
        print(f"\n[time, {label}] read both checkpoints once: {read:.2f} s   compare --svd none: {none:.2f} s   "
              f"ratio {none / read:.2f}x (target ≤ 2x); min of {repeats}, all runs: "
              f"read {[round(r['seconds'], 2) for r in runs['read', threads]]}, "
              f"none {[round(r['seconds'], 2) for r in runs['stream:none', threads]]}")

    with tempfile.TemporaryDirectory(dir=HERE / "_work") as tmp:
        full = worker("stream:auto", a, b, str(Path(tmp) / "out"))
    stream = min(runs["stream:none", "all"], key=lambda r: r["seconds"])
    print(f"\n[memory] streaming compare --svd none: peak RSS {stream['peak_rss_mb']:.0f} MB "
          f"({(stream['peak_rss_mb'] - idle['peak_rss_mb']) / big_mb:.2f}x the largest float32 tensor above the "
          f"fixed overhead), {stream['seconds']:.2f} s")
    print(f"[memory] streaming compare --svd auto (lowrank top-32, tables + plots written): peak RSS "
          f"{full['peak_rss_mb']:.0f} MB ({(full['peak_rss_mb'] - idle['peak_rss_mb']) / big_mb:.2f}x), "
          f"{full['seconds']:.2f} s")
    if skip_transformers:
        return
    hf = worker("transformers", a, b)
    print(f"[memory] transformers: both full models loaded (bf16) + per-parameter fp32 deltas: peak RSS "
          f"{hf['peak_rss_mb']:.0f} MB, {hf['seconds']:.2f} s (loading {hf['load_s']:.2f} s)")
    print(f"[memory] peak RSS transformers / streaming (--svd none): {hf['peak_rss_mb'] / stream['peak_rss_mb']:.2f}x;"
          f" time transformers / streaming: {hf['seconds'] / stream['seconds']:.2f}x")
    if abs(hf["energy_rl"] - stream["energy_rl"]) > 1e-3 * stream["energy_rl"]:
        print(f"  WARNING: total ΔRL energy differs: {hf['energy_rl']:.6g} vs {stream['energy_rl']:.6g}")


def bench_scaling(work: Path, small: tuple[Path, Path]) -> None:
    """Peak RSS on the 2-layer pair and on a 4-layer pair (≈ 1.6× the bytes): it must not grow."""
    big = work / "bigpair4"
    if not (big / "rl" / "config.json").exists():
        sys.path.insert(0, str(HERE))
        from bigpair import make_big_pair

        print(f"\ngenerating {big} (4 LLM layers) …")
        make_big_pair(big, n_llm=4)
    print()
    for a, b in (small, (big / "in", big / "rl")):
        size_gb = sum(f.stat().st_size for f in a.glob("*.safetensors")) / 1e9
        worker("read", a, b)  # warm cache
        r = min((worker("stream:none", a, b) for _ in range(2)), key=lambda x: x["seconds"])
        print(f"[scaling] {a.parent.name}: {size_gb:.2f} GB each → compare --svd none peak RSS "
              f"{r['peak_rss_mb']:.0f} MB, {r['seconds']:.2f} s")


def bench_svd(a: Path, b: Path) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    import numpy as np
    import torch

    from frankenlab.checkpoint import Checkpoint
    from frankenlab.compare.metrics import SpectrumSettings, spectrum
    from frankenlab.compare.stream import cpu_threads

    name = "model.layers.0.mlp.down_proj.weight"
    with Checkpoint(a) as ci, Checkpoint(b) as cr:
        real = cr.read(name, dtype=torch.float32) - ci.read(name, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    m, n = real.shape
    r = 256
    u, _ = torch.linalg.qr(torch.randn(m, r, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(n, r, generator=gen))
    sig = torch.tensor([0.85 ** i for i in range(r)])
    synthetic = (u * sig) @ v.T + 1e-4 * torch.randn(m, n, generator=gen)
    settings = SpectrumSettings(svd="lowrank")  # the defaults: top_k 32, oversample 8, niter 4
    print(f"\n[svd] delta {m}x{n}, lowrank q = {settings.top_k}+{settings.oversample}, niter {settings.niter}; "
          f"exact = torch.linalg.svdvals; CPU, all threads")
    with cpu_threads() as threads:
        for label, delta in (("bigpair layer-0 down_proj ΔRL (bf16 low-rank update + rounding)", real),
                             ("synthetic σ_i = 0.85^i + 1e-4 noise", synthetic)):
            spectrum(delta[:64, :64].contiguous(), "lowrank", settings)  # warm-up
            t_low = float("inf")
            for _ in range(3):  # shared machine: the best of three
                t = time.perf_counter()
                low = spectrum(delta, "lowrank", settings)
                t_low = min(t_low, time.perf_counter() - t)
            t = time.perf_counter()
            exact = spectrum(delta, "exact", settings)
            t_exact = time.perf_counter() - t
            err = np.abs(low.values[:8] - exact.values[:8]) / exact.values[:8]
            print(f"  {label}: exact {t_exact:.2f} s, lowrank {t_low:.3f} s, speed-up {t_exact / t_low:.0f}x "
                  f"({threads} threads); σ1..σ8 relative error max {err.max():.2e} "
                  f"[{' '.join(f'{e:.1e}' for e in err)}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=HERE / "_work")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--skip-svd", action="store_true")
    ap.add_argument("--skip-memory", action="store_true", help="skip the memory/time comparison")
    ap.add_argument("--scaling", action="store_true", help="also build a 4-layer pair (≈ 2.5 GB each) and show "
                                                           "that peak RSS does not grow")
    args = ap.parse_args()
    pair = args.work / "bigpair"
    a, b = pair / "in", pair / "rl"
    if not (a / "config.json").exists():
        sys.path.insert(0, str(HERE))
        from bigpair import make_big_pair

        print(f"generating {pair} (≥ 1 GB each) …")
        make_big_pair(pair)
    if not args.skip_memory:
        bench_memory_and_time(a, b, args.repeats, args.skip_transformers)
    if args.scaling:
        bench_scaling(args.work, (a, b))
    if not args.skip_svd:
        bench_svd(a, b)


if __name__ == "__main__":
    main()
