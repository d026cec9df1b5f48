"""The GRPO reward: exact match (strict) or frankenlab grading (lenient), None when there is no gold."""

from __future__ import annotations

import pytest

from frankenlab.errors import FrankenlabError
from frankenlab.rl import ExactMatchReward, completion_text


def _msgs(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def test_strict_is_exact_string_equality_after_strip():
    r = ExactMatchReward("strict")
    out = r(prompts=[None] * 5, completions=["5", " 5\n", "5.", "The answer is 5", "7"], answer=["5"] * 5,
            answer_type=["int"] * 5, family=["count"] * 5)
    assert out == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_lenient_uses_grading():
    r = ExactMatchReward("lenient")
    out = r(prompts=[None] * 4, completions=["The answer is 5", "5.", "Red", "2, 3"], answer=["5", "5", "red", "2,3"],
            answer_type=["int", "int", "str", "str"])
    assert out == [1.0, 1.0, 1.0, 1.0]
    assert r(prompts=[None], completions=["6"], answer=["5"], answer_type=["int"]) == [0.0]


def test_conversational_completions_are_read():
    r = ExactMatchReward()
    assert completion_text(_msgs("red")) == "red"
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": "2,3"}]}]) == "2,3"
    assert r(prompts=[None, None], completions=[_msgs("red"), _msgs("blue")], answer=["red", "red"]) == [1.0, 0.0]


def test_missing_gold_is_none_and_counted():
    r = ExactMatchReward()
    out = r(prompts=[None] * 3, completions=["1", "2", "3"], answer=["1", "", None], family=["a", "a", "b"])
    assert out == [1.0, None, None]
    s = r.summary()
    assert (s["scored"], s["correct"], s["ungradable"]) == (1, 1, 2)
    assert s["per_family"] == {"a": 1.0}


def test_counters_accumulate_per_family():
    r = ExactMatchReward()
    r(prompts=[None] * 4, completions=["1", "0", "x", "y"], answer=["1", "1", "x", "x"], family=["f", "f", "g", "g"])
    assert r.summary()["per_family"] == {"f": 0.5, "g": 0.5}
    assert r.summary()["mean_reward"] == 0.5


def test_bad_inputs_fail_clearly():
    with pytest.raises(FrankenlabError, match="unknown reward mode"):
        ExactMatchReward("fuzzy")
    with pytest.raises(FrankenlabError, match="'answer' column"):
        ExactMatchReward()(prompts=[None], completions=["1"])
    with pytest.raises(FrankenlabError, match="cannot read a completion"):
        completion_text(3)


def test_trl_reads_its_name():
    assert ExactMatchReward("strict").__name__ == "exact_match_strict"
