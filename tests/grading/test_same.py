"""One normalization for responses and gold answers: numbers, case, punctuation, positions, boxes by IoU."""

from __future__ import annotations

import pytest

from frankenlab.grading.same import box_iou, normalize, same_answer


@pytest.mark.parametrize(("a", "b"), [
    ("3", "3.0"), ("Three.", "3"), ("The answer is 4", "4"), ("<answer>RED</answer>", "red"), ("Red!", "red"),
    ("(2, 3)", "2,3"), ("row 2, column 3", "2,3"), ("1,000", "1000"), ("\\boxed{7}", "7"),
    ("[0, 0, 10, 10]", "[1, 1, 10, 10]"),
])
def test_same(a, b):
    assert same_answer(a, b) and same_answer(b, a)


@pytest.mark.parametrize(("a", "b"), [
    ("3", "4"), ("2,3", "3,2"), ("red", "blue"), ("", ""), ("[0, 0, 10, 10]", "[5, 5, 20, 20]"), ("1,2", "12"),
])
def test_different(a, b):
    assert not same_answer(a, b)


def test_box_iou_against_hand_computation():
    assert box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    assert normalize("[10, 10, 0, 0]").box == (0, 0, 10, 10)
    assert normalize("2,3").kind == "position" and normalize("3").kind == "number"
