"""`auto` means the GPU when there is one, bf16 there; bad device names fail in one clear line."""

from __future__ import annotations

import pytest
import torch

from frankenlab.cli.app import main
from frankenlab.errors import FrankenlabError
from frankenlab.runtime.devices import DeviceError, default_dtype, resolve_device
from frankenlab.study import parse_config
from frankenlab.study.stages import _device


def test_auto_follows_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device(None) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == "cuda"
    assert resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(DeviceError, match="only 2 GPU"):
        resolve_device("cuda:2")


def test_cuda_without_a_gpu_and_bad_names(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="no CUDA GPU") as exc:
        resolve_device("cuda")
    assert isinstance(exc.value, FrankenlabError)
    for bad in ("gpu", "tpu:0", "cuda:x"):
        with pytest.raises(DeviceError, match="auto, cpu, cuda"):
            resolve_device(bad)
    assert resolve_device("CPU") == "cpu"


def test_bf16_by_default_on_a_gpu_only():
    assert default_dtype("cuda", None) == "bf16" and default_dtype("cuda:1", None) == "bf16"
    assert default_dtype("cpu", None) is None
    assert default_dtype("cuda", "fp32") == "fp32"


def test_study_device_defaults_to_auto(monkeypatch, tmp_path):
    cfg = parse_config({"out": str(tmp_path), "recipes": [{"in": "a", "rl": "b"}]})
    assert cfg.device == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _device(cfg) == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _device(cfg) == "cpu"


def test_probe_cli_refuses_a_missing_gpu(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exc:
        main(["probe", "ablate", str(tmp_path / "nowhere"), "--tasks", "miniworld", "--out", str(tmp_path / "o"),
              "--device", "cuda"])
    assert exc.value.code == 2
    assert "no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
