"""Stage outputs whose truth is known by construction, for the claim tests and their false-positive rates.

Each generator writes exactly the records a stage writes (same keys), drawn from a seeded model in which
the effect is either absent (``null``), spread evenly over depth (``uniform``) or planted in one part
(``late``, ``early``, ``mid``, ...). `benchmarks/claims_fpr.py` runs the claim rules on many seeds of the
null patterns and reports how often a verdict other than *inconclusive* comes out.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from frankenlab.regions import Partition

__all__ = ["ablation_records", "attention_records", "energy_layers", "eval_records", "freeze_records",
           "vision_records"]


def _parts(n_layers: int, cuts: tuple[int, int] | None) -> list[str]:
    part = Partition.make(n_layers, cuts)
    return [part.part_of(k) for k in range(n_layers)]


def energy_layers(rl: str | dict[str, float], n_layers: int = 28, *, cuts: tuple[int, int] | None = None,
                  seed: int = 0, in_: str | dict[str, float] | None = None, scale: float = 1e-3,
                  jitter: float = 0.1) -> pd.DataFrame:
    """compare's layers table (LLM rows): relative energy per layer = scale × part level × lognormal jitter.

    A pattern is "zero" (no update), "uniform", a part name ("late": only that part changes) or a dict of
    part → level. `jitter` is the layer-to-layer spread (σ of log energy), as real updates vary by layer.
    """
    rng = np.random.default_rng(seed)
    parts = _parts(n_layers, cuts)
    rows = []
    for phase, pattern in (("rl", rl), ("in", in_)):
        if pattern is None:
            continue
        if isinstance(pattern, dict):
            level = pattern
        elif pattern == "zero":
            level = {"early": 0.0, "mid": 0.0, "late": 0.0}
        elif pattern == "uniform":
            level = {"early": 1.0, "mid": 1.0, "late": 1.0}
        else:
            level = {p: float(p == pattern) for p in ("early", "mid", "late")}
        for k, part in enumerate(parts):
            e = scale * level[part] * float(np.exp(jitter * rng.standard_normal()))
            rows.append({"layer": k + 1, "section": "llm", "phase": phase, "fro_sum": e * 7, "rel_fro_total": e,
                         "rel_fro_mean": e})
    rows.append({"layer": -1, "section": "vision", "phase": "rl", "fro_sum": 5.0, "rel_fro_total": 0.5,
                 "rel_fro_mean": 0.5})
    return pd.DataFrame(rows)


VARIANTS = ("IN:RL:RL", "RL:IN:IN", "IN:IN:RL", "RL:RL:IN", "IN:RL:IN", "RL:IN:RL")


def eval_records(pattern: str, n_items: int = 400, *, seed: int = 0, base_acc: float = 0.4,
                 gain: float = 0.25) -> list[dict[str, Any]]:
    """eval's items.jsonl records for IN, RL and the six variants (settings image + text).

    RL fixes a share `gain` of the items IN gets wrong. Which blocks carry each fix: "late"/"early"/"mid"
    (the fix needs RL's blocks there), "mid_late" (needs both mid and late), "uniform" (each fixed item
    is carried by one random third: additive over depth), "null" (RL = IN).
    """
    rng = np.random.default_rng(seed)
    in_ok = rng.random(n_items) < base_acc
    fixed = (~in_ok) & (rng.random(n_items) < gain) if pattern != "null" else np.zeros(n_items, bool)
    carrier = rng.integers(0, 3, n_items)  # uniform: the third that carries the fix

    def ok(label: str) -> np.ndarray:
        src = dict(zip(("early", "mid", "late"), label.split(":")))
        rl = {p: src[p] == "RL" for p in src}
        if pattern == "null":
            carried = np.zeros(n_items, bool)
        elif pattern == "uniform":
            carried = np.array([rl[("early", "mid", "late")[c]] for c in carrier])
        elif pattern == "mid_late":
            carried = np.full(n_items, rl["mid"] and rl["late"])
        else:
            carried = np.full(n_items, rl[pattern])
        return in_ok | (fixed & carried)

    models = {"IN": in_ok, "RL": in_ok | fixed} | {v: ok(v) for v in VARIANTS}
    out = []
    for model, correct in models.items():
        for i in range(n_items):
            for setting in ("image", "text"):
                out.append({"model": model, "task": "t", "item_id": str(i), "setting": setting,
                            "correct": bool(correct[i]), "error": None})
    return out


def vision_records(critical: dict[str, int], n_layers: int = 28, n_items: int = 40, *, seed: int = 0,
                   flip: float = 0.8, noise: float = 0.05) -> list[dict[str, Any]]:
    """probe vision's item records: for task t the suffix swap from layer L flips the answer to the source's
    with probability `flip` when L ≤ critical[t], else `noise`."""
    rng = np.random.default_rng(seed)
    out = []
    for task, last in critical.items():
        for i in range(n_items):
            answers = {"base": "t", "source": "s"}
            for L in range(n_layers):
                answers[str(L)] = "s" if rng.random() < (flip if L <= last else noise) else "t"
            out.append({"key": f"{task}/{i}", "id": f"{task}/{i}", "task": task, "status": "ok",
                        "target_answer": "t", "source_answer": "s", "answers": answers})
    return out


def ablation_records(task: str, breaks: set[int] | dict[int, float], n_layers: int = 28, n_items: int = 60, *,
                     seed: int = 0, base_acc: float = 0.8, hurt: float = 0.5) -> list[dict[str, Any]]:
    """probe ablate's item records: skipping layer L costs a share of the correct items (`breaks[L]` when a
    dict, else `hurt` for the layers in the set)."""
    rng = np.random.default_rng(seed)
    cost = dict(breaks) if isinstance(breaks, dict) else {L: hurt for L in breaks}
    out = []
    for i in range(n_items):
        base = bool(rng.random() < base_acc)
        correct = {"-1": base}
        for L in range(n_layers):
            correct[str(L)] = base and not rng.random() < cost.get(L, 0.0)
        out.append({"key": f"{task}/{i}", "id": str(i), "task": task, "status": "ok", "correct": correct,
                    "gold_logprob": {k: 0.0 for k in correct}})
    return out


def attention_records(pattern: str | dict[str, float], n_layers: int = 28, n_items: int = 40, *, seed: int = 0,
                      shift: float = 0.02, noise: float = 0.02, n_heads: int = 2,
                      cuts: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    """probe attention's item records (both modes): RL's share = IN's + shift × level(part) + noise."""
    rng = np.random.default_rng(seed)
    parts = _parts(n_layers, cuts)
    if isinstance(pattern, dict):
        level = pattern
    elif pattern == "null":
        level = {"early": 0.0, "mid": 0.0, "late": 0.0}
    elif pattern == "uniform":
        level = {"early": 1.0, "mid": 1.0, "late": 1.0}
    elif pattern == "mid_late":
        level = {"early": 0.0, "mid": 1.0, "late": 1.0}
    else:
        level = {p: float(p == pattern) for p in ("early", "mid", "late")}
    out = []
    for i in range(n_items):
        base = 0.3 + 0.1 * rng.random((n_layers, n_heads))
        delta = np.array([[shift * level[parts[k]]] * n_heads for k in range(n_layers)])
        rl = base + delta + (noise * rng.standard_normal((n_layers, n_heads)) if pattern != "null" else 0.0)
        for model, share in (("IN", base), ("RL", rl)):
            entry = {"image": share.tolist(), "image_markers": share.tolist(), "tokens": 50}
            out.append({"key": f"{model}/{i}", "model": model, "id": str(i), "task": "t", "status": "ok",
                        "own": entry, "shared": entry})
    return out


def freeze_records(accuracy: dict[str, float], n_items: int = 400, *, seed: int = 0,
                   shared: float = 0.7) -> tuple[pd.DataFrame, dict[str, list[dict[str, Any]]]]:
    """(necessity table, per-model item results) for models "in", "rl", "rl-frozen-<part>" at given accuracies.

    Models of the same IN agree on most items: per model and item, with probability `shared` the item's
    common uniform decides (so a more accurate model gets right what a less accurate one does), otherwise an
    independent one — equal accuracies then still differ item by item, as two RL runs do.
    """
    from frankenlab.stats import paired_bootstrap_diff

    rng = np.random.default_rng(seed)
    u = rng.random(n_items)
    correct = {}
    for m, a in accuracy.items():
        own = np.where(rng.random(n_items) < shared, u, rng.random(n_items))
        correct[m] = own < a
    items = {m: [{"model": m.upper(), "id": str(i), "family": "t", "strict": bool(c[i])} for i in range(n_items)]
             for m, c in correct.items()}
    rows = []
    for m, c in correct.items():
        if m == "in":
            continue
        d, lo, hi, p = paired_bootstrap_diff(c.astype(float), correct["in"].astype(float), n_boot=500, seed=0)
        rows.append({"model": m.upper(), "family": "all", "n": n_items, "acc": float(c.mean()), "gain": d,
                     "gain_low": lo, "gain_high": hi})
    return pd.DataFrame(rows), items
