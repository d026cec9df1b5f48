from __future__ import annotations

import errno
import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from frankenlab.errors import OutputError
from frankenlab.io import shards
from frankenlab.io.shards import ShardWriter, TensorSpec, st_dtype, torch_dtype


@pytest.fixture
def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "a.bf16": torch.randn(33, 7, generator=g).bfloat16(),  # odd byte count before wider dtypes
        "b.f32": torch.randn(40, generator=g),
        "c.scalar": torch.tensor(3.5),
        "d.empty": torch.zeros(0, 4),
        "e.i64": torch.arange(10),
        "f.f16": torch.randn(5, 5, generator=g).half(),
    }


def _spec(name: str, t: torch.Tensor) -> TensorSpec:
    return TensorSpec(name, tuple(t.shape), st_dtype(t.dtype))


def _read_all(root) -> dict[str, torch.Tensor]:
    index = json.loads((root / "model.safetensors.index.json").read_text())
    out: dict[str, torch.Tensor] = {}
    for f in sorted(set(index["weight_map"].values())):
        part = load_file(str(root / f))
        assert {index["weight_map"][k] for k in part} == {f}
        out.update(part)
    assert set(out) == set(index["weight_map"])
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in out.values())
    return out


def _assert_equal(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), k


def test_planned_mode_any_order_chunks_and_byte_copies(tmp_path, tensors):
    src = tmp_path / "src.safetensors"
    save_file({"x": tensors["a.bf16"]}, str(src))
    with safe_open(str(src), "pt") as f:
        assert f.keys() == ["x"]
    raw = src.read_bytes()
    data_start = 8 + int.from_bytes(raw[:8], "little")
    specs = [_spec(k, v) for k, v in tensors.items()]
    with ShardWriter(tmp_path / "out", specs, max_shard_bytes=300, metadata={"note": "hi"}) as w:
        w.write("f.f16", tensors["f.f16"])  # out of order on purpose
        w.write_chunks("b.f32", [tensors["b.f32"][:13], tensors["b.f32"][13:]])
        w.copy_range("a.bf16", src, data_start, tensors["a.bf16"].numel() * 2)
        for k in ("c.scalar", "d.empty", "e.i64"):
            w.write(k, tensors[k])
    got = _read_all(tmp_path / "out")
    _assert_equal(got, tensors)
    files = sorted(p.name for p in (tmp_path / "out").glob("*.safetensors"))
    assert len(files) > 1 and files == w.files
    for f in files:
        with safe_open(str(tmp_path / "out" / f), "pt") as h:
            assert h.metadata() == {"format": "pt", "note": "hi"}
        raw = (tmp_path / "out" / f).read_bytes()
        n = int.from_bytes(raw[:8], "little")
        assert n % 8 == 0  # data starts 8-byte aligned ...
        for name, entry in json.loads(raw[8:8 + n]).items():
            if name != "__metadata__":  # ... and every tensor at a multiple of its element size
                item = torch.empty((), dtype=torch_dtype(entry["dtype"])).element_size()
                assert entry["data_offsets"][0] % item == 0, name


def test_shard_budget_is_respected(tmp_path):
    ts = {f"t{i}": torch.full((25,), float(i)) for i in range(10)}  # 100 bytes each
    with ShardWriter(tmp_path / "p", [_spec(k, v) for k, v in ts.items()], max_shard_bytes=250) as w:
        for k, v in ts.items():
            w.write(k, v)
    assert len(w.files) == 5  # two tensors per 250-byte shard
    _assert_equal(_read_all(tmp_path / "p"), ts)
    with ShardWriter(tmp_path / "b", max_shard_bytes=250) as wb:
        for k, v in ts.items():
            wb.write(k, v)
    assert wb.files == w.files
    _assert_equal(_read_all(tmp_path / "b"), ts)
    assert sorted(os.listdir(tmp_path / "b")) == sorted([*w.files, "model.safetensors.index.json"])


def test_buffered_mode_oversized_tensor_gets_its_own_shard(tmp_path, tensors):
    with ShardWriter(tmp_path / "b", max_shard_bytes=64) as w:
        for k, v in tensors.items():
            w.write(k, v)
    _assert_equal(_read_all(tmp_path / "b"), tensors)


def test_misuse_is_refused(tmp_path, tensors):
    specs = [_spec("b.f32", tensors["b.f32"]), _spec("e.i64", tensors["e.i64"])]
    w = ShardWriter(tmp_path / "x", specs)
    with pytest.raises(OutputError, match="not declared"):
        w.write("nope", tensors["b.f32"])
    with pytest.raises(OutputError, match="declared F32 but a chunk is torch.float16"):
        w.write("b.f32", tensors["b.f32"].half())
    with pytest.raises(OutputError, match="wrote 52 bytes, its declared shape needs 160"):
        w.write_chunks("b.f32", [tensors["b.f32"][:13]])
    w2 = ShardWriter(tmp_path / "y", specs)
    w2.write("b.f32", tensors["b.f32"])
    with pytest.raises(OutputError, match="written twice"):
        w2.write("b.f32", tensors["b.f32"])
    with pytest.raises(OutputError, match="never written.*e.i64"):
        w2.finalize()
    with pytest.raises(OutputError, match="listed twice"):
        ShardWriter(tmp_path / "z", specs + specs[:1])
    with pytest.raises(OutputError, match="unknown dtype"):
        st_dtype("int7")
    assert st_dtype("bf16") == "BF16" and st_dtype(torch.float16) == "F16" and st_dtype("torch.float32") == "F32"


def test_disk_full_is_named(tmp_path, tensors, monkeypatch):
    def no_space(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    w = ShardWriter(tmp_path / "x", [_spec("b.f32", tensors["b.f32"])])
    monkeypatch.setattr(shards.os, "pwrite", no_space)
    with pytest.raises(OutputError, match="disk full while writing model-00001-of-00001.safetensors"):
        w.write("b.f32", tensors["b.f32"])


def test_free_space_checked_before_writing(tmp_path, tensors, monkeypatch):
    monkeypatch.setattr(shards, "_free_bytes", lambda _p: 10)
    with pytest.raises(OutputError, match="not enough disk space.*needs"):
        ShardWriter(tmp_path / "x", [_spec("b.f32", tensors["b.f32"])])
    assert list((tmp_path / "x").iterdir()) == []


def test_copy_falls_back_where_the_kernel_cannot(tmp_path, tensors, monkeypatch):
    def unsupported(*_a, **_k):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(shards.os, "copy_file_range", unsupported)
    monkeypatch.setattr(shards, "_COPY_CHUNK", 7)  # many small reads
    src = tmp_path / "src.bin"
    src.write_bytes(b"xx" + tensors["b.f32"].numpy().tobytes() + b"yy")
    with ShardWriter(tmp_path / "o", [_spec("b.f32", tensors["b.f32"])]) as w:
        w.copy_range("b.f32", src, 2, 160)
    _assert_equal(_read_all(tmp_path / "o"), {"b.f32": tensors["b.f32"]})


@pytest.mark.parametrize(("text", "expected"), [("2GB", 2 * 10**9), ("2GiB", 2 * 2**30), ("500MB", 500 * 10**6),
                                                ("1.5G", 1_500_000_000), ("4096", 4096), (" 3 kib ", 3 * 1024)])
def test_parse_size(text, expected):
    from frankenlab.io.shards import parse_size

    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "2 GBs", "-1GB", "lots"])
def test_parse_size_refuses_what_it_cannot_read(bad):
    from frankenlab.errors import OutputError
    from frankenlab.io.shards import parse_size

    with pytest.raises(OutputError, match="expected a size"):
        parse_size(bad)
