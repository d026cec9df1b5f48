"""`frankenlab rl --device`: auto is the GPU when there is one (TRL's use_cpu follows the device), the CPU
otherwise, exactly as before; a missing GPU fails before the model is read. The trainer is a stand-in here:
the real CPU runs (bit-reproducible) are tests/rl's."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import pytest
import torch

trl = pytest.importorskip("trl", reason="GRPO needs TRL: pip install 'frankenlab[rl]'")

from frankenlab.cli.app import main  # noqa: E402
from frankenlab.rl import grpo  # noqa: E402
from frankenlab.tasks import TaskItem  # noqa: E402
from frankenlab.testing import build_tiny_model, tiny_processor  # noqa: E402


@pytest.fixture
def fake_trainer(monkeypatch):
    """GRPOTrainer replaced by a recorder; returns the use_cpu each run's config was built with."""
    seen: list[bool] = []
    real = grpo._grpo_config

    def config(*args: Any, use_cpu: bool = True) -> Any:
        seen.append(use_cpu)
        return real(*args, use_cpu=True)  # a CPU config either way: this machine may have no GPU to build one for

    class Trainer:
        def __init__(self, **kw: Any) -> None:
            self.state = SimpleNamespace(log_history=[])

        def remove_callback(self, _cb: Any) -> None:
            pass

        def train(self) -> None:
            pass

    monkeypatch.setattr(grpo, "_grpo_config", config)
    monkeypatch.setattr(trl, "GRPOTrainer", Trainer)
    return seen


def _train(device: str) -> grpo.GRPORun:
    model = build_tiny_model("qwen2", n_llm_layers=2)
    items = [TaskItem(id=str(i), task="t", question=f"What is {i} plus 1?", answer=str(i + 1)) for i in range(4)]
    settings = grpo.GRPOSettings(steps=1, prompts_per_step=2, num_generations=2)
    return grpo.train_grpo(model, tiny_processor("qwen2"), items, settings, device=device)


def test_cpu_and_auto_without_a_gpu_train_on_the_cpu(fake_trainer, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _train("cpu").device == "cpu" and _train("auto").device == "cpu"
    assert fake_trainer == [True, True]
    assert _train("cpu").to_dict()["device"] == "cpu"  # recorded in rl_run.json


def test_auto_with_a_gpu_trains_there(fake_trainer, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    run = _train("auto")
    assert run.device == "cuda" and fake_trainer == [False]
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # deterministic cuBLAS kernels need it


def test_rl_cli_refuses_a_missing_gpu(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exc:
        main(["rl", str(tmp_path / "nowhere"), "--tasks", "miniworld", "--out", str(tmp_path / "o"),
              "--device", "cuda"])
    assert exc.value.code == 2 and "no CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
