from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from frankenlab.errors import EvalError, OutputError
from frankenlab.eval import evaluate
from frankenlab.eval.tables import METRIC_COLUMNS, SUMMARY_COLUMNS
from frankenlab.miniworld.tasks import export_tasks, make_split
from frankenlab.runtime.generate import GenerationSettings
from frankenlab.tasks import Task, TaskItem, load_jsonl
from frankenlab.testing.models import build_tiny_model, tiny_processor

T, F = True, False
# per image item: correct with (image, black, described); text items: correct or not
TABLE_A = {"q0": (T, F, T), "q1": (T, T, T), "q2": (T, F, F), "q3": (F, F, T), "q4": (F, T, F), "q5": (T, F, T)}
TABLE_B = {"q0": (T, F, F), "q1": (F, F, T), "q2": (T, F, T), "q3": (T, T, T), "q4": (F, F, F), "q5": (T, T, T)}
TEXT_A = {"r0": T, "r1": F, "r2": T}
TEXT_B = {"r0": T, "r1": T, "r2": T}


def _task() -> Task:
    img = Image.new("RGB", (12, 10), (200, 30, 30))
    items = [TaskItem(id=f"q{i}", question=f"Count things {i}?", answer=str(10 + i), answer_type="numeric",
                      image=img, description=f"there are {10 + i} things") for i in range(6)]
    items += [TaskItem(id=f"r{i}", question=f"Add {i} and {i}?", answer=str(2 * i), answer_type="numeric")
              for i in range(3)]
    return Task("synthetic", tuple(items), "memory", "v1")


class Oracle:
    """A backend that answers right or wrong per item and setting, as its table says."""

    name = "oracle"

    def __init__(self, table, text, fail_on=(), batch_size=4, delay=0.0):
        self.table, self.text, self.fail_on, self.delay = table, text, set(fail_on), delay
        self.settings = GenerationSettings(max_new_tokens=4, batch_size=batch_size)
        self.calls: list[int] = []

    def generate(self, prompts, progress=None):
        self.calls.append(len(prompts))
        time.sleep(self.delay)
        out = []
        for p in prompts:
            q = p.text.split("\n\n")[-1]
            i = int(q.split()[-1].rstrip("?"))
            if q in self.fail_on:
                raise RuntimeError("CUDA out of memory (simulated)")
            if p.image is None:
                ok, gold = self.text[f"r{i}"], 2 * i
            else:
                black = np.asarray(p.image).max() == 0
                setting = 0 if not black else (2 if p.text.startswith("Image description") else 1)
                ok, gold = self.table[f"q{i}"][setting], 10 + i
            out.append(f"The answer is {gold if ok else gold + 1}.")
        return out


def _expected(table, text):
    img = np.array([v[0] for v in table.values()])
    blk = np.array([v[1] for v in table.values()])
    dsc = np.array([v[2] for v in table.values()])
    return {"M_vis": (img & ~blk).mean(), "M_v2r": (img & dsc).mean(), "M_rea": np.mean(list(text.values()))}


def test_metrics_and_tables_from_a_known_oracle(tmp_path):
    a, b = Oracle(TABLE_A, TEXT_A), Oracle(TABLE_B, TEXT_B, batch_size=2)
    res = evaluate({"A": a, "B": b}, _task(), "image,black,described", tmp_path / "out", n_boot=200, plots=True)
    out = tmp_path / "out"
    summary = pd.read_csv(out / "summary.csv")
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(summary.columns[:8]) == SUMMARY_COLUMNS[:8] and list(metrics.columns[:10]) == METRIC_COLUMNS[:10]
    for label, table, text in (("A", TABLE_A, TEXT_A), ("B", TABLE_B, TEXT_B)):
        got = metrics[(metrics["model"] == label) & (metrics["task"] == "all")].set_index("metric")["value"]
        for metric, value in _expected(table, text).items():
            assert got[metric] == pytest.approx(value), (label, metric)
        acc = summary[(summary["model"] == label)].set_index("setting")["accuracy"]
        assert acc["image"] == pytest.approx(np.mean([v[0] for v in table.values()]))
        assert acc["text"] == pytest.approx(np.mean(list(text.values())))
    items = [json.loads(x) for x in (out / "items.jsonl").read_text().splitlines()]
    assert len(items) == 2 * (6 * 3 + 3) == res.n_records
    rec = next(r for r in items if r["model"] == "A" and r["item_id"] == "q0" and r["setting"] == "black")
    assert rec["response"] == "The answer is 11." and rec["extracted"] == "11" and rec["rule"] == "numeric"
    assert rec["correct"] is False and rec["decided_by"] == "rules" and rec["error"] is None
    assert max(b.calls) == 2 and max(a.calls) == 4
    described = {(r["model"], r["item_id"]): r["prompt"] for r in items if r["setting"] == "described"}
    assert all(described[("A", i)] == described[("B", i)] for i in TABLE_A)  # one description for all models
    assert described[("A", "q3")] == "Image description: there are 13 things\n\nCount things 3?"
    comp = pd.read_csv(out / "comparisons.csv")
    assert {"accuracy:image", "M_vis", "M_v2r", "M_rea"} <= set(comp["measure"])
    assert (out / "summary.png").stat().st_size > 0 and (out / "metrics.parquet").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"] == "eval" and manifest["args"]["settings"] == ["image", "black", "described"]


def test_failures_are_recorded_counted_and_retried(tmp_path):
    bad = Oracle(TABLE_A, TEXT_A, fail_on={"Count things 2?"})
    res = evaluate({"A": bad}, _task(), "image,black", tmp_path / "o", n_boot=200, plots=False)
    items = [json.loads(x) for x in (tmp_path / "o" / "items.jsonl").read_text().splitlines()]
    failed = [r for r in items if r["error"]]
    assert {(r["item_id"], r["setting"]) for r in failed} == {("q2", "image"), ("q2", "black")}
    assert all("CUDA out of memory" in r["error"] and r["correct"] is False for r in failed)
    row = res.summary.set_index("setting").loc["image"]
    assert (row["n"], row["n_failed"]) == (6, 1)  # failed stays in n, counted as wrong
    assert row["accuracy"] == pytest.approx((sum(v[0] for v in TABLE_A.values()) - 1) / 6)
    vis = res.metrics.set_index(["task", "metric"]).loc[("all", "M_vis")]
    assert (vis["n"], vis["n_failed"]) == (6, 1)
    again = evaluate({"A": Oracle(TABLE_A, TEXT_A)}, _task(), "image,black", tmp_path / "o", n_boot=200,
                     plots=False, retry_failed=True)
    assert again.n_new == 2 and again.n_failed == 0


def test_refuses_to_mix_runs(tmp_path):
    evaluate({"A": Oracle(TABLE_A, TEXT_A)}, _task(), "image", tmp_path / "o", n_boot=200, plots=False)
    with pytest.raises(EvalError, match="prompt_suffix"):
        evaluate({"A": Oracle(TABLE_A, TEXT_A)}, _task(), "image", tmp_path / "o", prompt_suffix=" Be brief.",
                 n_boot=200, plots=False)
    with pytest.raises(EvalError, match="settings"):
        evaluate({"A": Oracle(TABLE_A, TEXT_A)}, _task(), "image,black", tmp_path / "o", n_boot=200, plots=False)
    res = evaluate({"A": Oracle(TABLE_A, TEXT_A)}, _task(), "image,black", tmp_path / "o", n_boot=200,
                   plots=False, overwrite=True)
    assert res.n_new == 6 * 2 + 3
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not this evaluation.s output"):
        evaluate({"A": Oracle(TABLE_A, TEXT_A)}, _task(), "image", tmp_path / "other", n_boot=200, plots=False)


def test_missing_descriptions_fail_before_anything_is_written(tmp_path):
    task = _task()
    bare = Task("bare", tuple(TaskItem(it.id, it.question, it.answer, it.answer_type, it.image) for it in task.items),
                "memory", "v1")
    with pytest.raises(EvalError, match=r"no description .* for 6 image item\(s\)"):
        evaluate({"A": Oracle(TABLE_A, TEXT_A)}, bare, "image,described", tmp_path / "o", n_boot=200, plots=False)
    assert not (tmp_path / "o").exists()
    res = evaluate({"A": Oracle(TABLE_A, TEXT_A)}, bare, "image,black", tmp_path / "o", n_boot=200, plots=False)
    assert res.n_records == 6 * 2 + 3


def test_timeouts_are_recorded(tmp_path):
    slow = Oracle(TABLE_A, TEXT_A, delay=0.05)
    slow.name = "hf"  # the time limit applies to the HF backend
    res = evaluate({"A": slow}, _task(), "image", tmp_path / "o", timeout_s=0.01, n_boot=200, plots=False)
    assert res.n_failed == res.n_records == 9
    items = [json.loads(x) for x in (tmp_path / "o" / "items.jsonl").read_text().splitlines()]
    assert all(r["error"].startswith("timeout") and r["response"] for r in items)


# --- a real tiny VLM on a mini-world task file -------------------------------------------------


@pytest.fixture(scope="module")
def tiny_vlm():
    return build_tiny_model("qwen2_5_vl", seed=0, n_llm_layers=2, n_vision_blocks=2), tiny_processor("qwen2_5_vl")


@pytest.fixture(scope="module")
def mw_task(tmp_path_factory):
    items = make_split(4, 0, families=["count", "read_digit", "count_arith", "text_arith"], split="test")
    return export_tasks(items, tmp_path_factory.mktemp("mw"), "mw")


class _Interrupt(Exception):
    pass


def _records(path):
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    keys = [(r["model"], r["task"], r["item_id"], r["setting"]) for r in rows]
    assert len(keys) == len(set(keys)), "duplicate records"
    return {k: {f: v for f, v in r.items() if f != "elapsed_s"} for k, r in zip(keys, rows)}


def test_interrupted_run_resumes_to_the_same_results(tmp_path, tiny_vlm, mw_task):
    gen = GenerationSettings(max_new_tokens=3, batch_size=3)
    kw = {"generation": gen, "n_boot": 200, "plots": False}
    full = evaluate({"IN": tiny_vlm}, str(mw_task), "image,black,described", tmp_path / "full", **kw)
    assert full.n_records == 3 * 3 + 1 and full.n_failed == 0

    seen = []

    def stop_after_four(ev):
        if ev.kind == "record":
            seen.append(ev.record)
            if len(seen) == 4:
                raise _Interrupt

    with pytest.raises(_Interrupt):
        evaluate({"IN": tiny_vlm}, str(mw_task), "image,black,described", tmp_path / "cut", progress=stop_after_four,
                 **kw)
    assert not (tmp_path / "cut" / "summary.csv").exists()
    partial = len(_records(tmp_path / "cut" / "items.jsonl"))
    assert 4 <= partial < full.n_records
    resumed = evaluate({"IN": tiny_vlm}, str(mw_task), "image,black,described", tmp_path / "cut", **kw)
    assert resumed.n_new == full.n_records - partial
    for name in ("summary.csv", "metrics.csv"):
        assert (tmp_path / "cut" / name).read_text() == (tmp_path / "full" / name).read_text()
    assert _records(tmp_path / "cut" / "items.jsonl") == _records(tmp_path / "full" / "items.jsonl")
    done = evaluate({"IN": tiny_vlm}, str(mw_task), "image,black,described", tmp_path / "cut", **kw)
    assert done.n_new == 0  # nothing left: the model is not even run
    descriptions = [json.loads(x) for x in (tmp_path / "cut" / "descriptions.jsonl").read_text().splitlines()]
    assert {d["id"] for d in descriptions} == {it.id for it in load_jsonl(mw_task).items if it.has_image}


def test_generation_config_is_reported_and_applied_only_when_asked(tmp_path, mw_task):
    model = build_tiny_model("qwen2_5_vl", seed=3, n_llm_layers=2, n_vision_blocks=2)
    proc = tiny_processor("qwen2_5_vl")
    kw = {"generation": GenerationSettings(max_new_tokens=3, batch_size=4), "n_boot": 200, "plots": False}
    base = evaluate({"m": (model, proc)}, str(mw_task), "image", tmp_path / "base", **kw)
    forced = proc.tokenizer.convert_tokens_to_ids("Q")
    banned = [i for i in range(len(proc.tokenizer)) if i != forced]
    model.generation_config.begin_suppress_tokens = banned  # a checkpoint default that forces "Q" first
    plain = evaluate({"m": (model, proc)}, str(mw_task), "image", tmp_path / "plain", **kw)
    applied = evaluate({"m": (model, proc)}, str(mw_task), "image", tmp_path / "applied", use_generation_config=True,
                       **kw)
    responses = {name: [r["response"] for r in _records(tmp_path / name / "items.jsonl").values()]
                 for name in ("base", "plain", "applied")}
    assert responses["plain"] == responses["base"]
    assert all(r.startswith("Q") for r in responses["applied"]) and responses["applied"] != responses["base"]
    run = json.loads((tmp_path / "plain" / "run.json").read_text())
    assert run["models"]["m"]["generation_config"]["begin_suppress_tokens"] == banned
    assert model.generation_config.begin_suppress_tokens == banned  # restored after the run
    assert base.n_records == plain.n_records == applied.n_records


def test_limit_and_seed_choose_and_save_the_items(tmp_path, mw_task):
    res = evaluate({"A": Oracle(TABLE_A, TEXT_A)}, str(mw_task), "image", tmp_path / "o", limit=2, seed=5,
                   n_boot=200, plots=False)
    chosen = json.loads((tmp_path / "o" / "selection.json").read_text())
    assert chosen["tasks"]["mw"] == load_jsonl(mw_task).subsample(2, 5).ids()
    assert chosen["limit"] == 2 and chosen["seed"] == 5 and res.n_records == 2
