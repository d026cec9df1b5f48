"""`compare overlap`: Jaccard of changed sets against numpy counts of planted masks, its null, errors, the CLI."""

from __future__ import annotations

import csv
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from frankenlab.cli.app import main
from frankenlab.compare import compare_checkpoints
from frankenlab.compare.overlap import compare_overlap, jaccard_null
from frankenlab.errors import CompareError, OutputError

from . import qwen_config, qwen_shapes, random_weights, write_checkpoint

LAYER = re.compile(r"language_model\.layers\.(\d+)\.")


def bump(w: torch.Tensor, mask: np.ndarray) -> torch.Tensor:
    """w with exactly the entries in `mask` moved to the next bf16 value (every other entry bit-identical)."""
    bits = w.view(torch.int16).clone()
    bits[torch.from_numpy(mask)] += 1
    return bits.view(torch.bfloat16)


def planted_masks(shapes: dict[str, tuple[int, ...]], seed: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Changed sets of two RL runs: identical in LLM layer 1, disjoint in layer 3, independent elsewhere."""
    rng = np.random.default_rng(seed)
    a, b = {}, {}
    for name, shape in shapes.items():
        ma = rng.random(shape) < 0.3
        layer = LAYER.search(name)
        if layer and layer.group(1) == "1":
            mb = ma.copy()
        elif layer and layer.group(1) == "3":
            mb = ~ma & (rng.random(shape) < 0.5)
        else:
            mb = rng.random(shape) < 0.2
        a[name], b[name] = ma, mb
    return a, b


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("overlap")
    shapes = qwen_shapes()
    in_ = random_weights(shapes, seed=0)
    ma, mb = planted_masks(shapes, seed=1)
    ckpt = {"in": write_checkpoint(root / "in", in_, qwen_config()),
            "rl1": write_checkpoint(root / "rl1", {n: bump(w, ma[n]) for n, w in in_.items()}, qwen_config()),
            "rl2": write_checkpoint(root / "rl2", {n: bump(w, mb[n]) for n, w in in_.items()}, qwen_config(),
                                    layout="transformers5")}
    for name in ("rl1", "rl2"):
        compare_checkpoints(ckpt["in"], ckpt[name], svd="none", masks=True, out_dir=root / f"cmp_{name}", plots=False)
    return {"root": root, "ckpt": ckpt, "a": ma, "b": mb}


def test_jaccard_and_null_match_numpy_on_planted_masks(outputs: dict) -> None:  # noqa: ANN001
    root, ma, mb = outputs["root"], outputs["a"], outputs["b"]
    res = compare_overlap(root / "cmp_rl1", root / "cmp_rl2", out_dir=root / "ov")
    per = res.overlap.set_index("canonical")
    matrices = [n for n in ma if ma[n].ndim >= 2]
    assert sorted(per.index) == sorted(matrices)  # 1-D tensors get no mask
    for name in matrices:
        a, b = ma[name], mb[name]
        row = per.loc[name]
        assert (row["n_a"], row["n_b"], row["n_both"]) == (a.sum(), b.sum(), (a & b).sum())
        assert row["p_a"] == pytest.approx(a.mean()) and row["p_b"] == pytest.approx(b.mean())
        assert row["jaccard"] == pytest.approx((a & b).sum() / (a | b).sum())
        assert row["jaccard_null"] == pytest.approx(a.mean() * b.mean() / (a.mean() + b.mean() - a.mean() * b.mean()))
    layers = res.layers.set_index("layer")
    assert layers.loc[2, "jaccard"] == pytest.approx(1.0)  # LLM layer 1 = unified 2: the same entries changed
    assert layers.loc[4, "jaccard"] == 0.0  # layer 3: disjoint
    other = per[per["layer"] == 3]  # independent: close to its null
    assert np.allclose(other["jaccard"], other["jaccard_null"], atol=0.05)
    g = per[per["layer"] == 2]
    assert layers.loc[2, "jaccard_null"] == pytest.approx(
        (g["numel"] * g["p_a"] * g["p_b"]).sum() / (g["numel"] * (g["p_a"] + g["p_b"] - g["p_a"] * g["p_b"])).sum())
    regions = res.regions.set_index("region")
    assert list(regions.index) == ["vision", "projector", "llm", "early", "mid", "late", "all"]
    late = per[per["layer"].isin([3, 4])]
    assert regions.loc["late", "jaccard"] == pytest.approx(
        late["n_both"].sum() / (late["n_a"].sum() + late["n_b"].sum() - late["n_both"].sum()))
    assert res.summary["same_reference"] and res.summary["ratio_to_null"] > 1
    with (root / "ov" / "overlap.csv").open() as fh:
        header = next(csv.reader(fh))
    assert header[:8] == ["name", "layer", "section", "kind", "p_a", "p_b", "jaccard", "jaccard_null"]
    assert (root / "ov" / "plots" / "overlap_layers.png").read_bytes()[:4] == b"\x89PNG"
    assert (root / "ov" / ".done-overlap.json").exists()
    assert jaccard_null(0.0, 0.0) != jaccard_null(0.0, 0.0)  # NaN: nothing changed on either side


def test_in_vs_rl_of_one_comparison(tmp_path: Path) -> None:
    shapes = qwen_shapes()
    base = random_weights(shapes, seed=0)
    m_in, m_rl = planted_masks(shapes, seed=2)
    in_ = {n: bump(w, m_in[n]) for n, w in base.items()}
    rl = {n: bump(w, m_rl[n]) for n, w in in_.items()}
    paths = [write_checkpoint(tmp_path / r, w, qwen_config()) for r, w in (("b", base), ("i", in_), ("r", rl))]
    compare_checkpoints(paths[1], paths[2], base=paths[0], svd="none", masks=True, out_dir=tmp_path / "c",
                        plots=False)
    res = compare_overlap(tmp_path / "c", tmp_path / "c", phase_a="in", phase_b="rl")
    row = res.overlap.set_index("canonical").loc["model.language_model.layers.1.mlp.up_proj.weight"]
    assert row["jaccard"] == pytest.approx(1.0)
    whole = res.regions.set_index("region").loc["all"]
    a = np.concatenate([m_in[n].ravel() for n in shapes if len(shapes[n]) >= 2])
    b = np.concatenate([m_rl[n].ravel() for n in shapes if len(shapes[n]) >= 2])
    assert whole["jaccard"] == pytest.approx((a & b).sum() / (a | b).sum())
    assert res.summary["same_reference"] is False  # ΔIN starts from BASE, ΔRL from IN


def test_overlap_errors_write_nothing(outputs: dict, tmp_path: Path) -> None:  # noqa: ANN001
    root = outputs["root"]
    plain = tmp_path / "plain"
    compare_checkpoints(outputs["ckpt"]["in"], outputs["ckpt"]["rl1"], svd="none", out_dir=plain, plots=False)
    out = tmp_path / "ov"
    cases = [
        ((plain, root / "cmp_rl2"), {}, "no changed-entry masks; rerun that comparison with --masks"),
        ((tmp_path / "nope", root / "cmp_rl2"), {}, "is not a directory"),
        ((root / "cmp_rl1", root / "cmp_rl1"), {}, "same update"),
        ((root / "cmp_rl1", root / "cmp_rl2"), {"phase_a": "in"}, "no phase 'in'"),
    ]
    for args, kw, message in cases:
        with pytest.raises(CompareError, match=message):
            compare_overlap(*args, out_dir=out, **kw)
        assert not out.exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not this overlap's output"):
        compare_overlap(root / "cmp_rl1", root / "cmp_rl2", out_dir=foreign)
    compare_overlap(root / "cmp_rl1", root / "cmp_rl2", out_dir=out, plots=False)
    with pytest.raises(OutputError, match="--overwrite"):
        compare_overlap(root / "cmp_rl1", root / "cmp_rl2", out_dir=out)
    compare_overlap(root / "cmp_rl1", root / "cmp_rl2", out_dir=out, overwrite=True)
    assert (out / "plots" / "overlap_layers.png").exists()
    broken = tmp_path / "broken"
    shutil.copytree(root / "cmp_rl2", broken)  # copies, not the hard links into the cache
    (broken / "masks" / "rl" / "model.language_model.layers.0.mlp.up_proj.weight.bits").unlink()
    (broken / "masks" / "rl" / "model.language_model.layers.0.mlp.up_proj.weight.bits").write_bytes(b"x")
    with pytest.raises(CompareError, match="not .* bytes"):
        compare_overlap(root / "cmp_rl1", broken)


def _run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return int(exc.value.code or 0)


def test_cli_compare_masks_then_overlap(outputs: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    ckpt = outputs["ckpt"]
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    for out, rl in ((out_a, ckpt["rl1"]), (out_b, ckpt["rl2"])):
        assert _run(["compare", "--in", str(ckpt["in"]), "--rl", str(rl), "--out", str(out), "--svd", "exact",
                     "--top-k-subspace", "2", "--sparsity-tols", "0,1e-3", "--masks", "--no-plots", "--quiet"]) == 0
    t = pd.read_csv(out_a / "tensors.csv")
    assert set(t.loc[t["is_matrix"], "subspace_k"]) == {2} and (t.loc[t["is_matrix"], "update_rank"] > 0).all()
    assert set(pd.read_csv(out_a / "sparsity.csv")["tol"]) == {0.0, 1e-3}
    assert (out_a / "masks" / "index.json").exists()
    ov = tmp_path / "ov"
    assert _run(["compare", "overlap", str(out_a), str(out_b), "--out", str(ov)]) == 0
    err = capsys.readouterr().err
    assert "Changed-entry overlap" in err and "late" in err
    per = pd.read_csv(ov / "overlap.csv")
    assert list(per.columns[:8]) == ["name", "layer", "section", "kind", "p_a", "p_b", "jaccard", "jaccard_null"]
    assert not per["jaccard"].isna().any() and (ov / "overlap_layers.csv").exists()
    assert _run(["compare", "overlap", str(out_a), str(out_b), "--out", str(tmp_path / "x"), "--phase-a", "ΔRL"]) == 2
    assert "is not a phase" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert _run(["compare", "--in", str(ckpt["in"])]) == 2
    assert "needs --rl, --out" in capsys.readouterr().err
    assert math.isfinite(pd.read_csv(ov / "overlap_regions.csv").set_index("region").loc["all", "jaccard"])
