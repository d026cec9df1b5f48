from __future__ import annotations

import json
import math
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from frankenlab.cli.app import main
from frankenlab.errors import EvalError
from frankenlab.eval import PASSK_COLUMNS, evaluate, k_values, pass_at_k, passk_table, sample_seed
from frankenlab.eval.tables import RunOrder, Stats
from frankenlab.miniworld.tasks import export_tasks, make_split
from frankenlab.runtime.generate import GenerationSettings, RowSampler
from frankenlab.tasks import Task, TaskItem
from frankenlab.testing.models import build_tiny_model, save_tiny_checkpoint, tiny_processor

CONTRACT = ["model", "task", "setting", "k", "pass_at_k", "low", "high", "n"]


def _closed(n: int, c: int, k: int) -> float:
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


# --- the estimator ------------------------------------------------------------------------------


def test_pass_at_k_equals_the_closed_form():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(_closed(n, c, k), rel=1e-12, abs=1e-15), (n, c, k)
            assert pass_at_k(n, c, 1) == pytest.approx(c / n, rel=1e-12, abs=1e-15)
            assert pass_at_k(n, c, n) == (1.0 if c else 0.0)
        assert pass_at_k(n, 0, 1) == 0.0 and pass_at_k(n, n, 1) == 1.0
    # large n, where C(n, k) has hundreds of digits: the product form stays finite and exact to rounding
    for n, c, k in ((2000, 3, 1000), (1000, 1, 37), (512, 500, 16)):
        assert pass_at_k(n, c, k) == pytest.approx(_closed(n, c, k), rel=1e-9)
    for bad in ((4, 5, 1), (4, 2, 0), (4, 2, 5), (4, -1, 1), (4.5, 2, 1)):
        with pytest.raises(EvalError, match="pass_at_k"):
            pass_at_k(*bad)
    assert k_values(1) == [1] and k_values(8) == [1, 2, 4, 8] and k_values(6) == [1, 2, 4, 6]


def test_the_table_equals_an_independent_numpy_computation():
    rng = np.random.default_rng(7)
    n_samples = 6
    ids = [f"i{j}" for j in range(9)]
    records, counts = [], {}
    for model in ("IN", "RL"):
        for setting in ("image", "black"):
            for j, item in enumerate(ids):
                n_i = n_samples if j != 4 else 3  # one item short of samples: it enters k <= 3 only
                ok = rng.random(n_i) < (0.2 if model == "IN" else 0.6)
                fail = np.zeros(n_i, bool)
                fail[0] = j == 2  # a failed sample, marked correct by mistake: must count as wrong
                for s in range(n_i):
                    records.append({"model": model, "task": "t", "item_id": item, "setting": setting, "sample": s,
                                    "correct": bool(ok[s] or fail[s]), "error": "boom" if fail[s] else None})
                records.append({"model": model, "task": "t", "item_id": item, "setting": setting,  # beyond N
                                "sample": n_samples, "correct": True, "error": None})
                counts[(model, setting, item)] = (n_i, int((ok & ~fail).sum()), int(fail.sum()))
    records.append({"model": "IN", "task": "t", "item_id": "other", "setting": "image", "sample": 0,
                    "correct": True, "error": None})  # not in the selection
    stats = Stats(n_boot=500, confidence=0.9, seed=3)
    table = passk_table(records[::-1], RunOrder(["IN", "RL"], {"t": ids}), n_samples, stats)
    assert list(table.columns) == PASSK_COLUMNS
    assert len(table) == 2 * 2 * 4 and list(table["k"][:4]) == [1, 2, 4, 6]
    for _, row in table.iterrows():
        used = [counts[(row["model"], row["setting"], i)] for i in ids if counts[(row["model"], row["setting"], i)][0]
                >= row["k"]]
        vals = np.array([1 - math.comb(n - c, row["k"]) / math.comb(n, row["k"]) for n, c, _ in used])
        boot = vals[np.random.default_rng(3).integers(0, len(vals), size=(500, len(vals)))].mean(axis=1)
        assert row["n"] == len(used) == (9 if row["k"] <= 3 else 8)
        assert row["pass_at_k"] == pytest.approx(vals.mean(), rel=1e-12)
        assert (row["low"], row["high"]) == pytest.approx(tuple(np.quantile(boot, [0.05, 0.95])), rel=1e-12)
        assert row["n_failed"] == sum(f for _, _, f in used) == 1 and row["n_samples"] == n_samples
    in_curve = table[(table["model"] == "IN") & (table["setting"] == "image")]["pass_at_k"].to_numpy()
    assert np.all(np.diff(in_curve) >= 0)  # pass@k never falls with k


def test_row_sampler_draws_within_the_nucleus_from_its_own_seed():
    import torch

    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    scores = probs.log().repeat(400, 1)
    seeds = list(range(400))
    pick = RowSampler(seeds, 1.0, top_p=0.7)(None, scores.clone()).argmax(-1)
    assert set(pick.tolist()) == {0, 1}  # the nucleus of 0.7 is {0.5, 0.3}
    assert abs((pick == 0).float().mean().item() - 0.5 / 0.8) < 0.08
    full = RowSampler(seeds, 1.0)(None, scores.clone()).argmax(-1)
    assert set(full.tolist()) == {0, 1, 2, 3}
    again = RowSampler(seeds[::-1], 1.0)(None, scores.clone()).argmax(-1)
    assert torch.equal(again, full.flip(0))  # a row's draw depends on its seed, not its position
    assert torch.equal(RowSampler(seeds, 0.0)(None, scores), scores)  # temperature 0: greedy


# --- eval with samples on a scripted backend ---------------------------------------------------


def _task() -> Task:
    img = Image.new("RGB", (12, 10), (200, 30, 30))
    items = [TaskItem(id=f"q{i}", question=f"Count things {i}?", answer=str(10 + i), answer_type="numeric",
                      image=img) for i in range(4)]
    items += [TaskItem(id=f"r{i}", question=f"Add {i} and {i}?", answer=str(2 * i), answer_type="numeric")
              for i in range(2)]
    return Task("syn", tuple(items), "memory", "v1")


def _ok(seed: int) -> bool:
    return (seed >> 5) % 3 == 0


class Sampler:
    """Greedy answers always right; a sample is right iff its seed says so (a known function of the seed)."""

    name = "scripted"

    def __init__(self, batch_size: int = 5) -> None:
        self.settings = GenerationSettings(max_new_tokens=4, batch_size=batch_size)
        self.sampled: list[int] = []

    @staticmethod
    def _gold(text: str) -> int:
        i = int(text.split()[-1].rstrip("?"))
        return 2 * i if text.startswith("Add") else 10 + i

    def generate(self, prompts, progress=None):
        return [f"The answer is {self._gold(p.text)}." for p in prompts]

    def sample(self, prompts, seeds, *, temperature, top_p=1.0, progress=None):
        assert temperature == 0.7 and top_p == 0.9
        self.sampled.extend(seeds)
        return [f"The answer is {self._gold(p.text) + (0 if _ok(s) else 1)}." for p, s in zip(prompts, seeds)]


class _Stop(Exception):
    pass


KW = {"n_boot": 200, "plots": False, "sample_temperature": 0.7, "sample_top_p": 0.9, "sample_seed": 5}


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_samples_are_seeded_graded_resumed_and_leave_greedy_alone(tmp_path):
    greedy = evaluate({"A": Sampler()}, _task(), "image,black", tmp_path / "g", n_boot=200, plots=False)
    assert greedy.passk is None and not (tmp_path / "g" / "samples.jsonl").exists()
    full_backend = Sampler()
    full = evaluate({"A": full_backend}, _task(), "image,black", tmp_path / "full", samples=4, **KW)
    assert (tmp_path / "full" / "summary.csv").read_text() == (tmp_path / "g" / "summary.csv").read_text()
    recs = _lines(tmp_path / "full" / "samples.jsonl")
    assert len(recs) == full.n_sample_records == full.n_sample_new == (4 * 2 + 2) * 4
    for r in recs:
        assert r["seed"] == sample_seed(5, r["task"], r["item_id"], r["setting"], r["sample"])
        assert r["correct"] is _ok(r["seed"]) and r["decided_by"] == "rules" and r["temperature"] == 0.7
    assert len({r["seed"] for r in recs}) == len(recs)  # every (item, setting, index) its own stream
    table = pd.read_csv(tmp_path / "full" / "passk.csv")
    assert list(table.columns[:8]) == CONTRACT and set(table["k"]) == {1, 2, 4}
    for _, row in table.iterrows():
        mine = [r for r in recs if r["setting"] == row["setting"]]
        per_item = {}
        for r in mine:
            per_item.setdefault(r["item_id"], []).append(r["correct"])
        expect = np.mean([_closed(len(v), sum(v), int(row["k"])) for v in per_item.values()])
        assert row["pass_at_k"] == pytest.approx(expect) and row["n"] == len(per_item)

    seen = []

    def stop(ev):
        if ev.kind == "sample":
            seen.append(ev.record)
            if len(seen) == 17:
                raise _Stop

    with pytest.raises(_Stop):
        evaluate({"A": Sampler()}, _task(), "image,black", tmp_path / "cut", samples=4, progress=stop, **KW)
    partial = len(_lines(tmp_path / "cut" / "samples.jsonl"))
    assert 17 <= partial < len(recs)
    again = Sampler()
    resumed = evaluate({"A": again}, _task(), "image,black", tmp_path / "cut", samples=4, **KW)
    assert resumed.n_new == 0 and resumed.n_sample_new == len(again.sampled) == len(recs) - partial
    done_seeds = {r["seed"] for r in _lines(tmp_path / "cut" / "samples.jsonl")[:partial]}
    assert not done_seeds & set(again.sampled)  # nothing drawn twice
    key = ("model", "task", "item_id", "setting", "sample", "response", "correct", "seed")
    assert sorted(tuple(r[f] for f in key) for r in _lines(tmp_path / "cut" / "samples.jsonl")) == \
        sorted(tuple(r[f] for f in key) for r in recs)
    assert (tmp_path / "cut" / "passk.csv").read_text() == (tmp_path / "full" / "passk.csv").read_text()

    more = Sampler()
    bigger = evaluate({"A": more}, _task(), "image,black", tmp_path / "full", samples=6, **KW)
    assert bigger.n_sample_new == len(more.sampled) == 10 * 2  # only indices 4 and 5 are new
    assert set(bigger.passk["k"]) == {1, 2, 4, 6}
    with pytest.raises(EvalError, match="were drawn with"):
        evaluate({"A": Sampler()}, _task(), "image,black", tmp_path / "full", samples=6,
                 **{**KW, "sample_temperature": 0.5})
    (tmp_path / "full" / "samples.jsonl").unlink()
    redrawn = evaluate({"A": Sampler()}, _task(), "image,black", tmp_path / "full", samples=2,
                       **{**KW, "sample_seed": 6})
    assert redrawn.n_new == 0 and redrawn.n_sample_new == 20


def test_temperature_zero_with_several_samples_is_refused(tmp_path):
    with pytest.raises(EvalError, match="temperature 0 would be 4 copies"):
        evaluate({"A": Sampler()}, _task(), "image", tmp_path / "o", samples=4, sample_temperature=0.0)
    assert not (tmp_path / "o").exists()

    class GreedyOnly:
        name = "g"
        settings = GenerationSettings(max_new_tokens=4)

        def generate(self, prompts, progress=None):
            return ["1"] * len(prompts)

    with pytest.raises(EvalError, match="has no sample"):
        evaluate({"A": GreedyOnly()}, _task(), "image", tmp_path / "o", samples=2)


# --- a real tiny VLM ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mw(tmp_path_factory):
    model = build_tiny_model("qwen2_5_vl", seed=0, n_llm_layers=2, n_vision_blocks=2)
    task = export_tasks(make_split(3, 0, families=["count", "text_arith"], split="test"),
                        tmp_path_factory.mktemp("mw"), "mw")
    return (model, tiny_processor("qwen2_5_vl")), str(task)


def _by_key(path, fields=("response", "correct", "seed")):
    return {(r["model"], r["task"], r["item_id"], r["setting"], r.get("sample")): tuple(r[f] for f in fields)
            for r in _lines(path)}


def test_hf_samples_are_reproducible_resumable_and_greedy_unchanged(tmp_path, mw):
    vlm, task = mw
    kw = {"generation": GenerationSettings(max_new_tokens=4, batch_size=4), "n_boot": 200, "plots": False}
    evaluate({"IN": vlm}, task, "image,black", tmp_path / "greedy", **kw)
    a = evaluate({"IN": vlm}, task, "image,black", tmp_path / "a", samples=3, sample_seed=1, **kw)
    assert a.n_sample_records == 5 * 3 and a.n_sample_failed == 0
    fields = ("response", "correct", "prompt", "extracted")
    assert _by_key(tmp_path / "a" / "items.jsonl", fields) == _by_key(tmp_path / "greedy" / "items.jsonl", fields)
    samples = _by_key(tmp_path / "a" / "samples.jsonl")
    greedy = _by_key(tmp_path / "a" / "items.jsonl", ("response",))
    per_item: dict[tuple[str, str], set[str]] = {}
    for (_, _, i, s, _), (resp, _, _) in samples.items():
        per_item.setdefault((i, s), set()).add(resp)
    assert any(len(v) > 1 for v in per_item.values())  # sample indices draw different answers
    assert any(resp != greedy[(m, t, i, s, None)][0] for (m, t, i, s, _), (resp, _, _) in samples.items())
    # two samples first, the third later: every batch holds other rows than in run a, the answers are the same
    first = evaluate({"IN": vlm}, task, "image,black", tmp_path / "b", samples=2, sample_seed=1, **kw)
    b = evaluate({"IN": vlm}, task, "image,black", tmp_path / "b", samples=3, sample_seed=1, **kw)
    assert first.n_sample_new == 10 and b.n_new == 0 and b.n_sample_new == 5
    assert _by_key(tmp_path / "b" / "samples.jsonl") == samples
    assert (tmp_path / "b" / "passk.csv").read_text() == (tmp_path / "a" / "passk.csv").read_text()
    other = evaluate({"IN": vlm}, task, "image,black", tmp_path / "c", samples=3, sample_seed=2, **kw)
    assert _by_key(tmp_path / "c" / "samples.jsonl") != samples and other.n_sample_records == 15


# --- CLI -------------------------------------------------------------------------------------


def _cli(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out = capsys.readouterr()
    return exc.value.code, out.out + out.err


def test_cli_writes_passk_for_a_tiny_pair(tmp_path, capsys):
    ckpt_in = save_tiny_checkpoint("qwen2_5_vl", tmp_path / "in", seed=0, n_llm_layers=2, n_vision_blocks=2)
    ckpt_rl = save_tiny_checkpoint("qwen2_5_vl", tmp_path / "rl", seed=1, n_llm_layers=2, n_vision_blocks=2)
    task = export_tasks(make_split(2, 1, families=["count", "text_arith"], split="test"), tmp_path, "mw")
    out = tmp_path / "out"
    base = ["eval", f"IN={ckpt_in}", f"RL={ckpt_rl}", "--tasks", str(task), "--out", str(out), "--settings", "image",
            "--max-new-tokens", "2", "--backend", "hf", "--device", "cpu", "--n-boot", "200"]
    code, text = _cli(base + ["--samples", "4", "--temperature", "0"], capsys)
    assert code == 2 and "temperature 0 would be 4 copies" in text and not (out / "items.jsonl").exists()
    code, text = _cli(base + ["--samples", "4", "--temperature", "1.2", "--top-p", "0.95", "--gen-seed", "3"], capsys)
    assert code == 0, text
    table = pd.read_csv(out / "passk.csv")
    assert list(table.columns[:8]) == CONTRACT and (out / "passk.parquet").is_file()
    assert set(table["model"]) == {"IN", "RL"} and set(table["k"]) == {1, 2, 4} and set(table["n"]) == {1}
    assert set(table["setting"]) == {"image", "text"}
    assert (out / "plots" / "passk.png").stat().st_size > 0
    assert text.count("pass@k ") == 4 and "@4" in text
    recs = _lines(out / "samples.jsonl")
    assert len(recs) == 2 * 2 * 4 and {r["temperature"] for r in recs} == {1.2} and {r["top_p"] for r in recs} == {0.95}
    run = json.loads((out / "run.json").read_text())
    assert run["sampling"] == {"temperature": 1.2, "top_p": 0.95, "seed": 3}
