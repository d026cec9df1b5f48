"""vLLM for real (CPU build here, GPU build where there is one): greedy answers of `frankenlab eval --backend
vllm` against `--backend hf` on the same items, pass@k sampling through `VLLMBackend.sample`, and the backend
choice. Skipped where vLLM is not installed (`make test`); `make test-vllm` installs it into .venv-vllm.

The model is a random tiny Llama (hidden 128, 4 heads of 32, 4 layers): its greedy answers are arbitrary
but deterministic, so identical answers from two independent engines (transformers' generate vs vLLM's
paged attention and sampler) are a real check of prompts, stops, suppressed tokens and dtype.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from frankenlab.runtime.vllm import vllm_available

if not vllm_available():
    pytest.skip("vLLM is not installed (make test-vllm installs it into .venv-vllm)", allow_module_level=True)

from frankenlab.runtime.generate import GenerationSettings, Prompt  # noqa: E402
from frankenlab.runtime.vllm import CPU_ENV, VLLMBackend, cuda_available, pick_backend, vllm_cpu_build  # noqa: E402
from frankenlab.testing.models import save_tiny_checkpoint, tiny_processor  # noqa: E402

N_ITEMS = 32
NEW_TOKENS = 16
SAMPLES = 4
AGREEMENT = 0.95


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm")
    ckpt = save_tiny_checkpoint("llama", root / "llama", seed=3, hidden=128, n_heads=4, n_kv_heads=2)
    task = root / "arith.jsonl"
    with task.open("w", encoding="utf-8") as fh:
        for i in range(N_ITEMS):
            a, b = i % 9 + 1, (7 * i) % 13
            fh.write(json.dumps({"id": f"q{i}", "question": f"What is {a} + {b}?", "image": None, "choices": None,
                                 "answer": str(a + b), "answer_type": "numeric"}) + "\n")
    return root, ckpt, task


def _eval(ckpt: Path, task: Path, out: Path, backend: str, *extra: str) -> dict:
    """`frankenlab eval` in a child process (vLLM's CPU engine binds the threads of the process it runs in)."""
    argv = [sys.executable, "-m", "frankenlab", "eval", f"tiny={ckpt}", "--tasks", str(task), "--out", str(out),
            "--backend", backend, "--max-new-tokens", str(NEW_TOKENS), "--threads", "1", "--n-boot", "200",
            "--no-plots", "--quiet", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, f"{backend}: exit {proc.returncode}\n{proc.stderr[-4000:]}"
    items = [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines()]
    return {"items": {r["item_id"]: r for r in items}, "run": json.loads((out / "run.json").read_text())}


@pytest.fixture(scope="module")
def runs(world):
    root, ckpt, task = world
    vllm = _eval(ckpt, task, root / "out-vllm", "vllm", "--samples", str(SAMPLES), "--temperature", "1.0")
    hf = _eval(ckpt, task, root / "out-hf", "hf", "--device", "cpu")
    return vllm, hf


def test_greedy_answers_agree_with_hf(runs):
    vllm, hf = runs
    assert vllm["run"]["models"]["tiny"]["backend"] == "vllm" and hf["run"]["models"]["tiny"]["backend"] == "hf"
    assert set(vllm["items"]) == set(hf["items"]) and len(hf["items"]) == N_ITEMS
    for recs in (vllm["items"], hf["items"]):
        assert all(r["error"] is None for r in recs.values())
    # a random model that answered nothing would agree trivially
    assert sum(bool(r["response"]) for r in hf["items"].values()) >= N_ITEMS // 2
    differ = {k: (hf["items"][k]["response"], vllm["items"][k]["response"]) for k in hf["items"]
              if hf["items"][k]["response"] != vllm["items"][k]["response"]}
    share = 1 - len(differ) / N_ITEMS
    print(f"\nvLLM vs HF greedy agreement: {N_ITEMS - len(differ)}/{N_ITEMS} = {100 * share:.1f} % identical")
    for k, (h, v) in differ.items():
        print(f"  {k}: hf={h!r} vllm={v!r}")
    assert share >= AGREEMENT, differ


def test_passk_samples_through_vllm(runs, world):
    root, _, _ = world
    samples = [json.loads(line) for line in (root / "out-vllm" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == N_ITEMS * SAMPLES and all(s["error"] is None for s in samples)
    assert {s["sample"] for s in samples} == set(range(SAMPLES)) and len({s["seed"] for s in samples}) == len(samples)
    # at temperature 1 a random model's samples differ from each other and from the greedy answer
    assert len({s["response"] for s in samples}) > N_ITEMS
    import pandas as pd

    passk = pd.read_csv(root / "out-vllm" / "passk.csv")
    assert sorted(passk["k"].unique()) == [1, 2, 4] and (passk["n_failed"] == 0).all()


@pytest.mark.skipif(cuda_available(), reason="CPU-build choice; a GPU picks vLLM anyway")
def test_backend_choice_on_cpu(monkeypatch):
    assert vllm_cpu_build()
    assert pick_backend("vllm") == "vllm"
    monkeypatch.delenv(CPU_ENV, raising=False)
    assert pick_backend("auto") == "hf"
    monkeypatch.setenv(CPU_ENV, "1")
    assert pick_backend("auto") == "vllm"


def test_sample_is_a_function_of_prompt_and_seed(world):
    """In this process (last: the engine stays bound to this process's cores): seeds, not batch position,
    decide a sample; the CPU engine runs in the stored dtype, eagerly, with a bounded context."""
    _, ckpt, _ = world
    backend = VLLMBackend(ckpt, tiny_processor("llama"), settings=GenerationSettings(max_new_tokens=12))
    kw = backend.engine_kwargs
    if backend.cpu:
        assert kw["dtype"] == "float32" and kw["enforce_eager"] and "gpu_memory_utilization" not in kw
        assert kw["max_model_len"] == 1024 and "limit_mm_per_prompt" not in kw  # the config's own limit
    p, q = Prompt("What is 2 + 2?"), Prompt("Name a colour.")
    out = backend.sample([p, q, p, q, p], [11, 12, 11, 12, 13], temperature=1.0)
    assert out[0] == out[2] and out[1] == out[3]
    assert len({out[0], out[4]}) == 2  # another seed, another draw
    again = backend.sample([q, p], [12, 11], temperature=1.0)
    assert again == [out[1], out[0]]
    assert backend.generate([p, q]) == backend.generate([q, p])[::-1]
