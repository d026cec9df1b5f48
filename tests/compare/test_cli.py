"""`frankenlab compare` end to end: the files it promises, their columns, and its errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from frankenlab.cli.app import main

from . import perturb, qwen_config, qwen_shapes, random_weights, write_checkpoint

TENSOR_COLS = ["name", "section", "layer", "kind", "phase", "fro", "rel_fro", "max_abs", "unchanged_frac", "sigma1",
               "stable_rank", "effective_rank"]
AGG_COLS = ["fro_sum", "fro_mean", "rel_fro_mean", "stable_rank_mean", "effective_rank_mean"]


def run(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return int(exc.value.code or 0)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    base = random_weights(qwen_shapes(), seed=0)
    in_ = perturb(base, lambda n: "layers.0." in n, seed=1)
    rl = perturb(in_, lambda n: "layers.3." in n or "layers.0." in n, seed=2)
    return {"base": write_checkpoint(root / "base", base, qwen_config()),
            "in": write_checkpoint(root / "in", in_, qwen_config()),
            "rl": write_checkpoint(root / "rl", rl, qwen_config(), layout="transformers5", shards=2)}


def test_cli_writes_every_promised_file(ckpts: dict[str, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = run(["compare", "--in", str(ckpts["in"]), "--rl", str(ckpts["rl"]), "--base", str(ckpts["base"]),
                "--svd", "exact", "--cuts", "1,3", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    for stem in ("tensors", "layers", "regions", "kinds", "spectra", "region_spectra", "sparsity"):
        assert (out / f"{stem}.csv").stat().st_size > 0 and (out / f"{stem}.parquet").stat().st_size > 0
    with (out / "tensors.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:len(TENSOR_COLS)] == TENSOR_COLS
    assert {r["phase"] for r in rows} == {"in", "rl"}
    head = next(r for r in rows if r["name"] == "lm_head.weight")
    assert head["layer"] == ""  # empty for non-layer tensors
    assert any(r["name"] == "model.language_model.layers.3.mlp.up_proj.weight" and r["layer"] == "4" for r in rows)
    layers = pd.read_csv(out / "layers.csv")
    assert list(layers.columns[:8]) == ["layer", "section", "phase", *AGG_COLS]
    energy = layers.set_index(["phase", "layer"])["fro_sum"]
    assert energy[energy > 0].index.tolist() == [("in", 1), ("rl", 1), ("rl", 4)]
    regions = pd.read_csv(out / "regions.csv")
    assert list(regions.columns[:7]) == ["region", "phase", *AGG_COLS]
    assert set(regions.loc[regions["fro_sum"] > 0, "region"]) == {"llm", "early", "late", "all"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["phases"] == ["in", "rl"] and summary["cuts"] == [1, 3]
    assert summary["rel_fro_reference"]["rl"].endswith("W_ref = IN")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "compare" and manifest["args"]["svd"] == "exact"
    layouts = {role: c["layout"] for role, c in manifest["checkpoints"].items()}
    assert layouts == {"base": "hub", "in": "hub", "rl": "transformers5"}
    assert {"torch", "python"} <= set(manifest["versions"]) and manifest["time_utc"]
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert pngs == ["cosine_layers.png", "energy_layers.png", "geometry_layers.png", "heatmap_fro_in.png",
                    "heatmap_fro_rl.png", "ranks_layers.png", "rel_energy_layers.png", "sparsity_layers.png",
                    "spectra_regions.png"]
    assert all((out / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert not [p for p in out.iterdir() if p.name.startswith(".staging")]
    assert "Update energy per region" in capsys.readouterr().err

    code = run(["compare", "--in", str(ckpts["in"]), "--rl", str(ckpts["rl"]), "--base", str(ckpts["base"]),
                "--svd", "exact", "--cuts", "1,3", "--out", str(out)])
    assert code == 0 and "read back (nothing computed)" in capsys.readouterr().err


def test_cli_two_checkpoints_no_spectra(ckpts: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run(["compare", "--in", str(ckpts["in"]), "--rl", str(ckpts["rl"]), "--svd", "none", "--no-plots",
                "--quiet", "--out", str(out)]) == 0
    t = pd.read_csv(out / "tensors.csv")
    assert set(t["phase"]) == {"rl"} and t["sigma1"].isna().all() and t["cos_in_rl"].isna().all()
    assert not (out / "plots").exists()


def test_cli_error_is_one_line_exit_2_and_writes_nothing(ckpts: dict[str, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    w = random_weights(qwen_shapes(), seed=0) | {"lm_head.weight": torch.zeros(41, 16, dtype=torch.bfloat16)}
    other = write_checkpoint(tmp_path / "other", w, qwen_config())
    out = tmp_path / "out"
    code = run(["compare", "--in", str(ckpts["in"]), "--rl", str(other), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: shapes differ") and err.count("\n") == 1
    assert not out.exists()
    assert run(["compare", "--in", str(ckpts["in"]), "--rl", str(ckpts["rl"]), "--svd", "fast",
                "--out", str(out)]) == 2
    assert "svd mode 'fast' is unknown" in capsys.readouterr().err and not out.exists()
