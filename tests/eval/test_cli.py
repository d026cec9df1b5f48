from __future__ import annotations

import json

import pandas as pd
import pytest

from frankenlab.cli.app import main
from frankenlab.errors import EvalError
from frankenlab.eval.models import label_models
from frankenlab.miniworld.tasks import export_tasks, make_split
from frankenlab.runtime.vllm import pick_backend, vllm_available
from frankenlab.testing.models import save_tiny_checkpoint


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    ckpt = save_tiny_checkpoint("qwen2_5_vl", root / "in", seed=0, n_llm_layers=2, n_vision_blocks=2)
    task = export_tasks(make_split(3, 1, families=["count", "text_arith"], split="test"), root, "mw")
    return root, ckpt, task


def _run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_eval_command_writes_the_fixed_tables(setup, capsys, tmp_path):
    root, ckpt, task = setup
    out = tmp_path / "out"
    argv = ["eval", f"IN={ckpt}", "--tasks", str(task), "--out", str(out), "--settings", "image,black,described",
            "--max-new-tokens", "2", "--batch-size", "4", "--backend", "hf", "--device", "cpu", "--n-boot", "200",
            "--no-plots", "--system-prompt", "Answer briefly."]
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns[:8]) == ["model", "task", "setting", "n", "accuracy", "ci_low", "ci_high", "n_failed"]
    assert set(summary["setting"]) == {"image", "black", "described", "text"} and set(summary["model"]) == {"IN"}
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics.columns[:10]) == ["model", "metric", "value", "ci_low", "ci_high", "n", "n11", "n10", "n01",
                                          "n00"]
    assert set(metrics["metric"]) == {"M_vis", "M_v2r", "M_rea"}
    items = [json.loads(x) for x in (out / "items.jsonl").read_text().splitlines()]
    assert len(items) == 2 * 3 + 1 and {"response", "extracted", "correct", "rule"} <= set(items[0])
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["system_prompt"] == "Answer briefly."
    assert run["models"]["IN"]["generation"]["system_prompt"] == "Answer briefly."
    assert run["models"]["IN"]["kind"] == "checkpoint" and run["models"]["IN"]["fingerprint"]
    code, _, err = _run(argv + ["--quiet"], capsys)  # a second call resumes: nothing new
    assert code == 0 and len((out / "items.jsonl").read_text().splitlines()) == len(items)


def test_eval_command_errors_exit_2_with_one_line(setup, capsys, tmp_path):
    root, ckpt, task = setup
    code, _, err = _run(["eval", str(ckpt), "--tasks", "no-such-task", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and err.startswith("error: unknown task 'no-such-task'") and err.count("\n") == 1
    if not vllm_available():
        code, _, err = _run(["eval", str(ckpt), "--tasks", str(task), "--out", str(tmp_path / "v"), "--backend",
                             "vllm"], capsys)
        assert code == 2 and "vLLM is not installed" in err


def test_model_labels_and_backend_choice():
    assert label_models(["IN=a/b", "x/rl/"]) == {"IN": "a/b", "rl": "x/rl/"}
    assert label_models(["a/m", "b/n"], ["IN", "RL"]) == {"IN": "a/m", "RL": "b/n"}
    with pytest.raises(EvalError, match="labelled 'model'"):
        label_models(["a/model", "b/model"])
    if not vllm_available():
        assert pick_backend("auto") == "hf"


def test_eval_takes_a_generated_task_by_name(setup, capsys, tmp_path):
    """``--tasks miniworld:count`` evaluates the generated items (in-memory images) like an exported file would."""
    root, ckpt, _ = setup
    out = tmp_path / "gen"
    argv = ["eval", f"IN={ckpt}", "--tasks", "miniworld:count", "--limit", "3", "--out", str(out), "--settings",
            "image", "--max-new-tokens", "2", "--backend", "hf", "--device", "cpu", "--n-boot", "100", "--no-plots",
            "--quiet"]
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    items = [json.loads(x) for x in (out / "items.jsonl").read_text().splitlines()]
    generated = {it.id: it for it in make_split(3, 0, families=["count"], split="test")}  # --limit 3 makes 3
    assert len(items) == 3 and {r["task"] for r in items} == {"miniworld_count"}
    assert {r["item_id"] for r in items} == set(generated)
    assert all(r["item_id"] in generated and r["answer"] == generated[r["item_id"]].answer for r in items)
