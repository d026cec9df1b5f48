"""Answer extraction: priority order, balanced braces, and what must not be extracted."""

from __future__ import annotations

import pytest

from frankenlab.grading.extract import extract_answer, letter_of, strip_reasoning
from frankenlab.grading.normalize import normalize_answer, parse_number

CHOICES = ["cat", "dog", "bird", "fish"]


@pytest.mark.parametrize(
    ("response", "choices", "expected"),
    [
        ("<answer>12</answer>", None, ("12", "answer_tag")),
        ("<answer>3</answer> ... <answer> 7 </answer>", None, ("7", "answer_tag")),
        ("Reasoning \\boxed{5}. <answer>\\boxed{9}</answer>", None, ("9", "answer_tag")),
        ("<answer>unfinished 42", None, ("unfinished 42", "answer_tag")),
        ("So \\boxed{1} or rather \\boxed{2}", None, ("2", "boxed")),
        ("\\boxed{\\frac{\\sqrt{3}}{2}}", None, ("\\frac{\\sqrt{3}}{2}", "boxed")),
        ("\\boxed{\\left\\{ x^{2} \\right\\}}", None, ("\\left\\{ x^{2} \\right\\}", "boxed")),
        ("cut off \\boxed{3} then \\boxed{\\frac{1}{", None, ("3", "boxed")),
        ("Thus the answer is 42.", None, ("42", "the_answer_is")),
        ("Answer: Paris", None, ("Paris", "the_answer_is")),
        ("**Final Answer:** $\\frac{1}{2}$.", None, ("$\\frac{1}{2}$", "the_answer_is")),
        ("The answer is 3.5 cm. Because", None, ("3.5 cm", "the_answer_is")),
        ("The answer is 12, because 3*4 = 12.", None, ("12", "the_answer_is")),
        ("The answer is (1, 2).", None, ("(1, 2)", "the_answer_is")),
        ("Final Answer: The final answer is $5$. I hope it is correct.", None, ("$5$", "the_answer_is")),
        ("Which answer is correct? Looking closely, I pick (C).", CHOICES, ("C", "mcq_letter")),
        ("Looking at the image, (B) fits best.", CHOICES, ("B", "mcq_letter")),
        ("B", CHOICES, ("B", "mcq_letter")),
        ("Option d", CHOICES, ("D", "mcq_letter")),
        ("It is a dog sitting on a mat.", CHOICES, ("dog", "mcq_text")),
        ("There are 1,234 people here.", None, ("1,234", "last_number")),
        ("It dropped to -3.5 today.", None, ("-3.5", "last_number")),
        ("The ratio is 3/4 overall.", None, ("3/4", "last_number")),
        ("About 45% of them.", None, ("45%", "last_number")),
        ("The side measures 12 cm.", None, ("12 cm", "last_number")),
        ("so the length is $\\sqrt{2}$ in the end", None, ("\\sqrt{2}", "last_number")),
        ("we get $x = \\frac{3}{4}$ here", None, ("\\frac{3}{4}", "last_number")),
        ("2x", None, ("2x", "whole")),
        ("Paris", None, ("Paris", "whole")),
        ("", None, (None, "none")),
        ("   ", None, (None, "none")),
        ("I cannot determine this from the picture because it is blurry and the label is unreadable.", None,
         (None, "none")),
        ("<think>The answer is 5</think>The answer is 7", None, ("7", "the_answer_is")),
        ("<think>the answer is 5, wait let me", None, (None, "none")),
    ],
)
def test_extract_answer(response: str, choices: list[str] | None, expected: tuple[str | None, str]) -> None:
    assert extract_answer(response, choices) == expected


def test_letters_limited_to_number_of_choices() -> None:
    assert extract_answer("(E)", CHOICES) == ("(E)", "whole")
    assert letter_of("E", "ABCD") is None
    assert letter_of("(b)", "ABCD") == "B"
    assert letter_of("B. dog", "ABCD") == "B"
    assert letter_of("A dog", "ABCD") is None  # an article, not an option


def test_strip_reasoning() -> None:
    assert strip_reasoning("<think>x</think> y").strip() == "y"
    assert strip_reasoning("x </think> y").strip() == "y"
    assert strip_reasoning("a <think> b").strip() == "a"


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("  $\\text{Paris}$. ", "paris"),
        ("\\left( 1,2 \\right)", "(1, 2)"),
        ("\\dfrac{3}{4}", "3/4"),
        ("\\frac{\\frac{1}{2}}{3}", "(1/2)/3"),
        ("30^\\circ", "30"),
        ("30°", "30"),
        ("30 degrees", "30"),
        ("1,234,567", "1234567"),
        ("5 cm", "5 cm"),
        ("\\boxed{42}", "42"),
    ],
)
def test_normalize_answer(text: str, normalized: str) -> None:
    assert normalize_answer(text) == normalized


def test_normalize_strip_units() -> None:
    assert normalize_answer("5 cm", strip_units=True) == "5"
    assert normalize_answer("5\\text{ cm}", strip_units=True) == "5"
    assert normalize_answer("red car", strip_units=True) == "red car"


@pytest.mark.parametrize(
    ("text", "value", "percent", "unit"),
    [
        ("0.75", "3/4", False, None),
        ("\\frac{3}{4}", "3/4", False, None),
        ("-1,234.5", "-2469/2", False, None),
        ("2\\frac{1}{2}", "5/2", False, None),
        ("1.5e3", "1500", False, None),
        ("1.5 \\times 10^{3}", "1500", False, None),
        ("50\\%", "50", True, None),
        ("50 percent", "50", True, None),
        ("12 centimeters", "12", False, "cm"),
        ("3 square meters", "3", False, "m^2"),
    ],
)
def test_parse_number(text: str, value: str, percent: bool, unit: str | None) -> None:
    from fractions import Fraction

    parsed = parse_number(text)
    assert parsed is not None
    assert parsed.value == Fraction(value)
    assert parsed.percent is percent
    assert parsed.unit == unit


@pytest.mark.parametrize("text", ["2x", "3 pi", "\\sqrt{2}", "Paris", "1/0", "5 or 6", ""])
def test_parse_number_rejects_non_numbers(text: str) -> None:
    assert parse_number(text) is None
