"""Decide whether a model response answers a question correctly, and record why.

Rules, in order (the first that decides is recorded in ``Verdict.rule``):

* ``no_answer``     nothing could be extracted from the response -> wrong.
* ``mcq_letter``    multiple choice, the response names an option letter (a wrong letter is wrong).
* ``mcq_text``      multiple choice, the response gives an option's text (or its number).
* ``mcq_unmatched`` multiple choice, the response names no option -> wrong.
* ``exact``         normalized strings are equal (see :func:`normalize_answer`).
* ``numeric``       both sides are plain numbers: exact rational equality, or within ``tolerance``
                    (relative). When the gold is a plain number, a plain-number response is
                    decided here and never reaches math_verify (whose 6-decimal rounding would
                    otherwise accept 0.333333 for 1/3).
* ``math_verify``   symbolic equivalence (``\\sqrt{2}/2`` == ``\\frac{1}{\\sqrt{2}}``) via the optional
                    ``math-verify`` package, only for math-looking answers and only if installed.

Decisions on ambiguous cases:

* Fractions vs decimals: equal iff the values are exactly equal ("3/4" == "0.75" == ``\\frac{3}{4}``;
  "1/3" != "0.333"). No default tolerance: the paper's scripts accepted 1 % relative error, we do not.
* Percent: a "%" may be read either as written or divided by 100, but only on the side that
  carries it: gold "50%" accepts "50%", "50" and "0.5"; gold "0.5" accepts "50%"; gold "50"
  accepts "50%"; gold "50" does NOT accept "0.5" (neither side has a "%").
* Units: a unit on the response is ignored when the gold has none ("12 cm" for gold "12"); a bare
  number is accepted for a gold with a unit; two different units are wrong ("5 m" for "5 cm").
  Degree marks are always ignored ("30°" == "30^\\circ" == "30 degrees" == "30").
* Multiple choice: the gold may be a letter or a choice's text; an explicit letter in the response
  wins over text; a letter outside the options ("E" of 4) names nothing.
"""

from __future__ import annotations

import inspect
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from frankenlab.errors import GradingError
from frankenlab.grading.extract import choice_text, extract_answer, letter_of, option_letters, strip_reasoning
from frankenlab.grading.normalize import (
    ParsedNumber,
    looks_like_math,
    normalize_answer,
    parse_number,
    strip_math_wrappers,
)

__all__ = ["ANSWER_TYPES", "RULES", "Verdict", "grade", "grade_batch", "math_verify_available"]

ANSWER_TYPES = ("mcq", "numeric", "text", "math")
# math_verify rounds floats to this many decimals before comparing (its default, 6, is a hidden tolerance).
_MV_FLOAT_ROUNDING = 12


class _KnownTimeoutNotice(logging.Filter):
    """Drops math_verify's "Timeout is disabled" warning: we switch its timeout off on purpose (see
    `_math_verify`) and bound its input instead, so the warning only adds noise to every run's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.grader", "math_verify.parser"):
    logging.getLogger(_name).addFilter(_KnownTimeoutNotice())
RULES = ("no_answer", "mcq_letter", "mcq_text", "mcq_unmatched", "exact", "numeric", "math_verify")


@dataclass(frozen=True, slots=True)
class Verdict:
    """Outcome of grading one response: the decision, the span judged, and which rules decided.

    ``extracted`` is what the response was judged on (None when nothing was found);
    ``rule`` names the comparison that decided (see ``RULES``); ``extraction`` names how the span
    was found ("answer_tag", "boxed", "the_answer_is", "mcq_letter", "mcq_text", "last_number",
    "whole", "none").
    """

    correct: bool
    extracted: str | None
    rule: str
    extraction: str


def math_verify_available() -> bool:
    """Whether the optional ``math-verify`` package can be imported (log it next to results)."""
    try:
        import math_verify  # noqa: F401
    except ImportError:
        return False
    return True


def _math_verify(gold: str, pred: str, tolerance: float) -> bool | None:
    """math_verify's verdict, or None when it is unavailable or failed (then it decides nothing).

    Timeouts are disabled (``parsing_timeout=None``, ``timeout_seconds=None``) because math_verify
    implements them with ``signal.alarm``, which raises off the main thread; input is bounded by
    :func:`looks_like_math` instead. ``float_rounding`` is raised from its default 6 to 12 decimals so
    that a decimal is not silently accepted for an irrational gold (1.414214 for sqrt(2));
    ``tolerance`` > 0 re-enables approximate numeric agreement explicitly.
    """
    try:
        from math_verify import parse, verify
    except ImportError:
        return None
    parse_params = inspect.signature(parse).parameters
    verify_params = inspect.signature(verify).parameters
    parse_kw: dict[str, object] = {}
    verify_kw: dict[str, object] = {}
    if "parsing_timeout" in parse_params:
        parse_kw["parsing_timeout"] = None
    if "timeout_seconds" in verify_params:
        verify_kw["timeout_seconds"] = None
    if "float_rounding" in verify_params:
        verify_kw["float_rounding"] = _MV_FLOAT_ROUNDING
    off_main = threading.current_thread() is not threading.main_thread()
    if off_main and ("parsing_timeout" not in parse_kw or "timeout_seconds" not in verify_kw):
        return None  # this math_verify version cannot switch off its signal-based timeout
    try:
        gold_parsed = parse(f"${strip_math_wrappers(gold)}$", **parse_kw)
        pred_parsed = parse(f"${strip_math_wrappers(pred)}$", **parse_kw)
        if not gold_parsed or not pred_parsed:
            return None
        same = bool(verify(gold_parsed, pred_parsed, **verify_kw))
    except Exception:  # a parser crash means "undecided", not a wrong answer
        return None
    if same or tolerance <= 0:
        return same
    try:
        g, p = complex(gold_parsed[0].evalf()), complex(pred_parsed[0].evalf())
    except (TypeError, ValueError, AttributeError):
        return False  # not numeric: symbolic disagreement stands
    return abs(p - g) <= (tolerance * abs(g) if g != 0 else tolerance)


def _numbers_equal(pred: ParsedNumber, gold: ParsedNumber, tolerance: float) -> bool:
    """Exact (or relative-tolerance) equality with the percent and unit policy of the module doc."""
    if pred.unit is not None and gold.unit is not None and pred.unit != gold.unit:
        return False
    preds = [pred.value] + ([pred.value / 100] if pred.percent and not gold.percent else [])
    golds = [gold.value] + ([gold.value / 100] if gold.percent and not pred.percent else [])
    tol = Fraction(tolerance)
    for g in golds:
        for p in preds:
            if p == g:
                return True
            if tol > 0:
                bound = tol * abs(g) if g != 0 else tol
                if abs(p - g) <= bound:
                    return True
    return False


def _strip_assignment(pred: str, gold: str) -> str:
    """"x = 5" answers "5": drop a leading ``name =`` unless the gold itself is an equation."""
    if "=" in gold:
        return pred
    m = re.fullmatch(r"\s*\$?\s*[A-Za-z]\w{0,2}(?:_\{?\w+\}?)?\s*=\s*(.+)", pred, flags=re.DOTALL)
    return m.group(1).rstrip("$ ").strip() if m else pred


def _grade_free(pred: str, gold: str, *, answer_type: str | None, tolerance: float,
                use_math_verify: bool) -> tuple[bool, str]:
    """(correct, rule) for a free-form answer already extracted from the response."""
    pred = _strip_assignment(pred, gold)
    gold_n = normalize_answer(gold)
    gold_num = parse_number(gold) if answer_type != "text" else None
    if normalize_answer(pred) == gold_n:
        return True, "exact"
    if gold_num is None or gold_num.unit is None:
        if normalize_answer(pred, strip_units=True) == normalize_answer(gold, strip_units=True):
            return True, "exact"
    if gold_n in ("yes", "no"):
        first = re.match(r"(yes|no)\b", normalize_answer(pred))
        if first is not None:  # "Yes, there is a dog." answers a yes/no question with "yes"
            return first.group(1) == gold_n, "exact"
    if answer_type == "text":
        return False, "exact"
    pred_num = parse_number(pred)
    if gold_num is not None and pred_num is not None:
        return _numbers_equal(pred_num, gold_num, tolerance), "numeric"
    allow_mv = use_math_verify and answer_type in (None, "math")
    if allow_mv and looks_like_math(gold) and looks_like_math(pred):
        verdict = _math_verify(gold, pred, tolerance)
        if verdict is not None:
            return verdict, "math_verify"
    return False, ("numeric" if gold_num is not None else "exact")


def _gold_choice_index(answer: str, choices: Sequence[str] | None, letters: str) -> int:
    """Index of the gold option, from a letter or a choice's text; GradingError if it names none."""
    letter = letter_of(answer, letters)
    if letter is not None and (not choices or re.fullmatch(r"\(?[A-Za-z]\)?[.:)]?", answer.strip())):
        return letters.index(letter)
    if choices:
        idx = _choice_index(answer, choices)
        if idx is not None:
            return idx
        if letter is not None:
            return letters.index(letter)
        raise GradingError(
            f"gold answer {answer!r} is neither an option letter ({letters[0]}-{letters[-1]}) nor the text "
            f"of one of the {len(choices)} choices; fix the task data or pass answer_type=None"
        )
    raise GradingError(
        f"gold answer {answer!r} is not an option letter and no choices were given; "
        "pass choices or a letter gold"
    )


def _choice_index(text: str, choices: Sequence[str]) -> int | None:
    """Index of the one choice whose text (or number) equals ``text``; None if none or ambiguous."""
    letters = option_letters(len(choices))
    target = normalize_answer(text)
    plain = [normalize_answer(choice_text(c, letters[i])) for i, c in enumerate(choices)]
    hits = [i for i, c in enumerate(plain) if c == target]
    if not hits:
        num = parse_number(text)
        if num is not None:
            for i, c in enumerate(choices):
                cnum = parse_number(choice_text(c, letters[i]))
                if cnum is not None and _numbers_equal(num, cnum, 0.0):
                    hits.append(i)
    if not hits:  # a sentence that mentions exactly one choice's text
        hay = f" {target} "
        found = [i for i, c in enumerate(plain) if c and re.search(rf"(?<!\w){re.escape(c)}(?!\w)", hay)]
        hits = [i for i in found if not any(j != i and plain[i] in plain[j] for j in found)]
    return hits[0] if len(hits) == 1 else None


def _grade_mcq(response: str, answer: str, choices: Sequence[str] | None) -> Verdict:
    letters = option_letters(len(choices) if choices else 0)
    gold_idx = _gold_choice_index(answer, choices, letters)
    text, method = extract_answer(response, choices, letter_mcq=True)
    if text is None:
        return Verdict(False, None, "no_answer", method)
    letter = letter_of(text, letters)
    if letter is not None:
        return Verdict(letters.index(letter) == gold_idx, text, "mcq_letter", method)
    if choices:
        idx = _choice_index(text, choices)
        if idx is not None:
            return Verdict(idx == gold_idx, text, "mcq_text", method)
    return Verdict(False, text, "mcq_unmatched", method)


def _is_letter_gold(answer: str) -> bool:
    """A gold of one capital letter ("B", "(B)") means multiple choice even without the choices."""
    return re.fullmatch(r"\(?[A-Z]\)?", answer.strip()) is not None


def grade(
    response: str,
    answer: str,
    choices: list[str] | None = None,
    *,
    answer_type: str | None = None,
    tolerance: float = 0.0,
    use_math_verify: bool = True,
) -> Verdict:
    """Grade ``response`` against the gold ``answer``; see the module docstring for rules and policy.

    ``answer_type``: None infers (multiple choice when ``choices`` are given or the gold is a
    single capital letter, else free form); "mcq", "numeric" (no math_verify), "text" (string
    match only) or "math" force a mode. ``tolerance`` is relative (absolute when the gold is 0)
    and applies to the numeric rule only.
    """
    if not isinstance(response, str) or not isinstance(answer, str):
        raise GradingError(
            f"grade() needs strings, got response={type(response).__name__}, answer={type(answer).__name__}"
        )
    if not answer.strip():
        raise GradingError("gold answer is empty; every graded item needs a reference answer")
    if answer_type is not None and answer_type not in ANSWER_TYPES:
        raise GradingError(f"unknown answer_type {answer_type!r}; use one of {', '.join(ANSWER_TYPES)} or None")
    if not (tolerance >= 0.0):
        raise GradingError(f"tolerance must be >= 0 (relative), got {tolerance!r}")
    if choices is not None and not all(isinstance(c, str) for c in choices):
        raise GradingError("choices must be a list of strings")
    if answer_type == "mcq" or (answer_type is None and (choices or _is_letter_gold(answer))):
        return _grade_mcq(response, answer, choices or None)

    text, method = extract_answer(response)
    if text is None:
        return Verdict(False, None, "no_answer", method)
    correct, rule = _grade_free(
        text, answer, answer_type=answer_type, tolerance=tolerance, use_math_verify=use_math_verify
    )
    if not correct and method == "last_number" and parse_number(answer) is None:
        # A text gold with a number in it ("Route 66"): the short response as a whole may match.
        whole = strip_reasoning(response).strip()
        if len(whole.split()) <= 12 and normalize_answer(whole) == normalize_answer(answer):
            return Verdict(True, whole, "exact", "whole")
    return Verdict(correct, text, rule, method)


def grade_batch(
    responses: Sequence[str],
    answers: Sequence[str],
    choices_list: Sequence[list[str] | None] | None = None,
    **kw: object,
) -> list[Verdict]:
    """Grade many items with shared options (``answer_type``, ``tolerance``, ``use_math_verify``)."""
    if len(responses) != len(answers):
        raise GradingError(f"{len(responses)} responses but {len(answers)} answers; they must pair up")
    if choices_list is not None and len(choices_list) != len(answers):
        raise GradingError(f"{len(choices_list)} choice lists but {len(answers)} answers; they must pair up")
    choices_seq = choices_list if choices_list is not None else [None] * len(answers)
    return [
        grade(r, a, c, **kw)  # type: ignore[arg-type]
        for r, a, c in zip(responses, answers, choices_seq, strict=True)
    ]
