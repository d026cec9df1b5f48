"""Cold-cache `compare` against a cold `cat` of both checkpoints, with and without read-ahead.

    python benchmarks/bench_readahead.py IN_DIR RL_DIR [--svd none] [--repeats 1] [--modes ...]

Each measurement runs in a fresh process after dropping the page cache (needs root:
/proc/sys/vm/drop_caches; without it the figures are warm-cache and say so). Modes: `cat` (buffered
16 MB reads of every shard, the issue's yardstick), `direct` (the same bytes with O_DIRECT: what the
disk alone allows), `no-prefetch` / `prefetch` (compare without / with read-ahead) and `mapped`
(compare with read-ahead into the page cache only, FRANKENLAB_DIRECT=0: the previous design).
Repeats are interleaved, so a disk that changes speed affects every mode alike; each line also gives
CPU seconds and how busy the disk was (io_ticks of the device holding IN_DIR, Linux only), which
tells an I/O-bound run from a CPU-bound one whatever the disk's speed that minute. The summary
gives, per mode, the median over repeats of its ratio to the `cat` of the same round. Make the 7B-shaped pair with
`python benchmarks/bigpair.py DIR --llm-layers 28 --vision-blocks 32` (14 GB each) and delete it after.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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
c0 = time.process_time()
if mode in ("cat", "direct"):
    import glob, mmap, os
    buf = mmap.mmap(-1, 16 << 20)
    for d in (a, b):
        for f in sorted(glob.glob(d + "/*.safetensors")):
            if mode == "cat":
                with open(f, "rb", buffering=0) as fh:
                    while fh.readinto(buf):
                        pass
            else:
                fd, pos = os.open(f, os.O_RDONLY | os.O_DIRECT), 0
                while (got := os.preadv(fd, [buf], pos)) == len(buf):
                    pos += got
                os.close(fd)
else:
    from frankenlab.compare import compare_checkpoints
    compare_checkpoints(a, b, svd=svd, out_dir=None if out == "-" else out, plots=False, device="cpu",
                        prefetch=(mode != "no-prefetch"))
print(json.dumps({{"mode": mode, "seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0,
                   "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
'''


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def _device_stat(path: Path) -> Path | None:
    """/sys/dev/block/MAJ:MIN/stat of the block device holding `path` (its whole disk when a partition)."""
    dev = os.stat(path).st_dev
    node = Path(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}")
    for cand in (node / "stat", node.resolve().parent / "stat"):
        if cand.exists():
            return cand
    return None


def _io_ticks(stat: Path | None) -> float | None:
    return int(stat.read_text().split()[9]) / 1000 if stat is not None else None


def run(mode: str, a: Path, b: Path, svd: str, out: str = "-") -> dict:
    cold = drop_caches()
    stat = _device_stat(a)
    busy0 = _io_ticks(stat)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if mode == "mapped":
        env["FRANKENLAB_DIRECT"] = "0"
    proc = subprocess.run([sys.executable, "-c", _WORKER.format(src=str(ROOT / "src")), mode, str(a), str(b), svd,
                           out], capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
    rec = json.loads(proc.stdout.strip().splitlines()[-1])
    rec["cold"] = cold
    busy1 = _io_ticks(stat)
    rec["disk_busy"] = (busy1 - busy0) / rec["seconds"] if busy0 is not None and busy1 is not None else None
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("in_dir", type=Path)
    ap.add_argument("rl_dir", type=Path)
    ap.add_argument("--svd", default="none")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--modes", nargs="+", default=["cat", "direct", "no-prefetch", "prefetch"],
                    choices=["cat", "direct", "no-prefetch", "prefetch", "mapped"])
    args = ap.parse_args()
    modes = ["cat"] + [m for m in args.modes if m != "cat"]
    size = sum(f.stat().st_size for d in (args.in_dir, args.rl_dir) for f in d.glob("*.safetensors")) / 1e9
    print(f"pair: {args.in_dir} + {args.rl_dir}: {size:.1f} GB together; {os.cpu_count()} CPU threads; "
          f"load average {os.getloadavg()[0]:.1f}; compare --svd {args.svd}")
    ratios: dict[str, list[float]] = {m: [] for m in modes}
    seconds: dict[str, list[float]] = {m: [] for m in modes}
    rss: dict[str, float] = {}
    for _ in range(args.repeats):
        cat = None
        for mode in modes:
            with tempfile.TemporaryDirectory() as tmp:
                rec = run(mode, args.in_dir, args.rl_dir, args.svd, str(Path(tmp) / "out"))
            cat = rec["seconds"] if mode == "cat" else cat
            ratios[mode].append(rec["seconds"] / cat)
            seconds[mode].append(rec["seconds"])
            rss[mode] = max(rss.get(mode, 0.0), rec["peak_rss_mb"])
            busy = f"disk busy {rec['disk_busy']:4.0%}" if rec["disk_busy"] is not None else "disk busy ?"
            print(f"  {mode:12s} {rec['seconds']:7.1f} s  cpu {rec['cpu']:6.1f} s  {busy}  "
                  f"peak RSS {rec['peak_rss_mb']:6.0f} MB  {rec['seconds'] / cat:5.2f}x this round's cat  "
                  f"{'cold' if rec['cold'] else 'WARM (no root: cannot drop the page cache)'}", flush=True)
    for mode in modes[1:]:
        print(f"[{mode}] median {statistics.median(seconds[mode]):.1f} s; median ratio to the cold cat "
              f"{statistics.median(ratios[mode]):.2f}x (range {min(ratios[mode]):.2f}-{max(ratios[mode]):.2f}, "
              f"n={len(ratios[mode])}; cat median {statistics.median(seconds['cat']):.1f} s); "
              f"peak RSS {rss[mode]:.0f} MB")

if __name__ == "__main__":
    main()
