"""The block stream: pass 1 from direct reads equals pass 1 from the memory map, bit for bit."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from frankenlab.checkpoint import Checkpoint
from frankenlab.checkpoint.direct import ByteRange
from frankenlab.compare import compare_checkpoints, fused
from frankenlab.compare.blocks import BlockStream, StreamedTensor
from frankenlab.compare.metrics import SpectrumSettings
from frankenlab.compare.stream import direct_mode, plan_comparison, streamable
from frankenlab.errors import CheckpointError, CompareError

from . import perturb, qwen_config, qwen_shapes, random_weights, write_checkpoint

pytestmark = pytest.mark.skipif(not fused.available(), reason="numba is not installed (pip install 'frankenlab[fast]')")
CHANGED = re.compile(r"language_model\.layers\.[12]\.")
TOLS = (0.0, 1e-8, 1e-6, 1e-4)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("blocks")
    in_ = random_weights(qwen_shapes(), seed=5)
    rl = perturb(in_, lambda n: bool(CHANGED.search(n)), seed=6)
    rl = {k: (v.float() if "mlp" in k else v) for k, v in rl.items()}  # mixed BF16 / F32 storage
    return {"in": write_checkpoint(root / "in", in_, qwen_config(), shards=2),
            "rl": write_checkpoint(root / "rl", rl, qwen_config())}


def _bits(t: torch.Tensor) -> tuple[np.ndarray, int]:
    return fused._bits(t)


@pytest.mark.parametrize("blocks", [1, 2, 5])
def test_accumulated_blocks_equal_one_call_bit_for_bit(blocks: int) -> None:
    g = torch.Generator().manual_seed(blocks)
    n = 4 * fused.CHUNK + 123
    before = torch.randn(n, generator=g).to(torch.bfloat16)
    after = (before.float() + torch.randn(n, generator=g) * 1e-3 * (torch.rand(n, generator=g) < 0.3)).bfloat16()
    whole = fused.fused_stats(after, before, TOLS)
    acc = fused.FusedAccumulator(TOLS)
    cuts = [0, *sorted({min(n, c * fused.CHUNK) for c in range(1, 5)})[: blocks - 1], n]
    for lo, hi in zip(cuts, cuts[1:], strict=False):
        acc.add(*_bits(after[lo:hi]), *_bits(before[lo:hi]))
    assert acc.result() == whole  # a dataclass: every float equal, not approximately


def test_a_ragged_block_must_be_the_last() -> None:
    x = torch.zeros(fused.CHUNK + 1, dtype=torch.bfloat16)
    acc = fused.FusedAccumulator(TOLS)
    acc.add(*_bits(x), *_bits(x))
    with pytest.raises(ValueError, match="last block"):
        acc.add(*_bits(x), *_bits(x))


def _items(ckpts: dict[str, Checkpoint]) -> list[StreamedTensor]:
    plan = plan_comparison(ckpts)
    items = [streamable(tp, ckpts, SpectrumSettings(svd="none"), torch.device("cpu"), None, "1") for tp in plan.tensors]
    return [i for i in items if i is not None]


def test_blocks_carry_each_tensors_stored_bits_in_walk_order(pair: dict[str, Path]) -> None:
    with Checkpoint(pair["in"]) as c_in, Checkpoint(pair["rl"]) as c_rl:
        ckpts = {"in": c_in, "rl": c_rl}
        items = _items(ckpts)
        assert len(items) == len(plan_comparison(ckpts).tensors)  # svd none, BF16/F32: every tensor streams
        stream = BlockStream(items, block_entries=fused.CHUNK, depth=2)  # several blocks per tensor
        try:
            for item in items:
                got = {r: [] for r in ("in", "rl")}
                for block in stream.blocks(item.canonical):
                    for role, (bits, _) in block.items():
                        got[role].append(bits.copy())
                for role, c in ckpts.items():
                    want = c.read(c.disk_name(item.canonical)).reshape(-1)
                    ints = {torch.bfloat16: torch.int16, torch.float32: torch.int32}[want.dtype]
                    want_bits = want.view(ints).numpy().view(np.uint16 if ints == torch.int16 else np.uint32)
                    np.testing.assert_array_equal(np.concatenate(got[role]), want_bits)
        finally:
            stream.close()


def test_out_of_order_requests_and_read_errors_reach_the_consumer(pair: dict[str, Path], tmp_path: Path) -> None:
    with Checkpoint(pair["in"]) as c_in, Checkpoint(pair["rl"]) as c_rl:
        items = _items({"in": c_in, "rl": c_rl})
    stream = BlockStream(items[:3])
    try:
        with pytest.raises(CompareError, match="expected"):
            next(stream.blocks(items[1].canonical))
    finally:
        stream.close()
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\0" * 64)
    cut = (ByteRange(short, 0, 2000), "BF16")  # a header promising 2000 bytes of a 64-byte file
    broken = StreamedTensor("x", 1000, {"in": cut, "rl": cut})
    stream = BlockStream([broken])
    try:
        with pytest.raises(CheckpointError, match="end of file"):
            list(stream.blocks("x"))
    finally:
        stream.close()


def test_closing_mid_stream_does_not_hang(pair: dict[str, Path]) -> None:
    with Checkpoint(pair["in"]) as c_in, Checkpoint(pair["rl"]) as c_rl:
        items = _items({"in": c_in, "rl": c_rl})
    stream = BlockStream(items, block_entries=fused.CHUNK, depth=1)
    next(stream.blocks(items[0].canonical))
    stream.close()
    assert not stream._thread.is_alive()


@pytest.mark.parametrize("svd", ["none", "exact"])
def test_results_identical_streamed_or_mapped(pair: dict[str, Path], monkeypatch: pytest.MonkeyPatch, svd: str) -> None:
    monkeypatch.setenv("FRANKENLAB_DIRECT", "0")
    mapped = compare_checkpoints(pair["in"], pair["rl"], svd=svd, plots=False)
    monkeypatch.setenv("FRANKENLAB_DIRECT", "1")
    calls: list[str] = []
    real = BlockStream.blocks

    def counting(self: BlockStream, canonical: str):  # noqa: ANN202
        calls.append(canonical)
        return real(self, canonical)

    monkeypatch.setattr(BlockStream, "blocks", counting)
    streamed = compare_checkpoints(pair["in"], pair["rl"], svd=svd, plots=False)
    pd.testing.assert_frame_equal(mapped.tensors, streamed.tensors)
    pd.testing.assert_frame_equal(mapped.layers, streamed.layers)
    with Checkpoint(pair["rl"]) as c:
        ndim = {c.canonical(n): len(c.meta(n).shape) for n in c.names()}
    if svd == "none":
        assert sorted(calls) == sorted(ndim)  # every tensor went through the stream
    else:  # matrices need a second read for their spectra: those stay on the memory map
        assert sorted(calls) == sorted(n for n, d in ndim.items() if d < 2) and calls

def test_what_cannot_stream(pair: dict[str, Path], tmp_path: Path) -> None:
    with Checkpoint(pair["in"]) as c_in, Checkpoint(pair["rl"]) as c_rl:
        ckpts = {"in": c_in, "rl": c_rl}
        plan = plan_comparison(ckpts)
        cpu = torch.device("cpu")
        mat = next(tp for tp in plan.tensors if tp.is_matrix)
        none = SpectrumSettings(svd="none")
        assert streamable(mat, ckpts, none, cpu, None, "1") is not None
        assert streamable(mat, ckpts, none, cpu, None, "0") is None
        assert streamable(mat, ckpts, SpectrumSettings(svd="exact"), cpu, None, "1") is None
        assert streamable(mat, ckpts, none, torch.device("meta"), None, "1") is None
        assert streamable(mat, {**ckpts, "base": c_in}, none, cpu, None, "1") is None
        # just written, so in the page cache: 'auto' leaves it to the memory map
        assert streamable(mat, ckpts, none, cpu, None, "auto") is None


def test_a_bad_switch_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRANKENLAB_DIRECT", "yes")
    with pytest.raises(CompareError, match="FRANKENLAB_DIRECT"):
        direct_mode()
