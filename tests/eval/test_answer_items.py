"""answer_items: eval's loop in memory; the mini-world's evaluator answers and grades exactly as eval does."""

from __future__ import annotations

import json

import pytest

from frankenlab.grading import grade
from frankenlab.miniworld.evaluate import evaluate as miniworld_evaluate
from frankenlab.miniworld.tasks import make_split
from frankenlab.runtime.generate import DEFAULT_MAX_NEW_TOKENS, GenerationSettings
from frankenlab.tasks import Task, TaskItem


class _Fake:
    """A backend that answers from a table and records each call's prompts and answer length."""

    def __init__(self, answers: dict[str, str], batch_size: int = 2, fail_on: str | None = None) -> None:
        self.settings = GenerationSettings(max_new_tokens=None, batch_size=batch_size)
        self.answers, self.fail_on, self.calls = answers, fail_on, []

    def generate(self, prompts):
        self.calls.append(([p.text for p in prompts], self.settings.max_new_tokens))
        if self.fail_on is not None and any(p.text == self.fail_on for p in prompts):
            raise RuntimeError("boom")
        return [self.answers[p.text] for p in prompts]


def _items() -> list[TaskItem]:
    rows = [("a", "What is 2 plus 2?", "4", "numeric", {}),
            ("b", "How many circles?", "3", "numeric", {"family": "count"}),
            ("c", "What colour?", "red", "text", {"family": "color"}),
            ("d", "What is 5 times 3?", "15", "numeric", {})]
    items = tuple(TaskItem(id=i, question=q, answer=a, answer_type=t, meta=m) for i, q, a, t, m in rows)
    return list(Task("t", items, "mem", "v1").items)


def test_records_in_item_order_one_length_per_kind_and_eval_grading():
    from frankenlab.eval.run import answer_items

    answers = {"What is 2 plus 2?": "The answer is 4.", "How many circles?": "2", "What colour?": "Red",
               "What is 5 times 3?": "15"}
    backend = _Fake(answers)
    seen = []
    recs = answer_items(backend, _items(), progress=seen.append)
    assert [r["item_id"] for r in recs] == ["a", "b", "c", "d"]
    for r, it in zip(recs, _items()):
        assert r["correct"] == grade(answers[it.question], it.answer, answer_type=it.answer_type).correct
        assert r["kind"] == it.kind("t") and r["max_new_tokens"] == DEFAULT_MAX_NEW_TOKENS[r["kind"]]
    assert [r["correct"] for r in recs] == [True, False, True, True]
    # generate calls: one kind each, at most batch_size prompts, and the length of that kind
    for texts, length in backend.calls:
        kinds = {next(it for it in _items() if it.question == t).kind("t") for t in texts}
        assert len(kinds) == 1 and len(texts) <= 2 and length == DEFAULT_MAX_NEW_TOKENS[kinds.pop()]
    assert seen[-1] == 4


def test_a_failing_item_is_recorded_not_raised():
    from frankenlab.eval.run import answer_items

    answers = {"What is 2 plus 2?": "4", "How many circles?": "3", "What colour?": "red", "What is 5 times 3?": "1"}
    recs = answer_items(_Fake(answers, fail_on="What is 5 times 3?"), _items())
    bad = [r for r in recs if r["error"]]
    assert [r["item_id"] for r in bad] == ["d"] and "boom" in bad[0]["error"] and not bad[0]["correct"]
    assert [r["correct"] for r in recs if not r["error"]] == [True, True, True]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from frankenlab.runtime.load import load
    from frankenlab.testing.models import save_tiny_checkpoint

    path = save_tiny_checkpoint("qwen2_5_vl", tmp_path_factory.mktemp("m") / "ckpt", seed=0, n_llm_layers=2,
                                n_vision_blocks=2)
    model, processor = load(path)
    return path, model, processor


def test_miniworld_evaluator_equals_frankenlab_eval(tiny, tmp_path):
    """Same model, same items: the mini-world's lenient score is eval's ``correct``, response for response."""
    from frankenlab.eval import evaluate

    path, model, processor = tiny
    items = make_split(6, 0, families=["count", "text_arith", "color"], split="test")
    task = Task("mw", tuple(items), "mem", "v1")
    mine = miniworld_evaluate(model, processor, task.items, max_new_tokens=3, batch_size=4)
    evaluate({"M": (model, processor)}, [task], settings="image", out_dir=tmp_path / "e", n_boot=100,
             generation=GenerationSettings(max_new_tokens=3, batch_size=4), plots=False)
    recs = {r["item_id"]: r for r in map(json.loads, (tmp_path / "e" / "items.jsonl").read_text().splitlines())}
    assert len(mine) == len(items) == len(recs)
    for r in mine:
        assert r.response == (recs[r.id]["response"] or "").strip() and r.lenient == recs[r.id]["correct"]
        assert r.strict == (r.response == r.answer.strip())
