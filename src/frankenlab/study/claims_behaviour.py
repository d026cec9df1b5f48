"""Verdicts from behaviour: where RL's answer forms (probe lens) and whether its gain survives a rank-K
transplant (merge --rank + eval).

probe kl gets no verdict on purpose: on the mini-world, a uniform-noise pair moves the distributions at image
positions 2.4× more than those that write the answer, and RL's response/image KL contrast compared with one
size-matched random update came out "significant" for 14 of 20 draws of noise against noise (the direction of
one random update is shared by every item, so items are not independent replicates). A calibrated test needs
tens of reference draws per study; docs/probe.md reports the KL tables without a verdict.

Same standard as `study.claims`: a stated H0, a paired test per item with a bootstrap interval and a
sign-flip p, Holm over sub-tests, and *inconclusive* with a reason when the data cannot decide.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from frankenlab.study.claims import INCONCLUSIVE, MEASURES, Claim, SubTest, _decide, _events, _no, _paired, _r

__all__ = ["RETAIN", "claim_answer_emerges_earlier", "claim_rank_k_keeps_gain"]

#: Share of RL's paired gain a rank-K transplant must keep for "the gain survives".
RETAIN = 0.5


def claim_answer_emerges_earlier(lens_items: pd.DataFrame | None) -> Claim:
    c = Claim("rl_answer_emerges_earlier", "RL's answer emerges at an earlier layer than IN's (logit lens).",
              INCONCLUSIVE, "H0: over items whose gold first token is top-1 at the last layer in both models, the "
              "emergence layer (first layer from which it stays top-1 under the logit lens) is the same in RL and "
              "IN. Effect: mean RL − IN (negative = earlier in RL); paired bootstrap interval, sign-flip p.")
    if lens_items is None or lens_items.empty or not {"model", "item", "emergence_layer"} <= set(lens_items.columns):
        return _no(c, "the probe_lens stage has no IN/RL results.")
    df = lens_items[lens_items["model"].isin(["in", "rl"])]  # `item` is the task-qualified key
    wide = df.pivot_table(index="item", columns="model", values="emergence_layer", aggfunc="first")
    if not {"in", "rl"} <= set(wide.columns):
        return _no(c, "the probe_lens stage has no IN/RL pair (run it with --in and --rl).")
    both = wide.dropna(subset=["in", "rl"])
    c.evidence["n_emerge_in_only"] = int((wide["in"].notna() & wide["rl"].isna()).sum())
    c.evidence["n_emerge_rl_only"] = int((wide["rl"].notna() & wide["in"].isna()).sum())
    if len(both) < 2:
        return _no(c, f"only {len(both)} item(s) reach the gold answer at the last layer in both models.")
    d = (both["rl"] - both["in"]).to_numpy(float)
    c.evidence["emergence_in_mean"] = _r(both["in"].mean(), 3)
    c.evidence["emergence_rl_mean"] = _r(both["rl"].mean(), 3)
    if not np.any(d):
        return _no(c, f"the emergence layer is the same in RL and IN on all {len(d)} items.")
    return _decide(c, [_paired("emergence layer RL − IN", d, expect=-1)], "the emergence contrast")


def claim_rank_k_keeps_gain(eval_items: Sequence[Mapping[str, Any]] | None,
                            rank_variants: Mapping[str, Mapping[str, int]]) -> Claim:
    c = Claim("rl_gain_survives_rank_k", f"RL's gain survives a rank-K transplant (IN + the best rank-K ΔRL keeps at "
              f"least {RETAIN:.0%} of it).", INCONCLUSIVE, "On each measure where RL's paired gain over IN is "
              f"significant, per rank-K variant V: H0: V keeps {RETAIN:.0%} of RL's gain. Effect, per item and "
              f"paired: (V − IN) − {RETAIN} (RL − IN), > 0 when V keeps more; paired bootstrap, sign-flip p, Holm "
              "over variants and measures.")
    if not rank_variants:
        return _no(c, "no rank-K variant in the study: add a custom variant with rank, e.g. {name: rank8-late, "
                      "recipe: IN:IN:IN, rank: {late: 8}}.")
    if not eval_items:
        return _no(c, "the merge/eval stage has no item results.")
    ev = _events(eval_items)
    if "IN" not in ev or "RL" not in ev:
        return _no(c, "the evaluation lacks IN or RL.")
    present = [v for v in rank_variants if v in ev]
    if not present:
        return _no(c, f"the rank-K variants {sorted(rank_variants)} were not evaluated.")
    tests: list[SubTest] = []
    rows: list[list[Any]] = []
    for measure in MEASURES:
        base, rl = ev["IN"][measure], ev["RL"][measure]
        items = sorted(set(base) & set(rl))
        if not items:
            continue
        g = _paired(f"{measure}: RL − IN", [rl[i] - base[i] for i in items])
        g.p_holm = g.p
        if g.direction != 1:
            continue
        for v in present:
            common = [i for i in items if i in ev[v][measure]]
            if len(common) < 2:
                continue
            gain = np.array([ev[v][measure][i] - base[i] for i in common])
            full = np.array([rl[i] - base[i] for i in common])
            ranks = ", ".join(f"{region}={k}" for region, k in rank_variants[v].items())
            rows.append([measure, v, ranks, _r(gain.mean(), 4), _r(full.mean(), 4),
                         _r(gain.mean() / full.mean() if full.mean() else float("nan"), 3), len(common)])
            tests.append(_paired(f"{measure}, {v}: (V − IN) − {RETAIN}·(RL − IN)", gain - RETAIN * full))
    c.evidence["table"] = {"columns": ["measure", "variant", "rank", "gain over IN", "RL's gain", "kept share", "n"],
                           "rows": rows}
    if not tests:
        return _no(c, "RL shows no significant paired gain over IN on M_rea, M_v2r or image accuracy, so there is "
                      "nothing for a rank-K transplant to keep.")
    return _decide(c, tests, "the rank-K retention tests")
