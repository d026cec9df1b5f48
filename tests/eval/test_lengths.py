"""Eval answer lengths per item kind, and Wilson intervals that keep their width at 0 % and 100 %."""

from __future__ import annotations

import json
import math

import pytest

from frankenlab.eval import evaluate
from frankenlab.eval.metrics import accuracy, m_rea, m_v2r, m_vis
from frankenlab.miniworld.tasks import export_tasks, make_split
from frankenlab.runtime.generate import GenerationSettings

T, F = True, False


def _wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson's score interval written out by hand."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("k", [0, 10])
def test_proportions_get_wilson_intervals_at_zero_and_all(k):
    n = 10
    outcomes = [T] * k + [F] * (n - k)
    low, high = _wilson(k, n)
    assert (low == pytest.approx(0.0, abs=1e-12)) if k == 0 else (high == pytest.approx(1.0))
    for r in (accuracy(outcomes), m_rea(outcomes)):
        assert r.value == k / n
        assert (r.ci_low, r.ci_high) == pytest.approx((low, high), abs=1e-12)
        assert r.ci_high - r.ci_low > 0.2  # never a zero-width interval
    # M_vis: every item right with the image and (k = 10) wrong / (k = 0) right with the black image
    black = [k == 0] * n
    v = m_vis([T] * n, black)
    assert (v.k, v.value) == (k, k / n) and (v.ci_low, v.ci_high) == pytest.approx((low, high), abs=1e-12)
    w = m_v2r([T] * n, [k == n] * n)
    assert w.value == k / n and (w.ci_low, w.ci_high) == pytest.approx((low, high), abs=1e-12)


def test_wilson_hand_values():
    # k = 0, n = 10: upper bound z²/(n + z²) = 3.8415 / 13.8415
    assert _wilson(0, 10)[1] == pytest.approx(3.841458820694124 / 13.841458820694124)
    assert accuracy([F] * 10).ci_low == pytest.approx(0.0, abs=1e-12)
    assert accuracy([T] * 10).ci_low == pytest.approx(1 - 3.841458820694124 / 13.841458820694124)


class Recorder:
    """Answers every question wrong and remembers the answer length of each generate call."""

    name = "recorder"

    def __init__(self, max_new_tokens: int | None):
        self.settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=3)
        self.calls: list[tuple[int | None, list[str]]] = []

    def generate(self, prompts, progress=None):
        self.calls.append((self.settings.max_new_tokens, [p.text for p in prompts]))
        return ["no idea"] * len(prompts)


@pytest.fixture(scope="module")
def mixed_task(tmp_path_factory):
    items = make_split(9, 0, families=["count", "count_arith", "text_arith"], split="test")
    return export_tasks(items, tmp_path_factory.mktemp("kinds"), "mixed")


def test_each_item_kind_gets_its_length_unless_one_is_given(tmp_path, mixed_task):
    rec = Recorder(None)
    evaluate({"m": rec}, str(mixed_task), "image", tmp_path / "per-kind", n_boot=100, plots=False)
    rows = [json.loads(x) for x in (tmp_path / "per-kind" / "items.jsonl").read_text().splitlines()]
    by_family = {}
    task_rows = [json.loads(x) for x in mixed_task.read_text().splitlines()]
    family_of = {r["id"]: r["family"] for r in task_rows}
    for r in rows:
        by_family.setdefault(family_of[r["item_id"]], set()).add((r["kind"], r["max_new_tokens"]))
    assert by_family == {"count": {("perception", 256)}, "count_arith": {("reasoning", 1024)},
                         "text_arith": {("reasoning", 1024)}}
    assert {length for length, _ in rec.calls} == {256, 1024}
    assert all(len(texts) <= 3 for _, texts in rec.calls)  # batches of one kind, at most batch_size
    assert sum(len(t) for _, t in rec.calls) == len(rows) == 9
    run = json.loads((tmp_path / "per-kind" / "run.json").read_text())
    assert run["models"]["m"]["max_new_tokens_by_kind"] == {"perception": 256, "reasoning": 1024}
    fixed = Recorder(5)
    evaluate({"m": fixed}, str(mixed_task), "image", tmp_path / "fixed", n_boot=100, plots=False)
    assert {length for length, _ in fixed.calls} == {5}
    rows = [json.loads(x) for x in (tmp_path / "fixed" / "items.jsonl").read_text().splitlines()]
    assert {r["max_new_tokens"] for r in rows} == {5}


def test_default_eval_config_is_per_kind():
    from frankenlab.eval.config import EvalConfig

    assert EvalConfig().generation.max_new_tokens is None
