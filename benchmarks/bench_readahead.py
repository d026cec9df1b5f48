"""Cold-cache `compare` against a cold `cat` of both checkpoints, with and without read-ahead.

    python benchmarks/bench_readahead.py IN_DIR RL_DIR [--svd none] [--repeats 1]

Each measurement runs in a fresh process after dropping the page cache (needs root:
/proc/sys/vm/drop_caches; without it the figures are warm-cache and say so). Prints seconds,
ratios to the cold read, and peak RSS. Make the 7B-shaped pair with
`python benchmarks/bigpair.py DIR --llm-layers 28 --vision-blocks 32` (14 GB each) and delete it after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_WORKER = r'''
import json, resource, sys, time
sys.path.insert(0, {src!r})
mode, a, b, svd, out = sys.argv[1:6]
t0 = time.perf_counter()
if mode == "cat":
    import glob
    buf = bytearray(16 << 20)
    for d in (a, b):
        for f in sorted(glob.glob(d + "/*.safetensors")):
            with open(f, "rb", buffering=0) as fh:
                while fh.readinto(buf):
                    pass
else:
    from frankenlab.compare import compare_checkpoints
    compare_checkpoints(a, b, svd=svd, out_dir=None if out == "-" else out, plots=False, device="cpu",
                        prefetch=(mode == "prefetch"))
print(json.dumps({{"mode": mode, "seconds": time.perf_counter() - t0,
                   "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
'''


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def run(mode: str, a: Path, b: Path, svd: str, out: str = "-") -> dict:
    cold = drop_caches()
    proc = subprocess.run([sys.executable, "-c", _WORKER.format(src=str(ROOT / "src")), mode, str(a), str(b), svd,
                           out], capture_output=True, text=True, check=False,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
    rec = json.loads(proc.stdout.strip().splitlines()[-1])
    rec["cold"] = cold
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("in_dir", type=Path)
    ap.add_argument("rl_dir", type=Path)
    ap.add_argument("--svd", default="none")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    size = sum(f.stat().st_size for d in (args.in_dir, args.rl_dir) for f in d.glob("*.safetensors")) / 1e9
    print(f"pair: {args.in_dir} + {args.rl_dir}: {size:.1f} GB together; {os.cpu_count()} CPU threads; "
          f"load average {os.getloadavg()[0]:.1f}; compare --svd {args.svd}")
    best: dict[str, dict] = {}
    for _ in range(args.repeats):
        for mode in ("cat", "no-prefetch", "prefetch"):
            with tempfile.TemporaryDirectory() as tmp:
                rec = run(mode, args.in_dir, args.rl_dir, args.svd, str(Path(tmp) / "out"))
            print(f"  {mode:12s} {rec['seconds']:7.1f} s  peak RSS {rec['peak_rss_mb']:6.0f} MB  "
                  f"{'cold' if rec['cold'] else 'WARM (no root: cannot drop the page cache)'}", flush=True)
            if mode not in best or rec["seconds"] < best[mode]["seconds"]:
                best[mode] = rec
    cat = best["cat"]["seconds"]
    for mode in ("no-prefetch", "prefetch"):
        print(f"[{mode}] {best[mode]['seconds']:.1f} s = {best[mode]['seconds'] / cat:.2f}x the cold read "
              f"({cat:.1f} s), peak RSS {best[mode]['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
