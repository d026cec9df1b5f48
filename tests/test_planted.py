"""Planted-truth pairs on tiny checkpoints: null is a byte copy, noise is exactly the promised relative noise.

Expected values are computed independently with numpy on the safetensors files (names picked by the hub
layout's own regex, not by frankenlab's adapters).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from frankenlab import plant_noise, plant_null
from frankenlab.checkpoint import Checkpoint
from frankenlab.cli.app import main
from frankenlab.errors import CheckpointError, OutputError, RegionError
from frankenlab.planted import (
    PLANTED_FILE,
    PlantError,
    freeze_outside,
    read_planted,
    record_confined,
    verify_confined,
)
from frankenlab.testing import build_tiny_model, save_tiny_checkpoint

N_LLM = 6  # thirds: early 0-1, mid 2-3, late 4-5
DECODER = re.compile(r"^model\.layers\.(\d+)\.")  # Qwen2.5-VL hub layout: LLM decoder layers


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(str(f), "pt") as fh:
            out.update({k: fh.get_tensor(k) for k in fh.keys()})
    return out


def _f64(t: torch.Tensor) -> np.ndarray:
    return t.to(torch.float64).numpy()


def _rel(before: torch.Tensor, after: torch.Tensor) -> float:
    a, b = _f64(before), _f64(after)
    return float(np.linalg.norm(b - a) / np.linalg.norm(a))


def _bits(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).numpy().tobytes()


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    return save_tiny_checkpoint("qwen2_5_vl", tmp_path_factory.mktemp("src") / "in", seed=0, n_llm_layers=N_LLM,
                                n_vision_blocks=2)


@pytest.fixture(scope="module")
def src_bf16(tmp_path_factory) -> Path:
    return save_tiny_checkpoint("qwen2_5_vl", tmp_path_factory.mktemp("src16") / "in", seed=0, dtype=torch.bfloat16,
                                n_llm_layers=N_LLM, n_vision_blocks=2, shards=3)


@pytest.fixture(scope="module")
def noise(src, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("noise") / "noise"
    return out, plant_noise(src, out, scale=1e-3, seed=0)


def test_noise_is_relative_and_only_on_decoder_matrices(src, noise):
    out, record = noise
    a, b = _tensors(src), _tensors(out)
    assert a.keys() == b.keys()
    targets = {n for n, t in a.items() if DECODER.match(n) and t.ndim == 2}
    assert len(targets) == N_LLM * 7  # q k v o gate up down
    z = []
    for name, before in a.items():
        after = b[name]
        assert after.dtype == before.dtype and after.shape == before.shape, name
        if name in targets:
            rel = _rel(before, after)
            assert rel == pytest.approx(1e-3, rel=0.06), name  # ‖N‖_F/√(mn) = 1 ± 1/√(2mn)
            rms = np.linalg.norm(_f64(before)) / math.sqrt(before.numel())
            z.append(((_f64(after) - _f64(before)) / (1e-3 * rms)).ravel())
        else:
            assert _bits(after) == _bits(before), name  # vision, projector, embeddings, norms, biases, lm_head
    z = np.concatenate(z)
    assert abs(z.mean()) < 0.02 and z.std() == pytest.approx(1.0, abs=0.02)  # standard normal, in units of ε·rms
    # the record says what changed, measured on the stored values
    with Checkpoint(src) as c:
        assert set(record.changed) == {c.canonical(n) for n in targets}
        for name in targets:
            assert record.relative_change[c.canonical(name)] == pytest.approx(_rel(a[name], b[name]), rel=1e-4)
    assert record.n_unchanged == len(a) - len(targets)
    d = read_planted(out)
    assert d["kind"] == "noise" and d["scale"] == 1e-3 and d["seed"] == 0 and d["regions"] == ["llm"]
    assert d["n_changed"] == len(targets) and d["source"] == str(src.resolve())
    with Checkpoint(src) as c_in, Checkpoint(out) as c_out:
        assert d["source_fingerprint"] == c_in.fingerprint and d["fingerprint"] == c_out.fingerprint
    # every other file is a byte copy
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            assert (out / f.name).read_bytes() == f.read_bytes(), f.name


def test_noise_checkpoint_loads_and_barely_moves_the_model(src, noise):
    from transformers import AutoModelForImageTextToText

    from frankenlab.compat import load_processor

    out, _ = noise
    m_in = AutoModelForImageTextToText.from_pretrained(src, local_files_only=True)
    m_out = AutoModelForImageTextToText.from_pretrained(out, local_files_only=True)
    assert load_processor(out).tokenizer.vocab_size == load_processor(src).tokenizer.vocab_size
    ids = torch.arange(3, 40).unsqueeze(0)
    with torch.no_grad():
        la, lb = m_in(input_ids=ids).logits, m_out(input_ids=ids).logits
    assert not torch.equal(la, lb)
    assert float((lb - la).norm() / la.norm()) < 0.05


def test_null_is_a_byte_copy(src, tmp_path):
    out = tmp_path / "null"
    record = plant_null(src, out)
    files = {p.name for p in out.iterdir()}
    assert files == {p.name for p in src.iterdir()} | {PLANTED_FILE}
    for f in src.iterdir():
        assert (out / f.name).read_bytes() == f.read_bytes(), f.name
    d = json.loads((out / PLANTED_FILE).read_text())
    assert d["kind"] == "null" and d["n_changed"] == 0 and d["regions"] == []
    assert record.fingerprint == record.source_fingerprint
    assert verify_confined(src, out, "late").inside_changed == []


def test_seeded_and_layout_independent(src, noise, tmp_path):
    out, _ = noise
    again = plant_noise(src, tmp_path / "again", scale=1e-3, seed=0)
    other = plant_noise(src, tmp_path / "other", scale=1e-3, seed=1)
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    assert again.relative_change == read_planted(out)["relative_change"]
    a, b = _tensors(out), _tensors(tmp_path / "other")
    assert other.changed == again.changed
    assert all(not torch.equal(a[n], b[n]) for n in a if DECODER.match(n) and a[n].ndim == 2)
    # the noise of a matrix depends on (seed, canonical name) only: the transformers-5 layout gets the same
    t5 = save_tiny_checkpoint("qwen2_5_vl", tmp_path / "t5", layout="transformers5", seed=0, n_llm_layers=N_LLM,
                              n_vision_blocks=2)
    plant_noise(t5, tmp_path / "t5-noise", scale=1e-3, seed=0)
    with Checkpoint(out) as hub, Checkpoint(tmp_path / "t5-noise") as c5:
        for name in again.changed:
            assert torch.equal(hub.read(name), c5.read(name)), name


def test_bf16_sharded_records_the_realised_change(src_bf16, tmp_path):
    out = tmp_path / "noise16"
    record = plant_noise(src_bf16, out, scale=1e-2, seed=2)
    assert sorted(p.name for p in out.glob("*.safetensors")) == sorted(p.name for p in src_bf16.glob("*.safetensors"))
    assert (out / "model.safetensors.index.json").read_bytes() == \
        (src_bf16 / "model.safetensors.index.json").read_bytes()
    a, b = _tensors(src_bf16), _tensors(out)
    with Checkpoint(src_bf16) as c:
        for name, before in a.items():
            assert b[name].dtype == torch.bfloat16 or b[name].dtype == before.dtype
            if DECODER.match(name) and before.ndim == 2:
                rel = _rel(before, b[name])
                assert record.relative_change[c.canonical(name)] == pytest.approx(rel, rel=1e-4)
                assert rel == pytest.approx(1e-2, rel=0.1)  # above bf16's spacing: rounding barely matters
            else:
                assert _bits(b[name]) == _bits(before), name
    assert record.extra["dtypes"] == ["BF16"]


def test_region_and_cuts_select_blocks(src, tmp_path):
    record = plant_noise(src, tmp_path / "late", region="late")
    a, b = _tensors(src), _tensors(tmp_path / "late")
    for name in a:
        m = DECODER.match(name)
        changed = not torch.equal(a[name], b[name])
        assert changed == bool(m and int(m.group(1)) >= 4 and a[name].ndim == 2), name
    assert record.regions == ("late",) and record.region_spans[0]["lo"] == 4
    check = record_confined(src, tmp_path / "late", "late")
    assert set(check.changed) == set(record.changed) and check.kind == "trained"
    assert check.relative_change == pytest.approx(record.relative_change, rel=1e-6)
    with pytest.raises(PlantError, match="not confined"):
        record_confined(src, tmp_path / "late", "early")
    plant_noise(src, tmp_path / "cut", region="part0", cuts="1")  # two parts: part0 = layer 0
    b = _tensors(tmp_path / "cut")
    assert {int(DECODER.match(n).group(1)) for n in a if DECODER.match(n) and not torch.equal(a[n], b[n])} == {0}
    vis = plant_noise(src, tmp_path / "vision", region="vision,projector")
    assert vis.changed and all(".visual." in n for n in vis.changed)


def test_cli(src, tmp_path, capsys):
    out = tmp_path / "cli"
    with pytest.raises(SystemExit) as exc:
        main(["plant", "noise", str(src), str(out), "--scale", "2e-3", "--seed", "3", "--region", "mid"])
    assert exc.value.code == 0
    d = read_planted(out)
    assert (d["scale"], d["seed"], d["regions"]) == (2e-3, 3, ["mid"])
    assert d["relative_change_summary"]["median"] == pytest.approx(2e-3, rel=0.05)
    assert "bit-identical" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["plant", "null", str(src), str(tmp_path / "null"), "--json"])
    assert exc.value.code == 0 and json.loads(capsys.readouterr().out)["kind"] == "null"
    with pytest.raises(SystemExit) as exc:
        main(["plant", "noise", str(src), str(tmp_path / "bad"), "--scale", "-1"])
    assert exc.value.code == 2 and "positive" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("scale", [0.0, -1e-3, float("nan"), float("inf")])
def test_bad_scale(src, tmp_path, scale):
    with pytest.raises(PlantError, match="positive finite"):
        plant_noise(src, tmp_path / "out", scale=scale)
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs_leave_nothing(src, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        plant_null(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(RegionError, match="unknown region"):
        plant_noise(src, tmp_path / "out", region="latte")
    with pytest.raises(RegionError, match="out of range"):
        plant_noise(src, tmp_path / "out", region="llm:4-9")
    assert list(tmp_path.iterdir()) == []
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    for call in (lambda: plant_null(src, busy), lambda: plant_noise(src, busy)):
        with pytest.raises(OutputError, match="not empty"):
            call()
    assert [p.name for p in busy.iterdir()] == ["keep.txt"] and (busy / "keep.txt").read_text() == "mine"
    with pytest.raises(OutputError, match="overlaps"):
        plant_null(src, src / "nested")
    plant_null(src, busy, overwrite=True)  # asked for: replaced
    assert (busy / PLANTED_FILE).exists() and not (busy / "keep.txt").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    plant_noise(src, empty)  # an empty directory is fine
    assert (empty / "model.safetensors").exists()
    assert _leftovers(tmp_path) == [] and _leftovers(src.parent) == []


def test_failure_midway_leaves_nothing(src, tmp_path, monkeypatch):
    import frankenlab.planted as planted

    calls = []

    def boom(weight, scale, seed):
        calls.append(seed)
        if len(calls) == 5:
            raise RuntimeError("disk on fire")
        return weight

    monkeypatch.setattr(planted, "noised", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        plant_noise(src, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_freeze_outside_leaves_only_the_region_trainable():
    model = build_tiny_model("qwen2_5_vl", n_llm_layers=N_LLM, n_vision_blocks=2)
    frozen = set(freeze_outside(model, "late"))
    for name, p in model.named_parameters():
        late = re.search(r"language_model\.layers\.([45])\.", name) is not None
        assert p.requires_grad == late and (name in frozen) == (not late), name
    assert any("embed_tokens" in n for n in frozen) and "lm_head.weight" in frozen
