"""Resume keys record the dtype a probe really loads in: bf16 on a GPU by default, as stored on the CPU."""

from __future__ import annotations

import torch

from frankenlab.probe.run import load_dtype


def test_load_dtype_follows_the_device(monkeypatch):
    assert load_dtype(None, "cpu") is None and load_dtype("float32", "cpu") == "float32"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert load_dtype(None, "auto") == "bf16" and load_dtype(None, "cuda:0") == "bf16"
    assert load_dtype("float32", "auto") == "float32"
    assert load_dtype(None, "cpu") is None
    assert load_dtype(None, "auto", device_map="auto") == "bf16"
    assert load_dtype(None, "auto", device_map={"": "cpu"}) is None
