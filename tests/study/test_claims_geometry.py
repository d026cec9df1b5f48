"""The weight-geometry claims on tensors tables whose truth is known: fabricated, and from real compare runs."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from frankenlab.checkpoint import Checkpoint
from frankenlab.compare import compare_checkpoints
from frankenlab.planted import noise_targets, plant_noise, plant_null
from frankenlab.regions import Partition
from frankenlab.study.claims import (
    ALPHA,
    RANK_MIN,
    SPARSE_MAX,
    claim_rl_off_principal,
    claim_rl_rotates_less,
    claim_rl_sparse_full_rank,
    decide_all,
    geometry_matrices,
)
from frankenlab.testing import save_tiny_checkpoint
from frankenlab.testing.claims import geometry_tensors

GEOMETRY = ("rl_update_sparse_full_rank", "rl_off_principal", "rl_rotates_less_than_sft")
CLAIMS = (claim_rl_sparse_full_rank, claim_rl_off_principal, claim_rl_rotates_less)


def _interface(c) -> dict:
    d = c.to_dict()
    json.dumps(d, allow_nan=False)  # findings.json must be strict JSON
    assert d["verdict"] in ("supported", "contradicted", "inconclusive") and d["reason"] and d["rule"]
    return d


def _llm(t: pd.DataFrame, phase: str = "rl") -> pd.DataFrame:
    """The LLM 2-D rows, selected independently of geometry_matrices (the decoys have other section/ndim)."""
    return t[(t["phase"] == phase) & (t["section"] == "llm") & (t["ndim"] == 2)]


def _exact_sign_flip(d: np.ndarray) -> float:
    signs = ((np.arange(2 ** d.size)[:, None] >> np.arange(d.size)) & 1) * 2 - 1
    return float(np.mean(np.abs(signs @ d) / d.size >= abs(d.mean()) - 1e-12))


# -- fabricated tables ------------------------------------------------------------------------------
def test_null_pair_gives_three_inconclusive_no_update():
    for t in (geometry_tensors("zero"), geometry_tensors("zero", in_="noise")):
        for f in CLAIMS:
            c = f(t)
            assert c.verdict == "inconclusive" and "no update" in c.reason, c.reason
            _interface(c)


def test_sparse_full_rank_update_is_supported_with_the_numbers_of_the_table():
    t = geometry_tensors("sparse", seed=3)
    c = claim_rl_sparse_full_rank(t)
    assert c.verdict == "supported", c.reason
    rows = _llm(t)
    subs = {s["name"]: s for s in _interface(c)["evidence"]["subtests"]}
    share = subs["changed share (1 − unchanged_frac)"]
    rank = subs["update rank / min(m, n)"]
    assert share["effect"] == pytest.approx(1 - rows["unchanged_frac"].mean(), abs=1e-5)  # the vision decoy is out
    assert share["effect"] == pytest.approx(0.1, abs=0.02) and share["ci_high"] < SPARSE_MAX
    assert rank["effect"] == pytest.approx(rows["update_rank_frac"].mean(), abs=1e-5) and rank["ci_low"] > RANK_MIN
    assert share["n"] == rank["n"] == 42 and share["expected"] == "< 0.5" and rank["expected"] == "> 0.5"
    assert c.p < ALPHA and c.evidence["n_unchanged"] == 0


@pytest.mark.parametrize("pattern", ["rank1", "principal", "noise"])
def test_dense_or_low_rank_updates_contradict_sparse_full_rank(pattern):
    c = claim_rl_sparse_full_rank(geometry_tensors(pattern))
    assert c.verdict == "contradicted"
    verdicts = {s["name"]: s["verdict"] for s in c.evidence["subtests"]}
    assert verdicts["changed share (1 − unchanged_frac)"] == "contradicted"
    assert verdicts["update rank / min(m, n)"] == ("supported" if pattern == "noise" else "contradicted")


def test_sparse_but_low_rank_contradicts_and_unknown_rank_never_supports():
    t = geometry_tensors("sparse", seed=1)
    llm = (t["section"] == "llm") & (t["ndim"] == 2)
    low = t.copy()
    low.loc[llm, "update_rank_frac"] = 0.05
    assert claim_rl_sparse_full_rank(low).verdict == "contradicted"
    lowrank = t.copy()
    lowrank.loc[llm, "update_rank_frac"] = np.nan  # compare's lowrank SVD: no full spectrum, no rank
    c = claim_rl_sparse_full_rank(lowrank)
    assert c.verdict == "inconclusive" and "compare.svd exact" in c.reason
    # half the matrices frozen (unchanged): left out, counted, and they do not make it sparser
    frozen = t.copy()
    rows = frozen.index[llm & (frozen["layer"] <= 3)]
    frozen.loc[rows, ["unchanged_frac", "update_rank_frac"]] = [1.0, 0.0]
    c = claim_rl_sparse_full_rank(frozen)
    assert c.evidence["n_unchanged"] == 21 and c.evidence["subtests"][0]["n"] == 21


def test_update_in_the_principal_subspace_contradicts_off_principal():
    t = geometry_tensors("principal", seed=2)
    c = claim_rl_off_principal(t)
    m, n, k = 24, 40, 4
    assert c.verdict == "contradicted" and c.ci_low > 0
    assert c.effect == pytest.approx(m * n / k**2 - 1, rel=1e-6)  # every matrix: share 1 over null k²/(m·n)
    _interface(c)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("pattern", ["noise", "sparse"])
def test_updates_blind_to_the_weights_directions_are_not_off_principal(pattern, seed):
    c = claim_rl_off_principal(geometry_tensors(pattern, seed=seed))
    assert c.verdict == "inconclusive", c.reason
    rows = _llm(geometry_tensors(pattern, seed=seed))
    excess = rows["principal_share"] / rows["principal_share_null"] - 1
    assert c.effect == pytest.approx(excess.mean(), abs=1e-5)


def test_noise_false_positive_rate_of_off_principal_is_small():
    verdicts = [claim_rl_off_principal(geometry_tensors("noise", n_layers=3, seed=100 + s)).verdict
                for s in range(40)]
    assert verdicts.count("supported") <= 3  # 2.5 % over 400 seeds of the default size (docs/study.md)


def test_update_below_the_null_is_off_principal():
    t = geometry_tensors("noise", seed=4)
    llm = (t["section"] == "llm") & (t["ndim"] == 2)
    t.loc[llm, "principal_share"] *= 0.3  # what an update that avoids W's top block would show
    c = claim_rl_off_principal(t)
    assert c.verdict == "supported" and c.ci_high < 0
    assert c.evidence["share_below_null"] > 0.9


def test_rotation_rl_against_sft():
    less = claim_rl_rotates_less(geometry_tensors("noise", in_="noise", in_scale=0.1))
    assert less.verdict == "supported" and less.ci_high < 0
    more = claim_rl_rotates_less(geometry_tensors("noise", in_="noise", rl_scale=0.1))
    assert more.verdict == "contradicted" and more.ci_low > 0
    same = claim_rl_rotates_less(geometry_tensors("noise", in_="noise", seed=5))
    assert same.verdict == "inconclusive", same.reason
    no_base = claim_rl_rotates_less(geometry_tensors("noise"))
    assert no_base.verdict == "inconclusive" and "no BASE" in no_base.reason
    no_in = claim_rl_rotates_less(geometry_tensors("noise", in_="zero"))
    assert no_in.verdict == "inconclusive" and "no update in ΔIN" in no_in.reason


def test_rotation_effect_and_p_match_an_independent_computation():
    t = geometry_tensors("noise", in_="noise", n_layers=2, seed=6, in_scale=0.012)  # 14 pairs: exact sign flips
    c = claim_rl_rotates_less(t)
    rl, inn = _llm(t).set_index("name"), _llm(t, "in").set_index("name")
    d = (rl["subspace_angle_mean_deg"] - inn.loc[rl.index, "subspace_angle_mean_deg"]).to_numpy()
    assert c.effect == pytest.approx(d.mean(), abs=1e-5) and c.n == 14
    assert c.p == pytest.approx(_exact_sign_flip(d), abs=1e-5)


def test_missing_inputs_are_inconclusive_with_the_reason():
    for f in CLAIMS:
        assert "no per-tensor results" in f(None).reason
        assert "no 2-D LLM weight matrix" in f(geometry_tensors("noise")[lambda d: d["section"] != "llm"]).reason
    bare = geometry_tensors("noise", in_="noise").drop(columns=["principal_share", "subspace_angle_mean_deg"])
    for f in (claim_rl_off_principal, claim_rl_rotates_less):
        c = f(bare)
        assert c.verdict == "inconclusive" and "--svd none" in c.reason


def test_geometry_matrices_reads_csv_bools(tmp_path):
    t = geometry_tensors("noise")
    t.to_csv(tmp_path / "t.csv", index=False)
    back = pd.read_csv(tmp_path / "t.csv").assign(is_matrix=lambda d: d["is_matrix"].astype(str))
    assert len(geometry_matrices(back, "rl")) == 42 == len(geometry_matrices(t, "rl"))


def test_decide_all_appends_the_geometry_claims():
    claims = decide_all({"compare_tensors": geometry_tensors("zero", in_="noise")}, Partition.make(6), {})
    geo = [c for c in claims if c.claim in GEOMETRY]
    assert [c.claim for c in geo] == list(GEOMETRY) and all(c.verdict == "inconclusive" for c in geo)
    assert all("no per-tensor results" in c.reason for c in decide_all({}, Partition.make(6), {})
               if c.claim in GEOMETRY)


# -- real compare runs on tiny checkpoints ---------------------------------------------------------------
def _plant(src: Path, out: Path, kind: str, scale: float = 1e-2, seed: int = 0) -> Path:
    """`src` with ΔW on every LLM weight matrix: "principal" = scale‖W‖_F·u1v1ᵀ, "sparse" = 10 % of the
    entries with Gaussian values, "rank1" = a dense random a bᵀ (‖ΔW‖_F = scale‖W‖_F)."""
    shutil.copytree(src, out)
    (out / "planted.json").unlink(missing_ok=True)
    with Checkpoint(src) as c:
        targets = set(noise_targets(c, "llm"))
    rng = np.random.default_rng(seed)
    for file in sorted(out.glob("*.safetensors")):
        with safe_open(str(file), "pt") as fh:
            meta = fh.metadata()
        tensors = load_file(str(file))
        for name in sorted(targets & set(tensors)):
            w = tensors[name].double()
            m, n = w.shape
            if kind == "principal":
                u, _, vh = torch.linalg.svd(w, full_matrices=False)
                d = torch.outer(u[:, 0], vh[0])
            elif kind == "sparse":
                d = torch.from_numpy(rng.standard_normal((m, n)) * (rng.random((m, n)) < 0.1))
            else:
                d = torch.from_numpy(np.outer(rng.standard_normal(m), rng.standard_normal(n)))
            tensors[name] = (w + d * (scale * torch.linalg.norm(w) / torch.linalg.norm(d))).to(tensors[name].dtype)
        save_file(tensors, str(file), metadata=meta)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("geo")
    base = save_tiny_checkpoint("qwen2", root / "base", n_llm_layers=3, seed=0, with_processor=False)
    plant_noise(base, root / "in", scale=3e-2, seed=1)
    plant_null(root / "in", root / "null")
    plant_noise(root / "in", root / "noise", scale=3e-3, seed=2)
    for kind in ("principal", "sparse", "rank1"):
        _plant(root / "in", root / kind, kind)
    return root


def _tensors(world: Path, rl: str, base: bool = False, out: Path | None = None) -> pd.DataFrame:
    return compare_checkpoints(world / "in", world / rl, world / "base" if base else None, out_dir=out, svd="exact",
                               plots=False, threads=1).tensors


def test_real_null_pair_through_the_study_collect_gives_three_inconclusive(world, tmp_path):
    from frankenlab.report import collect_recipe, render_html
    from frankenlab.study.stages import STAGE_SPECS

    dirs = {s: tmp_path / s for s in STAGE_SPECS}
    _tensors(world, "null", base=True, out=dirs["compare"])
    data = collect_recipe("null", dirs, {})
    assert data.tables["compare_tensors"] is not None
    claims = decide_all(data.tables, Partition.make(3), data.items)
    by = {c.claim: c for c in claims}
    for cid in GEOMETRY:
        assert by[cid].verdict == "inconclusive" and "no update" in by[cid].reason
    page = render_html("t", {}, [], [data], {"null": [c.to_dict() for c in claims]})
    section = page[page.index("<h2>Weight geometry"):]
    section = section[:section.index("<h2>", 4)]
    for name in ("geometry_angles.png", "geometry_principal_share.png", "geometry_sparsity.png"):
        assert f'alt="{name}"' in section  # ΔIN's lines are drawn even when ΔRL is zero
    assert 'data-table="geometry_claims"' in section


def test_real_noise_chain_rl_rotates_less_and_is_dense(world):
    t = _tensors(world, "noise", base=True)
    rot = claim_rl_rotates_less(t)
    assert rot.verdict == "supported", rot.reason
    assert rot.evidence["mean_angle_rl_deg"] < rot.evidence["mean_angle_in_deg"]
    assert claim_rl_sparse_full_rank(t).verdict == "contradicted"  # Gaussian noise changes every entry
    off = claim_rl_off_principal(t)
    assert off.verdict == "inconclusive", off.reason


def test_real_planted_updates(world):
    principal = _tensors(world, "principal")
    c = claim_rl_off_principal(principal)
    assert c.verdict == "contradicted" and c.evidence["mean_principal_share"] == pytest.approx(1.0, abs=1e-4)
    assert claim_rl_sparse_full_rank(principal).verdict == "contradicted"
    sparse = _tensors(world, "sparse")
    s = claim_rl_sparse_full_rank(sparse)
    assert s.verdict == "supported", s.reason
    rows = sparse[(sparse["section"] == "llm") & sparse["is_matrix"].astype(bool)]
    assert s.evidence["mean_changed_share"] == pytest.approx(1 - rows["unchanged_frac"].mean(), abs=1e-5)
    assert s.evidence["mean_changed_share"] == pytest.approx(0.1, abs=0.02)
    assert claim_rl_off_principal(sparse).verdict == "inconclusive"
    rank1 = claim_rl_sparse_full_rank(_tensors(world, "rank1"))
    assert rank1.verdict == "contradicted"
    assert {s["name"]: s["verdict"] for s in rank1.evidence["subtests"]}["update rank / min(m, n)"] == "contradicted"
    assert not math.isnan(rank1.effect)
