from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from frankenlab.checkpoint import Checkpoint, read_safetensors_header
from frankenlab.errors import CheckpointError, FrankenlabError
from tests._helpers import write_text_ckpt


def test_reads_names_shapes_dtypes_from_headers(tmp_path, text_tensors):
    root = write_text_ckpt(tmp_path / "m", text_tensors)
    with Checkpoint(root) as c:
        assert set(c.names()) == set(text_tensors)
        for name, t in text_tensors.items():
            meta = c.meta(name)
            assert meta.shape == tuple(t.shape)
            assert meta.dtype == "F32"
            assert meta.nbytes == t.numel() * 4
        name = "model.layers.1.mlp.up_proj.weight"
        assert torch.equal(c.read(name), text_tensors[name])
        assert c.read("model.norm.weight", dtype=torch.bfloat16).dtype == torch.bfloat16
        released = c.read(name, release=True)
        assert torch.equal(released, text_tensors[name]) and not c._handles  # shard closed, copy kept
        assert torch.equal(c.read(name), released)  # reopens on demand


def test_sharded_checkpoint_with_index(tmp_path, text_tensors):
    root = tmp_path / "sharded"
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2}))
    names = sorted(text_tensors)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for fname, ns in halves.items():
        save_file({n: text_tensors[n] for n in ns}, str(root / fname))
        weight_map.update({n: fname for n in ns})
    (root / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with Checkpoint(root) as c:
        assert len(c.index.files) == 2
        for n in names:
            assert c.meta(n).file == weight_map[n]
            assert torch.equal(c.read(n), text_tensors[n])


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        Checkpoint(tmp_path / "nope")


def test_hub_id_offline_names_the_id(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(CheckpointError, match=r"frankenlab-test/definitely-absent.*(offline|OFFLINE)"):
        Checkpoint("frankenlab-test/definitely-absent")


def test_no_config(tmp_path, text_tensors):
    root = write_text_ckpt(tmp_path / "m", text_tensors)
    (root / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        Checkpoint(root)


def test_no_safetensors(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no .safetensors"):
        Checkpoint(tmp_path)


def test_bin_only_is_refused_without_unpickling(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    # A file that would run code if unpickled: it must never be opened as a pickle.
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not-a-real-pickle")
    with pytest.raises(CheckpointError, match="pickled"):
        Checkpoint(tmp_path)


def test_index_pointing_at_missing_shard(tmp_path, text_tensors):
    root = write_text_ckpt(tmp_path / "m", text_tensors)
    (root / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(CheckpointError, match="missing shard.*model-00002-of-00002"):
        Checkpoint(root)


def test_truncated_file(tmp_path, text_tensors):
    root = write_text_ckpt(tmp_path / "m", text_tensors)
    f = root / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="truncated"):
        Checkpoint(root)


def test_corrupt_header(tmp_path, text_tensors):
    root = write_text_ckpt(tmp_path / "m", text_tensors)
    f = root / "model.safetensors"
    data = bytearray(f.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    data[8:12] = b"\xff\xfe{["
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="not valid JSON"):
        Checkpoint(root)
    f.write_bytes(struct.pack("<Q", 10**12) + bytes(data[8:]))
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_safetensors_header(f)


def test_unknown_tensor_name_error(tmp_path, text_tensors):
    root = write_text_ckpt(tmp_path / "m", text_tensors)
    with Checkpoint(root) as c, pytest.raises(CheckpointError, match="no tensor named"):
        c.read("model.layers.9.mlp.up_proj.weight")


def test_errors_are_one_family():
    assert issubclass(CheckpointError, FrankenlabError)


def test_fingerprint_stable_and_content_sensitive(tmp_path, text_tensors):
    a = write_text_ckpt(tmp_path / "a", text_tensors)
    b = write_text_ckpt(tmp_path / "b", text_tensors)
    changed = dict(text_tensors)
    changed["model.layers.1.mlp.down_proj.weight"] = text_tensors["model.layers.1.mlp.down_proj.weight"] + 1e-3
    c = write_text_ckpt(tmp_path / "c", changed)
    fa, fb, fc = (Checkpoint(p).fingerprint for p in (a, b, c))
    assert fa == fb  # same content in another directory
    assert fa != fc  # same headers and sizes, different weights
    assert Checkpoint(a).full_hash() != Checkpoint(c).full_hash()


def test_reading_one_tensor_does_not_load_the_others(tmp_path):
    """Peak RSS while reading one 8 MB tensor of a ~400 MB checkpoint stays near that tensor."""
    root = tmp_path / "big"
    root.mkdir()
    (root / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 1}))
    big = {f"model.layers.0.mlp.{m}_proj.weight": torch.zeros(4096, 8192, dtype=torch.float32)
           for m in ("gate", "up")}
    big["model.layers.0.mlp.down_proj.weight"] = torch.zeros(1024, 2048)  # 8 MB
    save_file(big, str(root / "model.safetensors"))
    del big
    code = textwrap.dedent(f"""
        import resource, torch
        from frankenlab.checkpoint import Checkpoint
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with Checkpoint({str(root)!r}) as c:
            t = c.read("model.layers.0.mlp.down_proj.weight")
            s = float(t.sum())
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) * 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    grown = int(out.stdout.strip().splitlines()[-1])
    file_size = (root / "model.safetensors").stat().st_size
    assert file_size > 250e6
    assert grown < 40e6, f"RSS grew by {grown / 1e6:.1f} MB reading an 8 MB tensor of a {file_size / 1e6:.0f} MB file"


def test_hub_and_transformers5_names_map_to_one_canonical(tmp_path):
    import frankenlab.arch.registry as reg

    cfg = {"model_type": "qwen2_5_vl", "text_config": {"num_hidden_layers": 2}, "vision_config": {"depth": 2}}
    adapter = reg.adapter_for(cfg)
    pairs = [
        ("model.layers.1.mlp.up_proj.weight", "model.language_model.layers.1.mlp.up_proj.weight"),
        ("visual.blocks.0.attn.qkv.weight", "model.visual.blocks.0.attn.qkv.weight"),
        ("model.embed_tokens.weight", "model.language_model.embed_tokens.weight"),
        ("visual.merger.mlp.0.weight", "model.visual.merger.mlp.0.weight"),
        ("lm_head.weight", "lm_head.weight"),
    ]
    for hub, t5 in pairs:
        assert adapter.to_canonical(hub) == t5
        assert adapter.to_canonical(t5) == t5
        assert adapter.to_layout(t5, "hub") == hub
    assert Path  # keep import used
