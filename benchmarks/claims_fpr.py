"""False-positive rates of the study's claim tests on null pairs, and their power on planted ones.

    python benchmarks/claims_fpr.py [--seeds 200] [--layers 28] [--pairs 3] [--claims id,id]

For each claim, stage outputs are drawn (frankenlab.testing.claims) under patterns whose truth is known —
`null` (nothing changed), `uniform` (a change spread evenly over depth: must not be "localized") and
planted ones (change only in one part) — and the rules are run on every seed. Printed per claim and
pattern: the share of seeds giving *supported* and *contradicted*. For a null pattern the share of
*supported* is the false-positive rate (target ≤ 5 %). With `--pairs N` (N > 0) it also plants
uniform relative noise on N seeds of a tiny real checkpoint (`frankenlab.planted.plant_noise`, when
available), runs `frankenlab compare` on each and reports the energy rule's verdicts: the same
question on real tensors.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from frankenlab.regions import Partition
from frankenlab.study import claims as C
from frankenlab.testing import claims as T


def _rates(fn: Callable[[int], str], seeds: int) -> dict[str, float]:
    counts = Counter(fn(s) for s in range(seeds))
    return {v: counts[v] / seeds for v in (C.SUPPORTED, C.CONTRADICTED, C.INCONCLUSIVE)}


def scenarios(n_layers: int) -> dict[str, dict[str, Callable[[int], str]]]:
    part = Partition.make(n_layers)
    return {
        "rl_refines_mid_late": {
            "null: zero update": lambda s: C.claim_rl_update_mid_late(T.energy_layers("zero", n_layers, seed=s),
                                                                      part).verdict,
            "null: uniform noise": lambda s: C.claim_rl_update_mid_late(
                T.energy_layers("uniform", n_layers, seed=s), part).verdict,
            "planted: late only": lambda s: C.claim_rl_update_mid_late(T.energy_layers("late", n_layers, seed=s),
                                                                       part).verdict,
            "planted: early only": lambda s: C.claim_rl_update_mid_late(
                T.energy_layers("early", n_layers, seed=s), part).verdict,
        },
        "energy_in_late_rl_mid": {
            "null: uniform noise (IN and RL)": lambda s: C.claim_energy_in_late_rl_mid(
                T.energy_layers("uniform", n_layers, seed=s, in_="uniform"), part).verdict,
            "planted: IN late, RL mid": lambda s: C.claim_energy_in_late_rl_mid(
                T.energy_layers("mid", n_layers, seed=s, in_="late"), part).verdict,
        },
        "localization_order": {
            "null: every task at the same depth": lambda s: C.claim_localization_order(
                T.vision_records({"recognition": 14, "ocr": 14, "counting": 14}, n_layers, seed=s),
                T.ablation_records("math", {0: 1.0, 14: 0.5}, n_layers, seed=s)
                + T.ablation_records("control", {0: 1.0}, n_layers, seed=s + 10_000), part, ["control"]).verdict,
            "null: reasoning hurt only by the first layer": lambda s: C.claim_localization_order(
                T.vision_records({"recognition": 5, "ocr": 13, "counting": 14}, n_layers, seed=s),
                T.ablation_records("math", {0: 1.0}, n_layers, seed=s)
                + T.ablation_records("control", {0: 1.0}, n_layers, seed=s + 10_000), part, ["control"]).verdict,
            "planted: the paper's order": lambda s: C.claim_localization_order(
                T.vision_records({"recognition": 5, "ocr": 13, "counting": 14}, n_layers, seed=s),
                T.ablation_records("math", {0: 1.0, 22: 0.5, 23: 0.5}, n_layers, seed=s)
                + T.ablation_records("control", {0: 1.0}, n_layers, seed=s + 10_000), part, ["control"]).verdict,
        },
        "transfer_mid_late": {
            "null: RL = IN": lambda s: C.claim_transfer_mid_late(T.eval_records("null", seed=s), part,
                                                                 n_layers).verdict,
            "null: uniform additive gain": lambda s: C.claim_transfer_mid_late(
                T.eval_records("uniform", seed=s), part, n_layers).verdict,
            "planted: gain carried by late": lambda s: C.claim_transfer_mid_late(
                T.eval_records("late", seed=s), part, n_layers).verdict,
            "planted: gain carried by early": lambda s: C.claim_transfer_mid_late(
                T.eval_records("early", seed=s), part, n_layers).verdict,
        },
        "freeze_late_hurts_most": {
            "null: every frozen variant equal": lambda s: C.claim_freeze_late_hurts_most(*T.freeze_records(
                {"in": 0.4, "rl": 0.6, "rl-frozen-early": 0.55, "rl-frozen-mid": 0.55, "rl-frozen-late": 0.55},
                seed=s)).verdict,
            "planted: frozen late loses the gain": lambda s: C.claim_freeze_late_hurts_most(*T.freeze_records(
                {"in": 0.4, "rl": 0.6, "rl-frozen-early": 0.58, "rl-frozen-mid": 0.57, "rl-frozen-late": 0.45},
                seed=s)).verdict,
        },
        "rl_attention_vision_mid_late": {
            "null: RL = IN": lambda s: C.claim_attention_mid_late(T.attention_records("null", n_layers, seed=s),
                                                                  part).verdict,
            "null: uniform rise over depth": lambda s: C.claim_attention_mid_late(
                T.attention_records("uniform", n_layers, seed=s), part).verdict,
            "null: noise only": lambda s: C.claim_attention_mid_late(
                T.attention_records({"early": 0, "mid": 0, "late": 0}, n_layers, seed=s), part).verdict,
            "planted: rise in mid+late": lambda s: C.claim_attention_mid_late(
                T.attention_records("mid_late", n_layers, seed=s), part).verdict,
        },
    }


def real_noise_pairs(n: int) -> list[str]:
    """The energy rule on `n` real noise pairs of a tiny 28-layer Qwen2-style text model."""
    try:
        from frankenlab.planted import plant_noise
    except ImportError:
        return []
    from frankenlab.compare import compare_checkpoints
    from frankenlab.study.claims import claim_rl_update_mid_late
    from frankenlab.testing.models import save_tiny_checkpoint

    verdicts = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = save_tiny_checkpoint("qwen2", root / "in", seed=0, n_llm_layers=28)
        for s in range(n):
            rl = root / f"noise{s}"
            plant_noise(src, rl, seed=s)
            res = compare_checkpoints(src, rl, None, out_dir=root / f"cmp{s}", svd="none", overwrite=True)
            verdicts.append(claim_rl_update_mid_late(res.layers, Partition.make(28)).verdict)
    return verdicts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=200)
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--pairs", type=int, default=0, help="real noise pairs for the energy rule (slow-ish)")
    ap.add_argument("--claims", default="", help="comma-separated claim ids to run (default: all)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    print(f"{'claim':30s} {'pattern':45s} {'supported':>9s} {'contra.':>8s} {'inconcl.':>8s}")
    only = {c for c in args.claims.split(",") if c}
    for claim, patterns in scenarios(args.layers).items():
        if only and claim not in only:
            continue
        for name, fn in patterns.items():
            r = _rates(fn, args.seeds)
            print(f"{claim:30s} {name:45s} {r[C.SUPPORTED]:9.3f} {r[C.CONTRADICTED]:8.3f} {r[C.INCONCLUSIVE]:8.3f}")
    print(f"({args.seeds} seeds per row, {args.layers} LLM layers, {time.perf_counter() - t0:.0f} s)")
    if args.pairs:
        v = real_noise_pairs(args.pairs)
        if v:
            c = Counter(v)
            print(f"real noise pairs (tiny 28-layer qwen2, ε = 1e-3 relative on every decoder matrix), n = {len(v)}: "
                  + ", ".join(f"{k} {c[k]}" for k in (C.SUPPORTED, C.CONTRADICTED, C.INCONCLUSIVE)))
        else:
            print("real noise pairs skipped: frankenlab.planted is not available")


if __name__ == "__main__":
    main()
