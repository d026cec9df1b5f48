"""Merge throughput and peak memory on a generated ≥ 1 GB Qwen2.5-VL pair; optional mergekit side by side.

    python benchmarks/bench_merge.py [--work benchmarks/_work] [--repeat 3]
                                     [--mergekit /tmp/mk-venv/bin/mergekit-yaml] [--big-llm-layers 6]

Each job runs in a child process (the CLI, as a user would run it); peak RSS is that child's
`ru_maxrss` from wait4. Inputs are read once first, so every run reads from the page cache;
nobody fsyncs (neither does cp); every run starts after `sync`, and the jobs take turns (run 1 of
each, then run 2 of each, ...) so that they see the same machine load. Jobs:

* transplant  IN:RL:RL (every tensor a verbatim byte copy),
* interpolate IN:RL:RL --alpha late=0.5 (one third of the LLM computed in float32),
* cp -r of the IN directory (the same number of bytes),
* mergekit-yaml on the YAML that `--emit-mergekit` writes for the same recipe (when given).

Memory: the `--list-standard` run of the same CLI (imports only) is the baseline; a second,
larger pair (`--big-llm-layers`) shows peak memory does not grow with model size.
mergekit is never a frankenlab dependency: install it in its own venv
(`python3 -m venv /tmp/mk-venv && /tmp/mk-venv/bin/pip install torch==2.13.0 mergekit`).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
FRANKENLAB = [sys.executable, "-m", "frankenlab"]


def run(cmd: list[str], *, env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, output) of one child process; raises on failure."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    out = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out.decode(errors='replace')[-3000:]}")
    return wall, usage.ru_maxrss / 1024, out.decode(errors="replace")


def warm(*dirs: Path) -> None:
    for d in dirs:
        for f in d.iterdir():
            with f.open("rb") as fh:
                while fh.read(64 * 1024 * 1024):
                    pass


def size(d: Path) -> int:
    return sum(f.stat().st_size for f in d.glob("*.safetensors"))


_WROTE = re.compile(r"in (\d+\.\d+) s \(")


_WROTE = re.compile(r"in (\d+\.\d+) s \(")


class Job:
    """One command, run `repeat` times interleaved with the other jobs; keeps every measurement."""

    def __init__(self, label: str, cmd: list[str], out: Path | None) -> None:
        self.label, self.cmd, self.out = label, cmd, out
        self.walls: list[float] = []
        self.peaks: list[float] = []
        self.phases: list[float] = []
        self.error: str | None = None

    def once(self, env: dict[str, str]) -> None:
        if self.error is not None:
            return
        if self.out is not None and self.out.exists():
            shutil.rmtree(self.out)
        os.sync()
        try:
            w, p, text = run(self.cmd, env=env)
        except RuntimeError as exc:
            self.error = str(exc)[-800:]
            print(f"  {self.label}: FAILED\n{self.error}", flush=True)
            return
        self.walls.append(w)
        self.peaks.append(p)
        m = _WROTE.search(text)
        if m:
            self.phases.append(float(m.group(1)))
        if self.out is not None:
            shutil.rmtree(self.out, ignore_errors=True)

    @property
    def wall(self) -> float:
        return statistics.median(self.walls)

    @property
    def peak(self) -> float:
        return max(self.peaks)

    @property
    def best(self) -> float:
        return min(self.walls)

    @property
    def phase(self) -> float | None:
        return statistics.median(self.phases) if self.phases else None

    @property
    def best_phase(self) -> float | None:
        return min(self.phases) if self.phases else None

    def report(self) -> None:
        if self.error is not None:
            print(f"  {self.label:<44} failed")
            return
        extra = (f"  write phase {self.phase:.2f} s (best {self.best_phase:.2f})"
                 if self.phase is not None else "")
        print(f"  {self.label:<44} median {self.wall:6.2f} s, best {self.best:6.2f} s "
              f"(runs {', '.join(f'{w:.2f}' for w in self.walls)})  peak RSS {self.peak:6.0f} MB{extra}", flush=True)


def view(src: Path, dst: Path) -> Path:
    """`dst` with symlinks to `src`'s shards and a config.json that names its architecture (mergekit needs
    `architectures`; older bigpair.py runs did not write it)."""
    import json

    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        link = dst / f.name
        if f.name != "config.json" and not link.exists():
            link.symlink_to(f.resolve())
    cfg = json.loads((src / "config.json").read_text())
    if not cfg.get("architectures"):
        cfg["architectures"] = ["Qwen2_5_VLForConditionalGeneration"]
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    return dst


def ensure_pair(root: Path, n_llm: int) -> tuple[Path, Path]:
    """Generate in a child process: this process stays small, since a child's peak RSS counts
    the parent's memory at fork time."""
    if not (root / "rl" / "model.safetensors.index.json").exists():
        print(f"generating {root} ({n_llm} LLM layers) ...", flush=True)
        subprocess.run([sys.executable, str(HERE / "bigpair.py"), str(root), "--llm-layers", str(n_llm)], check=True)
    return root / "in", root / "rl"


def compare_outputs(a: Path, b: Path) -> tuple[int, int]:
    """(tensors compared, tensors whose bytes differ), computed in a child process (see ensure_pair)."""
    text = run([sys.executable, __file__, "--compare", str(a), str(b)])[2]
    n, differ = text.split()[-2:]
    return int(n), int(differ)


def _compare(a: Path, b: Path) -> tuple[int, int]:
    """(tensors compared, tensors whose bytes differ) between two checkpoint dirs (by on-disk name)."""
    import torch

    from frankenlab.checkpoint import Checkpoint

    differ = 0
    with Checkpoint(a) as ca, Checkpoint(b) as cb:
        names = ca.names()
        assert set(names) == set(cb.names()), "different tensor sets"
        for n in names:
            x, y = ca.read(n), cb.read(n)
            same = x.dtype == y.dtype and x.shape == y.shape and torch.equal(
                x.contiguous().view(torch.uint8), y.contiguous().view(torch.uint8))
            differ += not same
    return len(names), differ


def bench_pair(name: str, in_: Path, rl: Path, work: Path, repeat: int, mergekit: str | None
               ) -> tuple[float, dict[str, Job]]:
    import json

    gb = size(in_) / 1e9
    n_llm = json.loads((in_ / "config.json").read_text())["text_config"]["num_hidden_layers"]
    recipe = ["--recipe", "IN:RL:RL"] if n_llm >= 3 else ["--recipe", "IN:RL", "--cuts", "1"]
    alpha = ["--alpha", "late=0.5" if n_llm >= 3 else "part1=0.5"]
    shown = " ".join(recipe[1:])
    print(f"\n{name}: {in_.parent}  ({gb:.2f} GB per checkpoint, {n_llm} LLM layers; recipe {shown})", flush=True)
    v_in, v_rl = view(in_, work / f"{name}-view" / "in"), view(rl, work / f"{name}-view" / "rl")
    warm(in_, rl)
    env = {**os.environ, "COLUMNS": "250", "HF_HUB_OFFLINE": "1"}
    out = work / f"out-{name}"
    base = [*FRANKENLAB, "merge", "--in", str(v_in), "--rl", str(v_rl), *recipe]
    jobs = {
        "imports": Job("python + frankenlab imports only",
                       [sys.executable, "-c", "import frankenlab.cli.app, frankenlab.merge"], None),
        "fl": Job(f"frankenlab {shown}", [*base, "--out", str(out)], out),
        "fla": Job(f"frankenlab {shown} {' '.join(alpha)}", [*base, *alpha, "--out", str(out)], out),
        "cp": Job("cp -r IN (the same bytes)", ["cp", "-r", str(in_), str(work / f"cp-{name}")],
                  work / f"cp-{name}"),
    }
    if mergekit:
        for tag, extra in (("mk", []), ("mka", alpha)):
            yml = work / f"{tag}-{name}.yaml"
            run([*base, *extra, "--emit-mergekit", str(yml), "--dry-run"], env=env)
            jobs[tag] = Job(f"mergekit-yaml {shown} {' '.join(extra)}",
                            [mergekit, str(yml), str(work / f"{tag}-out-{name}"), "--no-write-model-card"],
                            work / f"{tag}-out-{name}")
    for i in range(repeat):
        for key, job in jobs.items():
            if key != "imports" or i == 0:
                job.once(env)
    jobs["flv"] = Job(f"frankenlab {shown} --verify", [*base, "--verify", "--out", str(out)], out)
    jobs["flv"].once(env)
    for job in jobs.values():
        job.report()
    if mergekit:  # same job, same bytes? (only where the YAML's comment says mergekit differs)
        for tag, extra in (("mk", []), ("mka", alpha)):
            if jobs[tag].error is not None:
                continue
            mk_out = work / f"{tag}-out-{name}"
            run(jobs[tag].cmd, env=env)
            run([*base, *extra, "--out", str(out)], env=env)
            n, differ = compare_outputs(out, mk_out)
            print(f"    {jobs[tag].label}: output vs frankenlab's: {differ} of {n} tensors differ in bytes")
            shutil.rmtree(mk_out, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
    return gb, jobs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=HERE / "_work")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--mergekit", default=None, help="path to mergekit-yaml (in its own venv)")
    ap.add_argument("--big-llm-layers", type=int, default=0, help="also bench a larger pair with this many layers")
    ap.add_argument("--compare", nargs=2, type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.compare:
        print(*_compare(*a.compare))
        return
    a.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    pairs = [("bigpair", *ensure_pair(a.work / "bigpair", 2))]
    if a.big_llm_layers:
        pairs.append((f"bigpair{a.big_llm_layers}", *ensure_pair(a.work / f"bigpair{a.big_llm_layers}",
                                                                a.big_llm_layers)))
    results = {n: bench_pair(n, i, r, a.work, a.repeat, a.mergekit) for n, i, r in pairs}
    print("\nsummary: median [best] of the runs; 'write phase' = what the CLI reports (no Python/torch start-up, "
          "no planning)")
    for n, (gb, r) in results.items():
        fl, fla, cp = r["fl"], r["fla"], r["cp"]
        print(f"  {n}: {gb:.2f} GB per checkpoint")
        print(f"    cp -r: {cp.wall:.2f} [{cp.best:.2f}] s")
        print(f"    transplant:  {fl.wall:.2f} [{fl.best:.2f}] s end to end = {fl.wall / cp.wall:.2f}x "
              f"[{fl.best / cp.best:.2f}x] cp; write phase {fl.phase:.2f} [{fl.best_phase:.2f}] s = "
              f"{fl.phase / cp.wall:.2f}x [{fl.best_phase / cp.best:.2f}x] cp, {gb / fl.phase:.2f} "
              f"[{gb / fl.best_phase:.2f}] GB/s")
        print(f"    interpolate: {fla.wall:.2f} [{fla.best:.2f}] s end to end = {fla.wall / cp.wall:.2f}x "
              f"[{fla.best / cp.best:.2f}x] cp; write phase {fla.phase:.2f} [{fla.best_phase:.2f}] s")
        print(f"    with --verify: {r['flv'].wall:.2f} s end to end")
        base = r["imports"].peak
        print(f"    peak RSS: transplant {fl.peak:.0f} MB, interpolate {fla.peak:.0f} MB; python + imports alone "
              f"{base:.0f} MB -> the merge itself adds {fl.peak - base:.0f} / {fla.peak - base:.0f} MB")
        for tag, mine, what in (("mk", fl, "passthrough"), ("mka", fla, "linear")):
            mk = r.get(tag)
            if mk is None:
                continue
            if mk.error is not None:
                print(f"    mergekit {what}: failed ({mk.error.splitlines()[-1]})")
                continue
            print(f"    mergekit {what}: {mk.wall:.2f} [{mk.best:.2f}] s end to end, peak RSS {mk.peak:.0f} MB -> "
                  f"frankenlab {mk.wall / mine.wall:.2f}x [{mk.best / mine.best:.2f}x] faster, "
                  f"{mk.peak / mine.peak:.1f}x less memory")

if __name__ == "__main__":
    main()
