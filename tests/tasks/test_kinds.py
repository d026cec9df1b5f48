"""Item kinds (perception / reasoning) from what the item and its task say."""

from __future__ import annotations

import pytest

from frankenlab.errors import TaskError
from frankenlab.tasks.schema import item_from_row, kind_of


@pytest.mark.parametrize(("kw", "kind"), [
    ({"meta": {"family": "count", "ability": "perception"}}, "perception"),
    ({"meta": {"family": "count_arith", "ability": "vision_to_reasoning"}}, "reasoning"),
    ({"meta": {"family": "count_arith"}}, "reasoning"),  # reasoning words win over perception words
    ({"meta": {"family": "text_arith", "ability": "text_reasoning"}}, "reasoning"),
    ({"meta": {"family": "read_digit"}}, "perception"),
    ({"meta": {"family": "locate"}}, "perception"),
    ({"task": "counting"}, "perception"),
    ({"task": "ocr"}, "perception"),
    ({"task": "grounding"}, "perception"),
    ({"task": "recognition"}, "perception"),
    ({"task": "perception_control"}, "perception"),
    ({"task": "gsm8k"}, "reasoning"),
    ({"task": "math500"}, "reasoning"),
    ({"task": "miniworld_text_arith"}, "reasoning"),
    ({"task": "mathvista-general", "meta": {"category": "general-vqa"}}, "reasoning"),
    ({"task": "mine", "answer_type": "math"}, "reasoning"),
    ({"task": "mine", "choices": ("red", "blue")}, "perception"),
    ({"task": "mine", "meta": {"skills": ["logical reasoning"]}, "choices": ("a", "b")}, "reasoning"),
    ({"task": "mine"}, "reasoning"),  # says nothing: the long budget
    ({"task": "gsm8k", "meta": {"kind": "perception"}}, "perception"),  # explicit wins
])
def test_kind_of(kw, kind):
    assert kind_of(**kw) == kind


def test_items_carry_their_kind_and_bad_kinds_are_refused():
    item = item_from_row({"id": "a", "question": "How many?", "answer": "3", "family": "count"})
    assert item.kind("tasks") == "perception"
    explicit = item_from_row({"id": "b", "question": "How many?", "answer": "3", "kind": "reasoning"})
    assert explicit.kind("counting") == "reasoning"
    with pytest.raises(TaskError, match="line 3: 'kind' must be one of"):
        item_from_row({"id": "c", "question": "Q", "answer": "1", "kind": "long"}, where="t.jsonl, line 3")
