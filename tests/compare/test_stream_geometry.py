"""The issue-13 columns end to end: every row against numpy, scopes never mixed, masks, sweep, cache keys."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from frankenlab.compare import compare_checkpoints
from frankenlab.compare.aggregate import NEW_COLUMNS

from . import perturb, qwen_config, qwen_shapes, random_weights, write_checkpoint
from .test_metrics import bf16_to_numpy

RL_CHANGED = re.compile(r"language_model\.layers\.2\.|visual\.blocks\.0\.attn\.")
IN_CHANGED = re.compile(r"language_model\.layers\.0\.")
K = 3


@pytest.fixture(scope="module")
def triple(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("geo")
    base = random_weights(qwen_shapes(), seed=0)
    in_ = perturb(base, lambda n: bool(IN_CHANGED.search(n)), seed=1)
    rl = perturb(in_, lambda n: bool(RL_CHANGED.search(n)), seed=2)
    # float32 RL: its small updates are not rounded to bf16, so below_bf16_frac is not trivially 0
    gen = torch.Generator().manual_seed(3)
    rl32 = {n: w.float() + (torch.randn(w.shape, generator=gen) * w.float().abs() * 2.0 ** -7
                            if "layers.1." in n else 0) for n, w in in_.items()}
    return {"base": write_checkpoint(root / "base", base, qwen_config()),
            "in": write_checkpoint(root / "in", in_, qwen_config(), shards=2),
            "rl": write_checkpoint(root / "rl", rl, qwen_config()),
            "rl32": write_checkpoint(root / "rl32", rl32, qwen_config())}


def _decoded(path: Path) -> dict[str, np.ndarray]:
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        for k, v in load_file(str(f)).items():
            out[k] = bf16_to_numpy(v) if v.dtype == torch.bfloat16 else v.double().numpy()
    return out


@pytest.fixture(scope="module")
def exact(triple: dict[str, Path]):  # noqa: ANN201
    return compare_checkpoints(triple["in"], triple["rl"], base=triple["base"], svd="exact", subspace_k=K,
                               sparsity_tols="0,1e-3,1e-2")


def _np_geometry(w: np.ndarray, a: np.ndarray, k: int) -> dict[str, float]:
    m = w.reshape(w.shape[0], -1)
    n = a.reshape(a.shape[0], -1)
    k = min(k, *m.shape)
    u0, s0, vt0 = np.linalg.svd(m, full_matrices=False)
    u1, s1, vt1 = np.linalg.svd(n, full_matrices=False)
    sides = []
    for x, y in ((u0[:, :k], u1[:, :k]), (vt0[:k].T, vt1[:k].T)):
        sides.append(np.arccos(np.clip(np.linalg.svd(x.T @ y, compute_uv=False), -1, 1)))
    ang = np.degrees(np.concatenate(sides))
    d = n - m
    share = np.sum((u0[:, :k].T @ d @ vt0[:k].T) ** 2) / np.sum(d ** 2) if np.any(d) else math.nan
    return {"subspace_angle_max_deg": ang.max(), "subspace_angle_mean_deg": ang.mean(),
            "projection_distance": max(math.sqrt(2 * np.sum(np.sin(t) ** 2)) for t in sides),
            "sigma_drift_topk": float(np.mean(np.abs(s1[:k] - s0[:k]) / s0[:k])), "principal_share": share,
            "principal_share_null": k * k / m.size}


def test_every_new_column_matches_numpy(exact, triple: dict[str, Path]) -> None:  # noqa: ANN001
    w = {role: _decoded(triple[role]) for role in ("base", "in", "rl")}
    t = exact.tensors
    assert list(t.columns[16:16 + len(NEW_COLUMNS) + 1]) == [*NEW_COLUMNS, "subspace_k"]
    checked = 0
    for _, row in t.iterrows():
        ref, new = (w["base"], w["in"]) if row["phase"] == "in" else (w["in"], w["rl"])
        old, upd = ref[row["name"]], new[row["name"]]
        d = upd - old
        below = np.mean((np.abs(d) > 0) & (np.abs(d) < np.abs(old) * 2.0 ** -8))
        assert row["below_bf16_frac"] == pytest.approx(below, abs=1e-12)
        if d.ndim == 1:
            assert all(math.isnan(row[c]) for c in NEW_COLUMNS if c != "below_bf16_frac")
            continue
        mat = d.reshape(d.shape[0], -1)
        s = np.linalg.svd(mat, compute_uv=False)
        rank = int((s > 1e-3 * s[0]).sum()) if s[0] > 0 else 0
        assert row["update_rank"] == rank and row["update_rank_frac"] == pytest.approx(rank / min(mat.shape))
        want = _np_geometry(old, upd, K)
        if not np.any(d):  # unchanged: exactly no rotation (numpy's arccos would say ~1e-6°)
            want |= {c: 0.0 for c in ("subspace_angle_max_deg", "subspace_angle_mean_deg", "projection_distance",
                                      "sigma_drift_topk")}
        assert row["subspace_k"] == min(K, *mat.shape)
        for col, value in want.items():
            if math.isnan(value):
                assert math.isnan(row[col]), (row["name"], col)
            else:
                tol = 1e-5 if "deg" in col else 1e-7
                assert row[col] == pytest.approx(value, abs=tol), (row["name"], row["phase"], col)
        checked += np.any(d)
    assert checked >= 12  # the changed matrices of both phases were really compared
    changed = t[t["is_matrix"] & (t["fro"] > 0)]
    assert (changed["subspace_angle_max_deg"] > 1).all() and (changed["update_rank_frac"] == 1).all()
    assert (t.loc[t["is_matrix"] & (t["fro"] == 0), "subspace_angle_max_deg"] == 0).all()


def test_sparsity_sweep_matches_numpy(exact, triple: dict[str, Path]) -> None:  # noqa: ANN001
    sp = exact.sparsity
    assert list(sp.columns[:7]) == ["name", "phase", "layer", "section", "kind", "tol", "frac_changed"]
    assert sorted(set(sp["tol"])) == [0.0, 1e-3, 1e-2] and len(sp) == 3 * len(exact.tensors)
    w = {role: _decoded(triple[role]) for role in ("base", "in", "rl")}
    for _, row in sp.iterrows():
        ref, new = (w["base"], w["in"]) if row["phase"] == "in" else (w["in"], w["rl"])
        old = ref[row["name"]]
        d = new[row["name"]] - old
        assert row["frac_changed"] == pytest.approx(np.mean(np.abs(d) > row["tol"] * np.abs(old)), abs=1e-12)
    zero = sp[sp["tol"] == 0].set_index(["name", "phase"])["frac_changed"]
    unchanged = exact.tensors.set_index(["name", "phase"])["unchanged_frac"]
    pd.testing.assert_series_equal(zero, 1 - unchanged.loc[zero.index], check_names=False)


def test_float32_update_below_bf16_and_layer_means(triple: dict[str, Path]) -> None:
    res = compare_checkpoints(triple["in"], triple["rl32"], svd="none")
    t = res.tensors
    w_in, w_rl = _decoded(triple["in"]), _decoded(triple["rl32"])
    for _, row in t.iterrows():
        old, d = w_in[row["name"]], w_rl[row["name"]] - w_in[row["name"]]
        assert row["below_bf16_frac"] == pytest.approx(np.mean((d != 0) & (np.abs(d) < np.abs(old) / 256)))
    layer = t[(t["layer"] == 2) & t["is_matrix"]]
    assert 0.2 < layer["below_bf16_frac"].mean() < 0.9  # |Δ| ~ |w|·2⁻⁷·N(0,1): many under |w|/256
    agg = res.layers.set_index("layer").loc[2]
    assert agg["below_bf16_frac_mean"] == pytest.approx(layer["below_bf16_frac"].mean())
    assert t["subspace_angle_max_deg"].isna().all() and t["update_rank"].isna().all()  # --svd none: no SVDs


def test_aggregate_means_are_means_of_the_rows(exact) -> None:  # noqa: ANN001
    t = exact.tensors
    lay = exact.layers.set_index(["phase", "layer"])
    for (phase, layer), g in t[t["is_matrix"] & t["layer"].notna()].groupby(["phase", "layer"]):
        for col in NEW_COLUMNS:
            want = g[col].mean()
            got = lay.loc[(phase, layer), f"{col}_mean"]
            assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want), (phase, layer, col)
    regions = exact.regions.set_index(["phase", "region"])
    assert regions.loc[("rl", "late"), "subspace_angle_max_deg_mean"] > 0
    assert regions.loc[("rl", "early"), "subspace_angle_max_deg_mean"] == 0
    assert exact.summary["per_phase"]["rl"]["regions"]["late"]["principal_share_mean"] > 0


def test_auto_never_averages_full_and_top_k_spectra(triple: dict[str, Path]) -> None:
    # exact for min(shape) ≤ 8 (k/v, vision), lowrank top-4 for the 16+ wide matrices
    res = compare_checkpoints(triple["in"], triple["rl"], svd="auto", exact_max_dim=8, top_k=4, oversample=2)
    t = res.tensors[res.tensors["is_matrix"]]
    assert set(t["effective_rank_scope"]) == {"full", "top4"}
    assert t.loc[t["effective_rank_scope"] == "top4", "update_rank"].isna().all()  # not capped at 4
    assert t.loc[t["effective_rank_scope"] == "full", "update_rank"].notna().all()
    layers = res.layers.set_index("layer")
    g = t[(t["layer"] == 3) & t["effective_rank"].notna()]
    full = g[g["effective_rank_scope"] == "full"]
    assert len(full) and len(full) < len(g)
    assert layers.loc[3, "effective_rank_mean"] == pytest.approx(full["effective_rank"].mean())
    assert layers.loc[3, "effective_rank_scope"] == "full" and layers.loc[3, "effective_rank_n"] == len(full)
    assert layers.loc[3, "update_rank_mean"] == pytest.approx(full["update_rank"].mean())
    q = res.kinds.set_index(["section", "kind"]).loc[("llm", "q")]  # every q is lowrank: one top-k scope
    qs = t[(t["kind"] == "q") & t["effective_rank"].notna()]
    assert q["effective_rank_scope"] == "top4"
    assert q["effective_rank_mean"] == pytest.approx(qs["effective_rank"].mean())
    assert "+" not in "".join(res.layers["effective_rank_scope"].dropna())


def test_streaming_in_small_blocks_gives_the_same_geometry(triple: dict[str, Path], exact,  # noqa: ANN001
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from frankenlab.compare import spectra, stream

    monkeypatch.setattr(stream, "_BLOCK", 7)
    monkeypatch.setattr(spectra, "_BLOCK_ENTRIES", 40)  # a few columns per Gram block
    blocked = compare_checkpoints(triple["in"], triple["rl"], base=triple["base"], svd="exact", subspace_k=K,
                                  sparsity_tols="0,1e-3,1e-2")
    cols = [*NEW_COLUMNS, "sigma1", "effective_rank"]
    pd.testing.assert_frame_equal(blocked.tensors[cols], exact.tensors[cols], rtol=1e-8, atol=1e-9)
    pd.testing.assert_frame_equal(blocked.sparsity, exact.sparsity)


def _bits(path: Path, numel: int, shape: list[int]) -> np.ndarray:
    return np.unpackbits(np.fromfile(path, dtype=np.uint8))[:numel].astype(bool).reshape(shape)


class Interrupt(Exception):
    pass


def test_masks_are_exact_resumable_and_part_of_the_cache_key(triple: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"

    def stop(ev) -> None:  # noqa: ANN001
        if ev.index == 20:
            raise Interrupt

    with pytest.raises(Interrupt):
        compare_checkpoints(triple["in"], triple["rl"], base=triple["base"], svd="none", masks=True, out_dir=out,
                            plots=False, progress=stop)
    assert [p.name for p in out.iterdir()] == [".cache"]
    res = compare_checkpoints(triple["in"], triple["rl"], base=triple["base"], svd="none", masks=True, out_dir=out,
                              plots=False)
    assert res.computed == len(res.tensors) // 2 - 20
    index = json.loads((out / "masks" / "index.json").read_text())
    assert index["phases"] == ["in", "rl"] and "packbits" in index["format"]
    w = {role: _decoded(triple[role]) for role in ("base", "in", "rl")}
    n_matrices = int(res.tensors["is_matrix"].sum())
    assert len(index["tensors"]) == n_matrices
    for e in index["tensors"]:
        ref, new = (w["base"], w["in"]) if e["phase"] == "in" else (w["in"], w["rl"])
        name = res.tensors.set_index("canonical").loc[e["canonical"], "name"].iloc[0]
        want = new[name] != ref[name]
        got = _bits(out / "masks" / e["file"], e["numel"], e["shape"])
        np.testing.assert_array_equal(got, want)
        assert e["n_changed"] == int(want.sum())
        assert ("late" in e["regions"]) == (e["layer"] in (3, 4))
    assert "masks/index.json" in res.manifest["files"]

    # a changed setting never reuses stale rows; masks off → no masks directory
    for kw in ({"masks": False}, {"sparsity_tols": "0,1e-2"}, {"svd": "exact", "subspace_k": 2},
               {"svd": "exact", "subspace_k": 3}, {"svd": "exact", "subspace_k": 3, "rank_tol": 1e-2}):
        again = compare_checkpoints(triple["in"], triple["rl"], base=triple["base"], out_dir=out, plots=False,
                                    overwrite=True, **{"svd": "none", **kw})
        assert again.computed == len(again.tensors) // 2, kw
        assert (out / "masks").exists() == kw.get("masks", False)
    assert set(again.sparsity["tol"]) == {0.0, 1e-8, 1e-6, 1e-4}
    with pytest.raises(Exception, match="masks=True needs out_dir"):
        compare_checkpoints(triple["in"], triple["rl"], masks=True)
