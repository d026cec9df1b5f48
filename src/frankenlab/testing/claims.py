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

__all__ = ["GEOMETRY_PATTERNS", "ablation_records", "attention_records", "energy_layers", "eval_records",
           "freeze_records", "geometry_tensors", "vision_records"]


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


#: ΔW patterns of :func:`geometry_tensors`.
GEOMETRY_PATTERNS = ("zero", "noise", "sparse", "rank1", "principal")
_KINDS = ("q", "k", "v", "o", "gate", "up", "down")


def _spectral(m: int, n: int, rng: np.random.Generator, decay: float) -> np.ndarray:
    """W = U diag(s) Vᵀ with distinct decaying s: its top-k singular subspaces are well defined."""
    r = min(m, n)
    u, _ = np.linalg.qr(rng.standard_normal((m, r)))
    v, _ = np.linalg.qr(rng.standard_normal((n, r)))
    return (u * (10.0 * decay ** np.arange(r))) @ v.T


def _delta(w: np.ndarray, pattern: str, scale: float, density: float, rng: np.random.Generator) -> np.ndarray:
    """An update with ‖Δ‖_F = scale·‖W‖_F of the named kind (see :func:`geometry_tensors`)."""
    m, n = w.shape
    if pattern == "zero":
        return np.zeros_like(w)
    if pattern == "noise":
        d = rng.standard_normal((m, n))
    elif pattern == "sparse":
        d = rng.standard_normal((m, n)) * (rng.random((m, n)) < density)
    elif pattern == "rank1":
        d = np.outer(rng.standard_normal(m), rng.standard_normal(n))
    elif pattern == "principal":
        u, _, vt = np.linalg.svd(w, full_matrices=False)
        d = np.outer(u[:, 0], vt[0])
    else:
        raise ValueError(f"unknown geometry pattern {pattern!r}; use one of {', '.join(GEOMETRY_PATTERNS)}")
    norm = np.linalg.norm(d)
    return d * (scale * np.linalg.norm(w) / norm) if norm else d


def _angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Principal angles between the column spans of orthonormal a and b."""
    return np.degrees(np.arccos(np.clip(np.linalg.svd(a.T @ b, compute_uv=False), -1.0, 1.0)))


def _geometry_row(w: np.ndarray, d: np.ndarray, k: int, rank_tol: float = 1e-3) -> dict[str, Any]:
    """compare's per-matrix columns for W_ref = w, W_after = w + d, by numpy's SVD (independent of compare)."""
    m, n = w.shape
    after = w + d
    u0, s0, vt0 = np.linalg.svd(w, full_matrices=False)
    u1, s1, vt1 = np.linalg.svd(after, full_matrices=False)
    left, right = _angles_deg(u0[:, :k], u1[:, :k]), _angles_deg(vt0[:k].T, vt1[:k].T)
    both = np.concatenate([left, right])
    proj = max(np.sqrt(max(0.0, 2 * k - 2 * np.linalg.norm(u0[:, :k].T @ u1[:, :k]) ** 2)),
               np.sqrt(max(0.0, 2 * k - 2 * np.linalg.norm(vt0[:k] @ vt1[:k].T) ** 2)))
    fro = float(np.linalg.norm(d))
    sd = np.linalg.svd(d, compute_uv=False)
    rank = int(np.count_nonzero(sd > rank_tol * sd[0])) if fro else 0
    return {"fro": fro, "rel_fro": fro / float(np.linalg.norm(w)), "unchanged_frac": float(np.mean(d == 0)),
            "update_rank": rank, "update_rank_frac": rank / min(m, n),
            "subspace_angle_max_deg": float(both.max()), "subspace_angle_mean_deg": float(both.mean()),
            "projection_distance": float(proj),
            "sigma_drift_topk": float(np.mean(np.abs(s1[:k] - s0[:k]) / s0[:k])),
            "principal_share": float(np.linalg.norm(u0[:, :k].T @ d @ vt0[:k].T) ** 2 / fro**2) if fro else np.nan,
            "principal_share_null": k * k / (m * n),
            "below_bf16_frac": float(np.mean((d != 0) & (np.abs(d) < np.abs(w) * 2.0**-8))), "subspace_k": k}


def geometry_tensors(rl: str, in_: str | None = None, n_layers: int = 6, *, shape: tuple[int, int] = (24, 40),
                     k: int = 4, seed: int = 0, rl_scale: float = 1e-2, in_scale: float = 1e-2,
                     density: float = 0.1, decay: float = 0.8) -> pd.DataFrame:
    """compare's tensors table for a model of `n_layers` × 7 LLM matrices, each change known by construction.

    BASE matrices have a decaying spectrum; IN = BASE + ΔIN (only when `in_` is given, then with phase "in"
    rows) and RL = IN + ΔRL. A pattern is "zero" (no update: RL a byte copy of IN), "noise" (dense Gaussian,
    blind to W's directions: principal share ≈ its null), "sparse" (a random `density` share of entries
    with Gaussian values: sparse and full-rank), "rank1" (a dense random rank-one update) or "principal"
    (scale·‖W‖_F·u1 v1ᵀ: inside W's top singular pair, principal share 1). ‖Δ‖_F = scale·‖W_ref‖_F. Every
    column is computed from the matrices with numpy; one vision matrix and one norm vector per phase, with
    values that would flip a verdict, check that claims read only the LLM's 2-D matrices.
    """
    rng = np.random.default_rng(seed)
    m, n = shape
    rows: list[dict[str, Any]] = []
    for layer in range(n_layers):
        for kind in _KINDS:
            name = f"model.layers.{layer}.{'mlp' if kind in ('gate', 'up', 'down') else 'self_attn'}.{kind}.weight"
            base = _spectral(m, n, rng, decay)
            d_in = _delta(base, in_, in_scale, density, rng) if in_ is not None else np.zeros_like(base)
            w_in = base + d_in
            d_rl = _delta(w_in, rl, rl_scale, density, rng)
            meta = {"name": name, "canonical": name, "section": "llm", "layer": layer + 1, "kind": kind,
                    "is_matrix": True, "ndim": 2, "shape": f"[{m}, {n}]", "numel": m * n}
            rows.append(meta | {"phase": "rl"} | _geometry_row(w_in, d_rl, k))
            if in_ is not None:
                rows.append(meta | {"phase": "in"} | _geometry_row(base, d_in, k))
    for phase in ("rl", "in") if in_ is not None else ("rl",):
        decoy = {"unchanged_frac": 0.0, "update_rank_frac": 0.01, "principal_share": 1.0, "principal_share_null": 0.01,
                 "subspace_angle_mean_deg": 80.0, "subspace_angle_max_deg": 89.0, "below_bf16_frac": 0.0}
        rows.append({"name": "visual.blocks.0.mlp.fc1.weight", "canonical": "visual.blocks.0.mlp.fc1.weight",
                     "section": "vision", "layer": -1, "kind": "fc1", "is_matrix": True, "ndim": 2, "phase": phase,
                     "shape": f"[{m}, {n}]", "numel": m * n} | decoy)
        rows.append({"name": "model.layers.0.input_layernorm.weight", "canonical": "model.layers.0.input_layernorm"
                     ".weight", "section": "llm", "layer": 1, "kind": "norm", "is_matrix": False, "ndim": 1,
                     "phase": phase, "shape": f"[{n}]", "numel": n, "unchanged_frac": 0.0, "below_bf16_frac": 0.0})
    return pd.DataFrame(rows)
