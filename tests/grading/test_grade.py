"""Grading verdicts on real-world answer styles, including the cases that must NOT match."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from frankenlab.errors import GradingError
from frankenlab.grading import Verdict, grade, grade_batch, math_verify_available

CHOICES = ["cat", "dog", "bird", "fish"]
HAS_MV = math_verify_available()

# (response, gold, choices, correct, rule)  -- rule None: not pinned (depends on math_verify)
CASES: list[tuple[str, str, list[str] | None, bool, str | None]] = [
    # boxed LaTeX, fractions vs decimals: equal iff exactly equal
    ("The answer is \\boxed{\\frac{3}{4}}", "0.75", None, True, "numeric"),
    ("\\boxed{0.75}", "\\frac{3}{4}", None, True, "numeric"),
    ("\\boxed{\\dfrac{6}{8}}", "0.75", None, True, "numeric"),
    ("Result: \\boxed{\\mathrm{\\frac{10}{4}}}", "2.5", None, True, "numeric"),  # nested braces
    ("So \\boxed{\\text{\\{Paris\\}}} hmm, no: \\boxed{\\text{Paris}}", "Paris", None, True, "exact"),
    ("0.5", "1/2", None, True, "numeric"),
    ("2 1/2", "2.5", None, True, "numeric"),
    ("1.5e3", "1500", None, True, "numeric"),
    ("The answer is 42", "42.0", None, True, "numeric"),
    ("0.333", "1/3", None, False, "numeric"),
    ("0.333333", "\\frac{1}{3}", None, False, "numeric"),
    # multiple choice: letters, texts, wrong letters
    ("(B)", "B", CHOICES, True, "mcq_letter"),
    ("B", "B", CHOICES, True, "mcq_letter"),
    ("The answer is B.", "B", CHOICES, True, "mcq_letter"),
    ("**Answer:** (B) dog", "B", CHOICES, True, "mcq_letter"),
    ("The answer is C.", "B", CHOICES, False, "mcq_letter"),
    ("(A)", "dog", CHOICES, False, "mcq_letter"),
    ("dog", "B", CHOICES, True, "mcq_text"),
    ("The answer is dog.", "dog", CHOICES, True, "mcq_text"),
    ("I'm fairly sure the picture shows a bird.", "C", CHOICES, True, "mcq_text"),
    ("I'm fairly sure the picture shows a bird.", "B", CHOICES, False, "mcq_text"),
    ("\\boxed{E}", "A", CHOICES, False, "mcq_unmatched"),
    ("(b)", "B", None, True, "mcq_letter"),  # letter gold without choices
    ("<answer>(B) dog</answer>", "B", CHOICES, True, "mcq_letter"),
    ("The correct option is B", "B", CHOICES, True, "mcq_letter"),
    ("A. cat B. dog C. bird. I choose B.", "B", CHOICES, True, "mcq_letter"),
    ("The answer is not B, it is C.", "C", CHOICES, True, "mcq_letter"),
    ("This is A cat.", "A", CHOICES, True, "mcq_text"),  # the article "A" is not option A
    ("It is clearly a dog.", "B", ["A. cat", "B. dog"], True, "mcq_text"),  # labelled choices
    ("There are 4 apples.", "4", ["3", "4", "5", "6"], True, "mcq_text"),
    # answer tags
    ("<answer>12</answer>", "12", None, True, "exact"),
    ("<think>maybe 11</think><answer> 12 </answer>", "12", None, True, "exact"),
    # units
    ("12 cm", "12", None, True, "exact"),
    ("The perimeter is 12 cm.", "12", None, True, "exact"),
    ("12", "12 cm", None, True, "numeric"),
    ("5 centimeters", "5 cm", None, True, "numeric"),
    ("5 m", "5 cm", None, False, "numeric"),
    ("Answer: 7 apples", "7", None, True, "numeric"),
    # degrees
    ("30°", "30", None, True, "exact"),
    ("$30^\\circ$", "30°", None, True, "exact"),
    ("The angle is 30 degrees.", "30", None, True, "exact"),
    ("30^{\\circ}", "30 degrees", None, True, "exact"),
    # thousands separators
    ("1,234", "1234", None, True, "exact"),
    ("1234", "1,234", None, True, "exact"),
    ("The population is 1,234,567.", "1234567", None, True, "exact"),
    # negative numbers
    ("-3.5", "-3.5", None, True, "exact"),
    ("It fell to \u22123.5 degrees.", "-3.5", None, True, "exact"),
    ("3.5", "-3.5", None, False, "numeric"),
    # percent (documented policy: a % is read as written or /100, only on its own side)
    ("50%", "50", None, True, "numeric"),
    ("50%", "0.5", None, True, "numeric"),
    ("0.5", "50%", None, True, "numeric"),
    ("0.5", "50", None, False, "numeric"),
    # text, assignments, currency
    ("Paris", "paris", None, True, "exact"),
    ("sirap", "Paris", None, False, "exact"),
    ("Route 66", "Route 66", None, True, "exact"),
    ("x = 5", "5", None, True, "exact"),
    ("$5", "5", None, True, "exact"),
    ("Answer:\n\n12", "12", None, True, "exact"),
    ("Yes, there is a dog on the sofa.", "Yes", None, True, "exact"),
    ("No, there is not.", "yes", None, False, "exact"),
    # near misses that must NOT match (no hidden 1 % tolerance)
    ("101", "100", None, False, "numeric"),
    ("99", "100", None, False, "numeric"),
    ("12", "120", None, False, "numeric"),
    ("120", "12", None, False, "numeric"),
    ("2x", "2", None, False, None),
    ("10^{10^{10}}", "10", None, False, "numeric"),  # not its last number, and never sent to sympy
    ("The answer is 12 or 13.", "12", None, False, "numeric"),  # hedging is not an answer
    # no answer at all
    ("", "5", None, False, "no_answer"),
    ("I cannot determine this from the picture because it is blurry and the label is unreadable.", "5",
     None, False, "no_answer"),
    ("<think>the answer is probably 5 but let me check", "5", None, False, "no_answer"),
    ("", "B", CHOICES, False, "no_answer"),
]


@pytest.mark.parametrize(("response", "gold", "choices", "correct", "rule"), CASES)
def test_grade_table(response: str, gold: str, choices: list[str] | None, correct: bool, rule: str | None) -> None:
    verdict = grade(response, gold, choices)
    assert verdict.correct is correct, verdict
    if rule is not None:
        assert verdict.rule == rule, verdict


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 40


def test_no_answer_verdict_fields() -> None:
    v = grade("", "5")
    assert v == Verdict(correct=False, extracted=None, rule="no_answer", extraction="none")


def test_verdict_is_frozen() -> None:
    v = grade("5", "5")
    with pytest.raises(AttributeError):
        v.correct = False  # type: ignore[misc]


def test_tolerance_is_opt_in() -> None:
    assert not grade("101", "100").correct
    assert grade("101", "100", tolerance=0.01).correct
    assert not grade("102", "100", tolerance=0.01).correct
    assert grade("0.001", "0", tolerance=0.01).correct  # absolute when the gold is 0


def test_answer_type_modes() -> None:
    assert not grade("5.0", "5", answer_type="text").correct
    assert grade("5.0", "5", answer_type="numeric").correct
    assert grade("(C)", "C", answer_type="mcq").correct
    with pytest.raises(GradingError):
        grade("5", "5", answer_type="essay")


def test_invalid_inputs_raise_grading_error() -> None:
    with pytest.raises(GradingError):
        grade("5", "")
    with pytest.raises(GradingError):
        grade(None, "5")  # type: ignore[arg-type]
    with pytest.raises(GradingError):
        grade("5", "5", tolerance=-0.1)
    with pytest.raises(GradingError):
        grade("(A)", "zebra", CHOICES)  # gold names no option


def test_grade_batch() -> None:
    verdicts = grade_batch(["(B)", "12 cm", ""], ["B", "12", "3"], [CHOICES, None, None])
    assert [v.correct for v in verdicts] == [True, True, False]
    assert [v.correct for v in grade_batch(["101"], ["100"], tolerance=0.02)] == [True]
    with pytest.raises(GradingError):
        grade_batch(["a"], ["a", "b"])
    with pytest.raises(GradingError):
        grade_batch(["a"], ["a"], [None, None])


MV_CASES = [
    ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}", True),
    ("$x^{2} + 2x + 1$", "(x+1)^2", True),
    ("\\boxed{\\sqrt{4}}", "2", True),
    ("\\sqrt{2}", "1.414214", False),  # no silent 6-decimal rounding
    ("2x", "2", False),
]


@pytest.mark.skipif(not HAS_MV, reason="math-verify not installed")
@pytest.mark.parametrize(("response", "gold", "correct"), MV_CASES)
def test_math_verify_rule(response: str, gold: str, correct: bool) -> None:
    verdict = grade(response, gold)
    assert verdict.correct is correct, verdict
    assert verdict.rule == "math_verify", verdict


def test_math_verify_can_be_switched_off() -> None:
    v = grade("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}", use_math_verify=False)
    assert v.rule != "math_verify" and v.correct is False


def test_missing_math_verify_is_never_claimed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "math_verify", None)  # makes `import math_verify` fail
    assert not math_verify_available()
    for response, gold, _ in MV_CASES:
        assert grade(response, gold).rule != "math_verify"
    assert grade("\\boxed{0.75}", "\\frac{3}{4}").correct  # the numeric rule does not need it


def test_grade_from_worker_threads() -> None:
    """math_verify's signal timeouts fail off the main thread; grade must disable them."""
    items = [(r, g, c) for r, g, c, _, _ in CASES] + [(r, g, None) for r, g, _ in MV_CASES]
    expected = [grade(r, g, c) for r, g, c in items]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda item: grade(*item), items))
    assert got == expected
    if HAS_MV:
        assert any(v.rule == "math_verify" for v in got)
