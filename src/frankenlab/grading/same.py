"""Whether two answers mean the same: one normalization for both sides, so "changed", "flipped" and "correct" agree.

:func:`frankenlab.grading.grade` asks whether a response is right against a gold answer of a known type;
:func:`same_answer` is its symmetric companion for two *model* answers (the swap probe's "did the answer
change?", the study's "did it flip to the source's answer?"), built on the same extraction and number
parsing. A response and a gold answer go through the same steps: take the answer span (answer tags,
\\boxed{}, "the answer is", else the short response; `frankenlab.grading.extract`), then read it as

* a box ``[x1, y1, x2, y2]`` (four numbers in brackets) — boxes match by IoU ≥ 0.5, not by string;
* a grid position ``r,c`` ("(2, 3)", "row 2, column 3") — the mini-world's grounding answers;
* a number ("3", "3.0", "three", "1,000") — compared by exact value;
* otherwise text: lower case, no surrounding punctuation or quotes, single spaces.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from frankenlab.grading.extract import extract_answer
from frankenlab.grading.normalize import normalize_answer, parse_number

__all__ = ["IOU_THRESHOLD", "Answer", "box_iou", "normalize", "same_answer"]

IOU_THRESHOLD = 0.5
_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_NUM = r"[-+]?\d+(?:\.\d+)?"
_BOX_RE = re.compile(rf"^[\[(]\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*[\])]$")
_POS_RE = re.compile(r"^\(?\s*(?:row\s*)?(\d+)\s*(?:,|\s)\s*(?:col(?:umn)?\s*)?(\d+)\s*\)?$")


@dataclass(frozen=True)
class Answer:
    """A normalized answer: `kind` is box / position / number / text / empty; `key` compares equal."""

    kind: str
    key: str
    box: tuple[float, float, float, float] | None = None


def _number_key(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().strip(".;:!?").strip()).lower()


def _structured(flat: str) -> Answer | None:
    m = _BOX_RE.match(flat)
    if m:
        x1, y1, x2, y2 = (float(g) for g in m.groups())
        box = (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
        return Answer("box", "[" + ",".join(f"{v:g}" for v in box) + "]", box)
    m = _POS_RE.match(flat)
    if m and not re.fullmatch(r"\d{1,3},\d{3}", flat):  # "1,000" is a number, not row 1 column 000
        return Answer("position", f"{int(m.group(1))},{int(m.group(2))}")
    return None


def normalize(text: str | None) -> Answer:
    """Normalize a raw response or a gold answer (both the same way)."""
    if text is None or not str(text).strip():
        return Answer("empty", "")
    raw = str(text).strip()
    span, _method = extract_answer(raw)
    span = (span if span is not None else raw).strip()
    flat = _flat(span)
    for candidate in (_flat(raw), flat):  # the raw text first: extraction would cut "row 2, column 3" to "3"
        structured = _structured(candidate)
        if structured is not None:
            return structured
    if flat in _WORDS:
        return Answer("number", str(_WORDS[flat]))
    number = parse_number(span)
    if number is not None and not number.unit:
        value = number.value / 100 if number.percent else number.value
        return Answer("number", _number_key(Fraction(value)))
    return Answer("text", normalize_answer(span))


def box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; 0 for empty boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def same_answer(a: str | Answer | None, b: str | Answer | None) -> bool:
    """Whether two answers mean the same (boxes by IoU ≥ 0.5); an empty answer matches nothing."""
    x = a if isinstance(a, Answer) else normalize(a)
    y = b if isinstance(b, Answer) else normalize(b)
    if x.kind == "empty" or y.kind == "empty":
        return False
    if x.kind == "box" and y.kind == "box":
        assert x.box is not None and y.box is not None
        return box_iou(x.box, y.box) >= IOU_THRESHOLD
    return x.key == y.key
