"""compare_checkpoints on hand-made tiny checkpoints: localization, numpy agreement, layouts, errors, resume."""

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

from frankenlab.compare import ProgressEvent, compare_checkpoints
from frankenlab.errors import CompareError, OutputError

from . import perturb, qwen_config, qwen_shapes, random_weights, text_config, text_shapes, write_checkpoint
from .test_metrics import bf16_to_numpy

# RL changes LLM layer 2 (unified 3) and vision block 0's attention (unified −2); IN changes LLM layer 0 (unified 1).
RL_CHANGED = re.compile(r"language_model\.layers\.2\.|visual\.blocks\.0\.attn\.")
IN_CHANGED = re.compile(r"language_model\.layers\.0\.")


@pytest.fixture(scope="module")
def triple(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("triple")
    base = random_weights(qwen_shapes(), seed=0)
    in_ = perturb(base, lambda n: bool(IN_CHANGED.search(n)), seed=1)
    rl = perturb(in_, lambda n: bool(RL_CHANGED.search(n)), seed=2)
    return {
        "base": write_checkpoint(root / "base", base, qwen_config()),
        "in": write_checkpoint(root / "in", in_, qwen_config(), shards=3),
        "rl": write_checkpoint(root / "rl", rl, qwen_config()),
        "rl_t5": write_checkpoint(root / "rl_t5", rl, qwen_config(), layout="transformers5"),
        "in_t5": write_checkpoint(root / "in_t5", in_, qwen_config(), layout="transformers5"),
    }


@pytest.fixture(scope="module")
def result(triple: dict[str, Path]):  # noqa: ANN201
    return compare_checkpoints(triple["in"], triple["rl"], base=triple["base"], svd="exact")


def _decoded(path: Path) -> dict[str, np.ndarray]:
    tensors = load_file(str(path / "model.safetensors")) if (path / "model.safetensors").exists() else {
        k: v for f in sorted(path.glob("*.safetensors")) for k, v in load_file(str(f)).items()}
    return {k: bf16_to_numpy(v) for k, v in tensors.items()}


def test_energy_only_in_the_perturbed_layers(result) -> None:  # noqa: ANN001
    layers = result.layers.set_index(["phase", "layer"])
    for phase, changed in (("rl", {3, -2}), ("in", {1})):
        fro = layers.loc[phase, "fro_sum"]
        assert set(fro[fro > 0].index) == changed, phase
        assert (fro.drop(list(changed)) == 0).all()
        assert (layers.loc[phase, "unchanged_frac"].drop(list(changed)) == 1.0).all()
    regions = result.regions.set_index(["phase", "region"])["fro_sum"]
    # 4 LLM layers, default thirds: early = layer 0, mid = layer 1, late = layers 2–3.
    assert regions["rl"][regions["rl"] > 0].index.tolist() == ["vision", "llm", "late", "all"]
    assert regions["in"][regions["in"] > 0].index.tolist() == ["llm", "early", "all"]
    assert regions["rl", "llm"] + regions["rl", "vision"] == pytest.approx(regions["rl", "all"])
    kinds = result.kinds.set_index(["phase", "section", "kind"])["fro_sum"]
    assert kinds["rl", "vision", "qkv"] > 0 and kinds["rl", "vision", "gate"] == 0 and kinds["rl", "projector",
                                                                                               "projector"] == 0


def test_custom_cuts_move_the_energy(triple: dict[str, Path]) -> None:
    res = compare_checkpoints(triple["in"], triple["rl"], svd="none", cuts="2,3")
    regions = res.regions.set_index("region")["fro_sum"]
    assert regions["mid"] > 0 and regions["early"] == 0 and regions["late"] == 0
    assert res.summary["cuts"] == [2, 3] and res.summary["phases"] == ["rl"]
    assert res.spectra.empty and res.tensors["sigma1"].isna().all()


def test_every_row_matches_numpy(result, triple: dict[str, Path]) -> None:  # noqa: ANN001
    w = {role: _decoded(triple[role]) for role in ("base", "in", "rl")}
    t = result.tensors
    assert len(t) == 2 * len(w["rl"])
    for _, row in t.iterrows():
        ref, new = (w["base"], w["in"]) if row["phase"] == "in" else (w["in"], w["rl"])
        old, upd = ref[row["name"]], new[row["name"]]
        d = upd - old
        assert row["fro"] == pytest.approx(np.sqrt((d ** 2).sum()), rel=1e-6, abs=1e-12)
        assert row["rel_fro"] == pytest.approx(np.sqrt((d ** 2).sum() / (old ** 2).sum()), rel=1e-6, abs=1e-12)
        assert row["max_abs"] == pytest.approx(np.abs(d).max(), rel=1e-6, abs=1e-12)
        assert row["unchanged_frac"] == pytest.approx((upd == old).mean())
        if d.ndim >= 2 and np.any(d):
            s = np.linalg.svd(d.reshape(d.shape[0], -1), compute_uv=False)
            p = s / s.sum()
            assert row["sigma1"] == pytest.approx(s[0], rel=1e-5)
            assert row["stable_rank"] == pytest.approx((d ** 2).sum() / s[0] ** 2, rel=1e-5)
            assert row["effective_rank"] == pytest.approx(np.exp(-(p[p > 0] * np.log(p[p > 0])).sum()), rel=1e-5)
            assert row["effective_rank_scope"] == "full"
            q = s[:32] / s[:32].sum()
            assert row["effective_rank_topk"] == pytest.approx(np.exp(-(q[q > 0] * np.log(q[q > 0])).sum()), rel=1e-5)
        elif d.ndim == 1:
            assert not row["is_matrix"] and math.isnan(row["sigma1"])
    rl_rows = t[(t["phase"] == "rl") & t["is_matrix"]]
    layer = rl_rows[rl_rows["layer"] == 3]
    agg = result.layers.set_index(["phase", "layer"]).loc[("rl", 3)]
    assert agg["fro_sum"] == pytest.approx(layer["fro"].sum())
    assert agg["fro_total"] == pytest.approx(math.sqrt((layer["fro"] ** 2).sum()))
    assert agg["rel_fro_mean"] == pytest.approx(layer["rel_fro"].mean())


def test_streaming_in_small_blocks_gives_the_same_numbers(triple: dict[str, Path], result,  # noqa: ANN001
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from frankenlab.compare import stream

    monkeypatch.setattr(stream, "_BLOCK", 7)  # every tensor spans many blocks, most with a ragged end
    for svd in ("exact", "none"):
        blocked = compare_checkpoints(triple["in"], triple["rl"], base=triple["base"], svd=svd)
        cols = ["fro", "rel_fro", "max_abs", "unchanged_frac", "cos_in_rl", "ref_fro"]
        cols += ["sigma1", "stable_rank", "effective_rank"] if svd == "exact" else []
        pd.testing.assert_frame_equal(blocked.tensors[cols], result.tensors[cols], rtol=1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_matches_cpu(triple: dict[str, Path], result) -> None:  # noqa: ANN001
    gpu = compare_checkpoints(triple["in"], triple["rl"], base=triple["base"], svd="exact", device="cuda")
    cols = ["fro", "rel_fro", "max_abs", "unchanged_frac", "sigma1", "stable_rank", "effective_rank", "cos_in_rl",
            "below_bf16_frac", "update_rank", "subspace_angle_max_deg", "subspace_angle_mean_deg",
            "projection_distance", "sigma_drift_topk", "principal_share", "principal_share_null"]
    pd.testing.assert_frame_equal(gpu.tensors[cols], result.tensors[cols], rtol=1e-4, atol=1e-9)
    pd.testing.assert_frame_equal(gpu.sparsity, result.sparsity)


def test_cosine_between_phases_matches_numpy(tmp_path: Path) -> None:
    base = random_weights(text_shapes(), seed=0, dtype=torch.float32)
    gen = torch.Generator().manual_seed(3)
    step = {n: torch.randn(w.shape, generator=gen) * 0.01 for n, w in base.items()}
    in_ = {n: w + step[n] for n, w in base.items()}
    rl = {n: w + 0.5 * step[n] + torch.randn(w.shape, generator=gen) * 0.01 for n, w in in_.items()}
    paths = [write_checkpoint(tmp_path / r, w, text_config()) for r, w in (("b", base), ("i", in_), ("r", rl))]
    res = compare_checkpoints(paths[1], paths[2], base=paths[0], svd="none")
    rows = res.tensors[res.tensors["phase"] == "rl"].set_index("name")
    for name in base:
        a = (in_[name].double() - base[name].double()).numpy().ravel()
        b = (rl[name].double() - in_[name].double()).numpy().ravel()
        assert rows.loc[name, "cos_in_rl"] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b), rel=1e-4)
    llm = res.regions.set_index(["phase", "region"]).loc[("rl", "llm"), "cos_in_rl"]
    assert 0.3 < llm < 0.6  # half the IN step plus an independent part of the same size: cos ≈ 0.45


def test_bf16_checkpoints_keep_deltas_that_fp16_would_flush(tmp_path: Path) -> None:
    weights = random_weights(text_shapes(2))
    old = {n: (w.float().abs().clamp(max=0.15) * 1e-7 + 5e-9).to(torch.bfloat16) for n, w in weights.items()}
    new = {n: (w.view(torch.int16) + 1).view(torch.bfloat16) if "layers.1." in n else w.clone()
           for n, w in old.items()}
    assert all(torch.count_nonzero(new[n].half() - old[n].half()) == 0 for n in old)  # fp16 sees no change
    res = compare_checkpoints(write_checkpoint(tmp_path / "i", old, text_config(2)),
                              write_checkpoint(tmp_path / "r", new, text_config(2)), svd="none")
    fro = res.tensors.set_index("name")["fro"]
    for name in old:
        d = bf16_to_numpy(new[name]) - bf16_to_numpy(old[name])
        assert fro[name] == pytest.approx(np.sqrt((d ** 2).sum()), rel=1e-6, abs=0)
        assert (fro[name] > 0) == ("layers.1." in name)
    assert res.regions["region"].tolist() == ["llm", "all"] and res.summary["cuts"] == []  # < 3 layers: no thirds


def test_mixed_layouts_match_by_canonical_name_and_report_rl_names(triple: dict[str, Path], result) -> None:  # noqa: ANN001
    mixed = compare_checkpoints(triple["in"], triple["rl_t5"], base=triple["base"], svd="exact")
    names = set(mixed.tensors["name"])
    assert "model.language_model.layers.2.mlp.up_proj.weight" in names  # RL's (transformers-5) names
    assert "model.layers.2.mlp.up_proj.weight" not in names
    cols = ["fro", "rel_fro", "max_abs", "unchanged_frac", "sigma1", "stable_rank", "effective_rank"]
    pd.testing.assert_frame_equal(mixed.tensors[cols], result.tensors[cols])
    hub_names = compare_checkpoints(triple["in_t5"], triple["rl"], svd="none").tensors["name"]
    assert "model.layers.2.mlp.up_proj.weight" in set(hub_names) and "visual.blocks.0.attn.qkv.weight" in set(hub_names)


def test_text_only_model(tmp_path: Path) -> None:
    w = random_weights(text_shapes(3), seed=0)
    rl = perturb(w, lambda n: "layers.1." in n)
    res = compare_checkpoints(write_checkpoint(tmp_path / "i", w, text_config(3)),
                              write_checkpoint(tmp_path / "r", rl, text_config(3)), cuts="1,2")
    assert set(res.tensors["section"]) == {"embed", "llm", "head", "other"}
    fro = res.layers.set_index("layer")["fro_sum"]
    assert fro.index.tolist() == [1, 2, 3] and fro[2] > 0 and fro[1] == 0 and fro[3] == 0
    assert res.regions["region"].tolist() == ["llm", "early", "mid", "late", "all"]


def test_lowrank_scope_is_named(triple: dict[str, Path]) -> None:
    res = compare_checkpoints(triple["in"], triple["rl"], svd="lowrank", top_k=4, oversample=2)
    big = res.tensors[res.tensors["is_matrix"] & (res.tensors["fro"] > 0)]
    assert set(big["svd_method"]) == {"lowrank"} and set(big["effective_rank_scope"]) == {"top4"}
    assert (big["effective_rank"] <= 4 + 1e-9).all()
    assert res.summary["svd"]["effective_rank_scope"] == {"top4": int((res.tensors["is_matrix"]).sum())}
    assert "top-k" in res.summary["svd"]["note"]
    assert set(res.layers["effective_rank_scope"].dropna()) == {"top4"}
    assert res.spectra.groupby(["name", "phase"]).size().max() == 4


# -- errors: CompareError, and the output directory is never created -------------------------------
def _variant(tmp_path: Path, name: str, edit) -> Path:  # noqa: ANN001
    w = random_weights(qwen_shapes(), seed=0)
    cfg = qwen_config()
    w, cfg = edit(w, cfg)
    return write_checkpoint(tmp_path / name, w, cfg)


@pytest.mark.parametrize("edit, message", [
    (lambda w, c: (w, c | {"model_type": "qwen2_vl"}), r"architectures differ: IN is 'qwen2_5_vl', RL is 'qwen2_vl'"),
    (lambda w, c: ({k: v for k, v in w.items() if "layers.3." not in k}, qwen_config(n_llm=3)),
     r"architectures differ: LLM layers IN 4, RL 3"),
    (lambda w, c: ({k: v for k, v in w.items() if "lm_head" not in k and "layers.1.mlp" not in k}, c),
     r"tensor sets differ .*4 only in IN \(lm_head.weight, model.language_model.layers.1.mlp.down_proj.weight"),
    (lambda w, c: (w | {"lm_head.weight": torch.zeros(41, 16, dtype=torch.bfloat16)}, c),
     r"shapes differ for 1 tensor\(s\): lm_head.weight IN \[40, 16\] vs RL \[41, 16\]"),
    (lambda w, c: (w | {"model.language_model.norm.weight": torch.ones(16, dtype=torch.int32)}, c),
     r"dtypes that cannot be compared .*model.language_model.norm.weight \(RL I32\)"),
])
def test_incomparable_checkpoints_fail_before_writing(tmp_path: Path, edit, message: str) -> None:  # noqa: ANN001
    good = _variant(tmp_path, "in", lambda w, c: (w, c))
    bad = _variant(tmp_path, "rl", edit)
    out = tmp_path / "out"
    with pytest.raises(CompareError, match=message):
        compare_checkpoints(good, bad, out_dir=out)
    assert not out.exists()


def test_bad_device_and_cuts_fail_before_writing(triple: dict[str, Path], tmp_path: Path) -> None:
    from frankenlab.errors import RegionError

    with pytest.raises(RegionError):
        compare_checkpoints(triple["in"], triple["rl"], cuts="3,2", out_dir=tmp_path / "a")
    with pytest.raises(CompareError, match="device"):
        compare_checkpoints(triple["in"], triple["rl"], device="tpu", out_dir=tmp_path / "b")
    with pytest.raises(CompareError, match="threads"):
        compare_checkpoints(triple["in"], triple["rl"], threads=0, out_dir=tmp_path / "b")
    if not torch.cuda.is_available():
        with pytest.raises(CompareError, match="no CUDA GPU"):
            compare_checkpoints(triple["in"], triple["rl"], device="cuda", out_dir=tmp_path / "c")
    assert not any(tmp_path.iterdir())


# -- resumability ------------------------------------------------------------------------------
class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_and_finished_run_recomputes_nothing(triple: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    threads = torch.get_num_threads()
    seen: list[ProgressEvent] = []

    def stop_after_ten(ev: ProgressEvent) -> None:
        seen.append(ev)
        if ev.index == 10:
            raise Interrupt

    with pytest.raises(Interrupt):
        compare_checkpoints(triple["in"], triple["rl"], base=triple["base"], out_dir=out, progress=stop_after_ten)
    assert torch.get_num_threads() == threads
    assert [p.name for p in out.iterdir()] == [".cache"]  # no table that could look complete
    (cache,) = (out / ".cache").iterdir()
    assert len(cache.read_text().splitlines()) == 10
    with cache.open("a") as fh:
        fh.write('{"canonical": "model.visual.blo')  # a torn line, as a crash mid-write leaves it

    events: list[ProgressEvent] = []
    res = compare_checkpoints(triple["in"], triple["rl"], base=triple["base"], out_dir=out, progress=events.append)
    total = len(res.tensors) // 2
    assert res.computed == total - 10 and sum(e.cached for e in events) == 10
    assert events[-1].index == total and events[-1].numel_done == events[-1].numel_total
    fresh = compare_checkpoints(triple["in"], triple["rl"], base=triple["base"], svd="auto")
    pd.testing.assert_frame_equal(res.tensors, fresh.tensors)
    assert len(cache.read_text().splitlines()) == total
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tensors_computed"] == total - 10 and manifest["tensors_from_cache"] == 10
    assert set(manifest["checkpoints"]) == {"base", "in", "rl"}

    stamp = (out / "tensors.parquet").stat().st_mtime_ns
    again = compare_checkpoints(triple["in"], triple["rl"], base=triple["base"], out_dir=out,
                                progress=lambda ev: pytest.fail("a finished run must not be walked again"))
    assert again.reloaded and again.computed == 0
    assert (out / "tensors.parquet").stat().st_mtime_ns == stamp
    pd.testing.assert_frame_equal(again.layers, res.layers, check_dtype=False)


def test_output_dir_guards(triple: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    compare_checkpoints(triple["in"], triple["rl"], svd="none", out_dir=out, plots=False)
    with pytest.raises(OutputError, match="--overwrite"):
        compare_checkpoints(triple["in"], triple["rl"], svd="exact", out_dir=out, plots=False)
    res = compare_checkpoints(triple["in"], triple["rl"], svd="exact", out_dir=out, plots=False, overwrite=True)
    assert res.tensors["sigma1"].notna().any() and res.computed == len(res.tensors)
    # cuts are aggregation only: a new partition reuses every cached tensor
    res = compare_checkpoints(triple["in"], triple["rl"], svd="exact", out_dir=out, plots=False, overwrite=True,
                              cuts="1,3")
    assert res.computed == 0 and not res.reloaded
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not this comparison.s output"):
        compare_checkpoints(triple["in"], triple["rl"], out_dir=foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("family", ["qwen2_5_vl", "llava", "qwen2"])
def test_real_tiny_models_in_both_layouts(tmp_path: Path, family: str) -> None:
    from frankenlab.testing import models as testing

    a = testing.save_tiny_checkpoint(family, tmp_path / "in", layout="hub", seed=0, with_processor=False)
    b = testing.save_tiny_checkpoint(family, tmp_path / "rl", layout="transformers5", seed=1, with_processor=False,
                                     shards=2)
    res = compare_checkpoints(a, b, svd="auto")
    t = res.tensors
    assert set(t["name"]) == set(testing.checkpoint_state_dict(b))  # RL's on-disk names
    assert (t.loc[t["is_matrix"], "fro"] > 0).all()
    want = {"llm", "early", "mid", "late", "all"} | ({"vision", "projector"} if family != "qwen2" else set())
    assert set(res.regions["region"]) == want
    assert res.layers["layer"].min() == (-4 if family != "qwen2" else 1) and res.layers["layer"].max() == 4
