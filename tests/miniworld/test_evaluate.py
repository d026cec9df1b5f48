"""Per-family strict / lenient accuracy with Wilson intervals, and paired gains, against hand counts."""

from __future__ import annotations

import numpy as np
import pytest

from frankenlab.errors import TaskError
from frankenlab.miniworld.evaluate import ALL, ItemResult, _score, accuracy_rows, gain_rows
from frankenlab.stats import wilson_interval
from frankenlab.tasks import TaskItem, normalize_answer_type


def _item(i: int, family: str, answer: str, answer_type: str = "int") -> TaskItem:
    return TaskItem(id=f"x{i}", question="q?", answer=answer, answer_type=normalize_answer_type(answer_type, "test"),
                    meta={"family": family})


def test_strict_versus_lenient():
    r = _score(_item(0, "count", "5"), " 5 \n")
    assert r.strict and r.lenient
    r = _score(_item(0, "count", "5"), "The answer is 5.")
    assert not r.strict and r.lenient
    r = _score(_item(0, "color", "red", "str"), "Red")
    assert not r.strict and r.lenient
    r = _score(_item(0, "locate", "2,3", "str"), "23")
    assert not r.strict and not r.lenient
    r = _score(_item(0, "count", "5"), "6")
    assert not r.strict and not r.lenient


def _res(i: int, family: str, strict: bool, lenient: bool) -> ItemResult:
    return ItemResult(f"x{i}", family, "1", "?", strict, lenient, "exact")


def test_accuracy_rows_match_hand_counts():
    results = [_res(0, "a", True, True), _res(1, "a", False, True), _res(2, "a", False, False),
               _res(3, "b", True, True)]
    rows = {r["family"]: r for r in accuracy_rows("IN", results)}
    assert set(rows) == {"a", "b", ALL}
    a = rows["a"]
    assert (a["n"], a["strict_correct"], a["lenient_correct"]) == (3, 1, 2)
    assert a["strict_acc"] == pytest.approx(1 / 3) and a["lenient_acc"] == pytest.approx(2 / 3)
    assert (a["strict_lo"], a["strict_hi"]) == pytest.approx(wilson_interval(1, 3))
    assert rows[ALL]["n"] == 4 and rows[ALL]["strict_correct"] == 2
    assert all(r["model"] == "IN" for r in rows.values())


def test_gains_are_paired_differences():
    base = [_res(i, "a", i % 2 == 0, True) for i in range(20)]
    new = [_res(i, "a", True, True) for i in range(20)]
    rows = {r["family"]: r for r in gain_rows("RL", new, "IN", base, score="strict", n_boot=500)}
    a = rows["a"]
    assert a["gain"] == pytest.approx(np.mean([1.0] * 20) - np.mean([i % 2 == 0 for i in range(20)]))
    assert a["gain_lo"] <= a["gain"] <= a["gain_hi"] and a["gain_lo"] > 0
    assert a["versus"] == "IN" and a["score"] == "strict"
    lenient = gain_rows("RL", new, "IN", base, score="lenient", n_boot=100)
    assert all(r["gain"] == 0 for r in lenient)


def test_gains_need_the_same_items():
    with pytest.raises(TaskError, match="same items"):
        gain_rows("RL", [_res(0, "a", True, True)], "IN", [_res(1, "a", True, True)])
