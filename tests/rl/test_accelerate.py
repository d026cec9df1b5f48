"""`frankenlab rl` under `accelerate launch` (CPU): one process gives the same bytes as an in-process run; two
processes (DDP over gloo) write one checkpoint, from the main process, and the freeze holds on it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

pytest.importorskip("trl", reason="GRPO needs TRL: pip install 'frankenlab[rl]'")
pytest.importorskip("accelerate", reason="accelerate launch needs accelerate: pip install 'frankenlab[rl]'")

from frankenlab.freeze import verify_frozen  # noqa: E402
from frankenlab.rl import GRPOSettings, run_rl  # noqa: E402
from tests.rl._world import sft_world  # noqa: E402

pytestmark = pytest.mark.slow

RL_ARGS = ["--freeze", "late", "--steps", "2", "--prompts-per-step", "2", "--max-completion-length", "4"]
SETTINGS = GRPOSettings(steps=2, prompts_per_step=2, max_completion_length=4)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A mini-world checkpoint after a little SFT (so GRPO groups mix right and wrong answers) and a task file."""
    return sft_world(tmp_path_factory.mktemp("accel"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(root, config: str, out, timeout: int = 240) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file CFG -m frankenlab rl ...` with no GPU, offline, one thread a process.

    A generated config file, so a user's ~/.cache/huggingface/accelerate/default_config.yaml cannot leak in."""
    cfg = root / f"accelerate-{out.name}.yaml"
    cfg.write_text(config, encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "",
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(cfg),
           "--num_cpu_threads_per_process", "1", "-m", "frankenlab", "rl", str(root / "in"),
           "--tasks", str(root / "tasks" / "count.jsonl"), "--out", str(out), *RL_ARGS]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def _trained_and_frozen(root, out) -> None:
    check = verify_frozen(str(root / "in"), str(out), "late")
    assert check.ok and check.frozen_identical
    assert all(".layers.4." in n or ".layers.5." in n for n in check.frozen_identical)
    assert len(check.other_changed) > 50  # training happened
    assert (out / "rl_run.json").is_file()


def test_one_process_cpu_matches_an_in_process_run(world):
    root, tasks = world
    config = ("compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\nnum_processes: 1\nnum_machines: 1\n"
              "machine_rank: 0\nmixed_precision: 'no'\nuse_cpu: true\ndynamo_config: {}\n")
    out = root / "rl-accel-1"
    r = _launch(root, config, out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "freeze verified: " in r.stderr
    _trained_and_frozen(root, out)
    # the CLI's verify agrees, and accelerate changed nothing in the run: same bytes as run_rl in this process
    from frankenlab.cli.app import main

    with pytest.raises(SystemExit) as exc:
        main(["freeze", "verify", str(root / "in"), str(out), "--frozen", "late"])
    assert exc.value.code == 0
    direct = run_rl(root / "in", [tasks], root / "rl-direct", SETTINGS, freeze="late")
    assert (out / "model.safetensors").read_bytes() == (direct / "model.safetensors").read_bytes()


def test_two_processes_write_one_checkpoint_from_the_main_process(world):
    root, _ = world
    # accelerate's --cpu / use_cpu always runs ONE process (simple launcher); two CPU processes go through its
    # torchrun launcher ("MULTI_GPU" with no visible GPU), and TRL's use_cpu=True then trains DDP over gloo.
    config = ("compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nnum_processes: 2\n"
              "num_machines: 1\nmachine_rank: 0\ngpu_ids: all\nmixed_precision: 'no'\nuse_cpu: false\n"
              f"main_process_ip: 127.0.0.1\nmain_process_port: {_free_port()}\nrdzv_backend: static\n"
              "same_network: true\ndynamo_config: {}\n")
    out = root / "rl-accel-2"
    r = _launch(root, config, out)
    assert r.returncode == 0, r.stderr[-3000:]
    _trained_and_frozen(root, out)
    assert not [p for p in root.iterdir() if p.name.startswith(f".{out.name}.")]  # no temp dir left behind
