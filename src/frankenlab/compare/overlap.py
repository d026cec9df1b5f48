"""`compare_overlap`: do two updates change the same entries? Jaccard of changed sets vs independence.

Reads the bit-packed changed-entry masks that `compare_checkpoints(..., masks=True)` writes
(`OUT/masks/`), so it never touches a checkpoint: ΔIN vs ΔRL of one comparison, or the ΔRL of two
RL recipes from the same IN. For changed sets A, B of one matrix with N entries, p_a = |A|/N and
p_b = |B|/N; if the two updates picked their entries independently, E|A∩B| = N·p_a·p_b and
E|A∪B| = N·(p_a + p_b − p_a·p_b), so `jaccard_null` = p_a·p_b / (p_a + p_b − p_a·p_b). Aggregates
over layers and regions pool the counts (and the per-matrix expectations), never average ratios.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from frankenlab.errors import CompareError, OutputError
from frankenlab.io import write_json, write_table
from frankenlab.io.atomic import atomic_dir
from frankenlab.io.store import claim_out_dir
from frankenlab.manifest import build_manifest, mark_done

STAGE = "overlap"
OVERLAP_COLUMNS = ("name", "layer", "section", "kind", "p_a", "p_b", "jaccard", "jaccard_null", "numel", "n_a",
                   "n_b", "n_both", "block", "canonical")
_GROUP_COLUMNS = ("p_a", "p_b", "jaccard", "jaccard_null", "n_matrices", "numel", "n_a", "n_b", "n_both")
LAYER_COLUMNS = ("layer", "section", *_GROUP_COLUMNS)
REGION_COLUMNS = ("region", *_GROUP_COLUMNS)
TABLES = {"overlap": OVERLAP_COLUMNS, "overlap_layers": LAYER_COLUMNS, "overlap_regions": REGION_COLUMNS}
_CHUNK = 1 << 24  # bytes of each mask read at a time
_SHOW = 5


@dataclass
class OverlapResult:
    """Per matrix, per unified layer and per region: changed shares, Jaccard and its null."""

    overlap: pd.DataFrame
    layers: pd.DataFrame
    regions: pd.DataFrame
    summary: dict[str, Any]
    manifest: dict[str, Any] = field(default_factory=dict)
    out_dir: Path | None = None


@dataclass(frozen=True)
class _Masks:
    root: Path
    index: dict[str, Any]
    phase: str

    @property
    def entries(self) -> dict[str, dict[str, Any]]:
        return {e["canonical"]: e for e in self.index["tensors"] if e["phase"] == self.phase}


def _open_masks(path: str | os.PathLike[str], phase: str, label: str) -> _Masks:
    root = Path(path)
    if not root.is_dir():
        raise CompareError(f"{label} {root} is not a directory; give the --out directory of a finished "
                           "`frankenlab compare ... --masks` run.")
    if not (root / ".done-compare.json").exists():
        raise CompareError(f"{label} {root} is not a finished compare output (no .done-compare.json); run "
                           "`frankenlab compare --in IN --rl RL --out DIR --masks` first.")
    index_path = root / "masks" / "index.json"
    if not index_path.exists():
        raise CompareError(f"{label} {root} has no changed-entry masks; rerun that comparison with --masks "
                           "(masks=True).")
    try:
        index = json.loads(index_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CompareError(f"{index_path} cannot be read ({exc}); rerun the comparison with --masks.") from exc
    if phase not in index.get("phases", []):
        raise CompareError(f"{label} {root} has no phase {phase!r} (it has {', '.join(index.get('phases', []))}); "
                           "phase 'in' needs a comparison made with --base.")
    return _Masks(root / "masks", index, phase)


def _first(items: list[str]) -> str:
    return ", ".join(items[:_SHOW]) + (f", … ({len(items) - _SHOW} more)" if len(items) > _SHOW else "")


def _match(a: _Masks, b: _Masks) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    ea, eb = a.entries, b.entries
    if a.index.get("family") != b.index.get("family"):
        raise CompareError(f"the masks are of different model families ({a.index.get('family')!r} vs "
                           f"{b.index.get('family')!r}); overlap needs the same architecture.")
    only_a, only_b = sorted(set(ea) - set(eb)), sorted(set(eb) - set(ea))
    if only_a or only_b:
        parts = [f"{len(only_a)} only in A ({_first(only_a)})"] if only_a else []
        parts += [f"{len(only_b)} only in B ({_first(only_b)})"] if only_b else []
        raise CompareError("the two mask sets hold different matrices: " + "; ".join(parts)
                           + ". Compare outputs of the same model.")
    bad = [f"{c} A {ea[c]['shape']} vs B {eb[c]['shape']}" for c in ea if ea[c]["shape"] != eb[c]["shape"]]
    if bad:
        raise CompareError(f"shapes differ for {len(bad)} matrix(es): {_first(bad)}; compare outputs of the same "
                           "model size.")
    return [(ea[c], eb[c]) for c in ea]


def _popcount(x: np.ndarray) -> int:
    return int(np.bitwise_count(x).sum(dtype=np.int64))


def _counts(a_file: Path, b_file: Path, numel: int) -> tuple[int, int, int]:
    """(|A|, |B|, |A∩B|) from two packed masks, read in chunks."""
    nbytes = -(-numel // 8)
    for f in (a_file, b_file):
        if not f.exists() or f.stat().st_size != nbytes:
            raise CompareError(f"mask {f} is missing or not {nbytes} bytes; rerun its comparison with --masks "
                               "--overwrite.")
    na = nb = both = 0
    with a_file.open("rb") as fa, b_file.open("rb") as fb:
        while True:
            x = np.frombuffer(fa.read(_CHUNK), dtype=np.uint8)
            y = np.frombuffer(fb.read(_CHUNK), dtype=np.uint8)
            if x.size == 0:
                break
            na += _popcount(x)
            nb += _popcount(y)
            both += _popcount(x & y)
    return na, nb, both


def jaccard_null(p_a: float, p_b: float) -> float:
    """Expected Jaccard of two independent changed sets with densities p_a, p_b."""
    union = p_a + p_b - p_a * p_b
    return p_a * p_b / union if union > 0 else math.nan


def _group(g: pd.DataFrame) -> dict[str, Any]:
    numel = float(g["numel"].sum())
    na, nb, both = (int(g[c].sum()) for c in ("n_a", "n_b", "n_both"))
    union = na + nb - both
    pa_i, pb_i = g["p_a"].to_numpy(float), g["p_b"].to_numpy(float)
    w = g["numel"].to_numpy(float)
    e_union = float((w * (pa_i + pb_i - pa_i * pb_i)).sum())
    return {"p_a": na / numel if numel else math.nan, "p_b": nb / numel if numel else math.nan,
            "jaccard": both / union if union else math.nan,
            "jaccard_null": float((w * pa_i * pb_i).sum()) / e_union if e_union > 0 else math.nan,
            "n_matrices": len(g), "numel": int(numel), "n_a": na, "n_b": nb, "n_both": both}


def overlap_tables(a: _Masks, b: _Masks) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    rows = []
    region_of: dict[str, list[str]] = {}
    for ea, eb in _match(a, b):
        na, nb, both = _counts(a.root / ea["file"], b.root / eb["file"], int(ea["numel"]))
        n = int(ea["numel"])
        pa, pb = na / n, nb / n
        union = na + nb - both
        rows.append({"name": ea["name"], "layer": ea["layer"], "section": ea["section"], "kind": ea["kind"],
                     "p_a": pa, "p_b": pb, "jaccard": both / union if union else math.nan,
                     "jaccard_null": jaccard_null(pa, pb), "numel": n, "n_a": na, "n_b": nb, "n_both": both,
                     "block": ea["block"], "canonical": ea["canonical"]})
        region_of[ea["canonical"]] = ea.get("regions", [])
    per = pd.DataFrame(rows, columns=list(OVERLAP_COLUMNS))
    for col in ("layer", "block"):
        per[col] = per[col].astype("Int64")
    with_layer = per[per["layer"].notna()]
    layers = pd.DataFrame([{"layer": int(k[0]), "section": k[1]} | _group(g)
                           for k, g in with_layer.groupby(["layer", "section"], sort=True)],
                          columns=list(LAYER_COLUMNS))
    layers["layer"] = layers["layer"].astype("Int64")
    names = list(a.index.get("regions", []))
    regions = [{"region": r} | _group(per[per["canonical"].map(lambda c, r=r: r in region_of[c])])
               for r in names if any(r in v for v in region_of.values())]
    regions.append({"region": "all"} | _group(per))
    return per, layers, pd.DataFrame(regions, columns=list(REGION_COLUMNS))


def _plot(path: Path, layers: pd.DataFrame, labels: tuple[str, str]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from frankenlab.io import atomic_file

    fig = Figure(figsize=(10, 3.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    x = layers["layer"].astype(int)
    ax.plot(x, layers["jaccard"], marker="o", ms=3, color="tab:purple", label="Jaccard |A∩B| / |A∪B|")
    ax.plot(x, layers["jaccard_null"], ls="--", color="grey", label="independent updates (null)")
    ax.set_xlabel("unified layer (vision < 0, projector 0, LLM > 0)")
    ax.set_ylabel("overlap of changed entries")
    ax.set_title(f"Changed-entry overlap per layer: A = {labels[0]}, B = {labels[1]}", fontsize=9)
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110, bbox_inches="tight")


def _check_out(out: Path, overwrite: bool) -> bool:
    """True when `out` exists and may be replaced whole; refuses other people's files (the shared check) and,
    without `overwrite`, an earlier overlap result (an overlap is cheap and never resumes)."""
    state = claim_out_dir(out, what="overlap", marker=f".done-{STAGE}.json",
                          ours=(*(f"{name}.*" for name in TABLES), "summary.json", "manifest.json", "plots"))
    if state.previous is not None and not overwrite:
        raise OutputError(f"{out} already holds an overlap result; pass --overwrite to replace it.")
    return out.exists()


def compare_overlap(a_out: str | os.PathLike[str], b_out: str | os.PathLike[str], *,
                    out_dir: str | os.PathLike[str] | None = None, phase_a: str = "rl", phase_b: str = "rl",
                    plots: bool = True, overwrite: bool = False) -> OverlapResult:
    """Overlap of the changed entries of update A (phase `phase_a` of compare output `a_out`) and update B.

    Same directory with phases 'in' and 'rl': ΔIN vs ΔRL. Two directories: e.g. two RL recipes from
    the same IN. Every check runs before `out_dir` is touched; it is written whole or not at all.
    """
    a = _open_masks(a_out, phase_a, "A")
    b = _open_masks(b_out, phase_b, "B")
    if a.root.resolve() == b.root.resolve() and phase_a == phase_b:
        raise CompareError(f"A and B are the same update ({a_out}, phase {phase_a}); pass --phase-a in --phase-b rl "
                           "to compare ΔIN with ΔRL, or another output as B.")
    out = Path(out_dir).resolve() if out_dir is not None else None
    replace = _check_out(out, overwrite) if out is not None else False
    per, layers, regions = overlap_tables(a, b)
    ref_a = a.index["fingerprints"].get({"in": "base", "rl": "in"}[phase_a])
    ref_b = b.index["fingerprints"].get({"in": "base", "rl": "in"}[phase_b])
    total = regions[regions["region"] == "all"].iloc[0]
    summary = {
        "a": {"dir": str(Path(a_out).resolve()), "phase": phase_a}, "b": {"dir": str(Path(b_out).resolve()),
                                                                           "phase": phase_b},
        "same_reference": ref_a == ref_b,
        "jaccard": _f(total["jaccard"]), "jaccard_null": _f(total["jaccard_null"]),
        "ratio_to_null": _f(total["jaccard"] / total["jaccard_null"]) if total["jaccard_null"] > 0 else None,
        "p_a": _f(total["p_a"]), "p_b": _f(total["p_b"]), "n_matrices": int(total["n_matrices"]),
        "note": "jaccard_null = p_a·p_b / (p_a + p_b − p_a·p_b): the Jaccard of independent changed sets; "
                "aggregates pool counts and per-matrix expectations.",
    }
    result = OverlapResult(per, layers, regions, summary, out_dir=out)
    if out is None:
        return result
    result.manifest = build_manifest("compare overlap", args={"a": str(a_out), "b": str(b_out), "phase_a": phase_a,
                                                              "phase_b": phase_b, "plots": plots},
                                     inputs={"a": str(a.root.parent), "b": str(b.root.parent)})
    with atomic_dir(out, overwrite=replace) as tmp:
        for name, columns in TABLES.items():
            write_table(getattr(result, {"overlap": "overlap", "overlap_layers": "layers",
                                         "overlap_regions": "regions"}[name]), tmp / name, columns=list(columns))
        write_json(tmp / "summary.json", summary)
        if plots and len(layers):
            _plot(tmp / "plots" / "overlap_layers.png", layers, (f"{Path(a_out).name}:{phase_a}",
                                                                 f"{Path(b_out).name}:{phase_b}"))
        write_json(tmp / "manifest.json", result.manifest)
        mark_done(tmp, STAGE, "")
    return result


def _f(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None
