"""Read-ahead: the byte ranges it fetches are exactly each tensor's data, and results do not depend on it."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from frankenlab.checkpoint import Checkpoint
from frankenlab.compare import compare_checkpoints
from frankenlab.compare.stream import Prefetcher, plan_comparison

from . import perturb, qwen_config, qwen_shapes, random_weights, write_checkpoint

CHANGED = re.compile(r"language_model\.layers\.1\.")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("prefetch")
    in_ = random_weights(qwen_shapes(), seed=3)
    rl = perturb(in_, lambda n: bool(CHANGED.search(n)), seed=4)
    return {"in": write_checkpoint(root / "in", in_, qwen_config(), shards=3),
            "rl": write_checkpoint(root / "rl", rl, qwen_config())}


def test_ranges_are_each_tensors_stored_bytes(pair: dict[str, Path]) -> None:
    with Checkpoint(pair["in"], label="IN") as c_in, Checkpoint(pair["rl"], label="RL") as c_rl:
        ckpts = {"in": c_in, "rl": c_rl}
        plan = plan_comparison(ckpts)
        reader = Prefetcher(ckpts)
        try:
            stored = {r: {k: v for f in sorted(c.root.glob("*.safetensors")) for k, v in load_file(str(f)).items()}
                      for r, c in ckpts.items()}
            for tp in plan.tensors:
                for (path, offset, nbytes), (role, c) in zip(reader.ranges(tp), ckpts.items(), strict=True):
                    with path.open("rb") as fh:
                        fh.seek(offset)
                        raw = fh.read(nbytes)
                    want = stored[role][c.disk_name(tp.canonical)]
                    assert nbytes == want.numel() * want.element_size()
                    assert raw == bytes(want.contiguous().view(-1).view(torch.uint8).numpy())
            total = sum(n for tp in plan.tensors for _, _, n in reader.ranges(tp))
            assert reader._read([r for tp in plan.tensors for r in reader.ranges(tp)]) == total
            assert reader.bytes_read == total and reader.failures == 0
        finally:
            reader.close()


def test_results_identical_with_and_without_read_ahead(pair: dict[str, Path]) -> None:
    on = compare_checkpoints(pair["in"], pair["rl"], svd="exact", plots=False, prefetch=True)
    off = compare_checkpoints(pair["in"], pair["rl"], svd="exact", plots=False, prefetch=False)
    pd.testing.assert_frame_equal(on.tensors, off.tensors)
    pd.testing.assert_frame_equal(on.layers, off.layers)


def test_a_vanished_shard_is_counted_not_fatal(pair: dict[str, Path], tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    with Checkpoint(pair["rl"], label="RL") as c:
        reader = Prefetcher({"rl": c})
        try:
            got = reader._read([(tmp_path / "gone.safetensors", 0, 10)])
        finally:
            reader.close()
    assert got == 0 and reader.failures == 1
    assert "read-ahead" in caplog.text
