"""The study's merged variants through vLLM: each written once to a temporary checkpoint, evaluated, removed;
answers agree with the in-memory HF path. Skipped where vLLM is not installed (`make test`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from frankenlab.runtime.vllm import vllm_available

if not vllm_available():
    pytest.skip("vLLM is not installed (make test-vllm installs it into .venv-vllm)", allow_module_level=True)

from frankenlab.testing.models import save_tiny_checkpoint  # noqa: E402

N_ITEMS = 16
AGREEMENT = 0.95


def _study(root: Path, in_dir: Path, rl_dir: Path, task: Path, backend: str) -> Path:
    out = root / f"study-{backend}"
    cfg = {"out": str(out), "recipes": [{"in": str(in_dir), "rl": str(rl_dir)}], "variants": ["IN:RL:RL"],
           "stages": ["merge_eval"], "backend": backend, "device": "cpu", "threads": 1,
           "eval": {"tasks": [str(task)], "limit": N_ITEMS, "max_new_tokens": 12}}
    path = root / f"{backend}.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "frankenlab", "study", str(path)], capture_output=True, text=True,
                          timeout=900, env=env)
    assert proc.returncode == 0, f"{backend}: exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return out


def test_variants_through_vllm_agree_with_in_memory_hf(tmp_path):
    in_dir = save_tiny_checkpoint("llama", tmp_path / "in", seed=3, hidden=128, n_heads=4, n_kv_heads=2)
    rl_dir = save_tiny_checkpoint("llama", tmp_path / "rl", seed=4, hidden=128, n_heads=4, n_kv_heads=2)
    task = tmp_path / "arith.jsonl"
    with task.open("w", encoding="utf-8") as fh:
        for i in range(N_ITEMS):
            a, b = i % 9 + 1, (5 * i) % 11
            fh.write(json.dumps({"id": f"q{i}", "question": f"What is {a} + {b}?", "image": None, "choices": None,
                                 "answer": str(a + b), "answer_type": "numeric"}) + "\n")
    vllm_out = _study(tmp_path, in_dir, rl_dir, task, "vllm")
    hf_out = _study(tmp_path, in_dir, rl_dir, task, "hf")
    assert not [p for p in vllm_out.iterdir() if p.name.startswith(".variant-")]  # temporary checkpoints removed

    def answers(out: Path) -> dict[tuple[str, str], str]:
        recs = [json.loads(line) for line in (out / "merge_eval" / "items.jsonl").read_text().splitlines()]
        return {(r["model"], r["item_id"]): r["response"] for r in recs if r["error"] is None}

    v, h = answers(vllm_out), answers(hf_out)
    assert set(v) == set(h) and {m for m, _ in v} == {"IN", "RL", "IN:RL:RL"}
    run = json.loads((vllm_out / "merge_eval" / "run.json").read_text())
    assert run["models"]["IN:RL:RL"]["backend"] == "vllm"
    variant = [k for k in v if k[0] == "IN:RL:RL"]
    same = sum(v[k] == h[k] for k in variant)
    print(f"\nIN:RL:RL via vLLM (temporary checkpoint) vs HF (in memory): {same}/{len(variant)} identical")
    assert same >= AGREEMENT * len(variant)
