"""Find the final answer inside a free-form model response.

Rules run in a fixed priority order and the first that fires wins, so the method recorded in a
``Verdict`` always says exactly why this span was taken:

1. ``answer_tag``    last ``<answer>...</answer>`` (an unclosed final ``<answer>`` runs to the end)
2. ``boxed``         last ``\\boxed{...}`` / ``\\fbox{...}`` with balanced (nested) braces
3. ``the_answer_is`` last "the answer is X" / "Answer: X" / "final answer: X"
4. ``mcq_letter``    last option letter "(B)", "B.", "B)", "option B" (only for multiple choice)
5. ``mcq_text``      the one choice text the response mentions (only for multiple choice)
6. ``whole``         a one-line response that is itself an answer ("2x", "\\sqrt{2}", "12 cm")
7. ``last_number``   last number ("1,234", "-3.5", "3/4", "\\frac{3}{4}", "50%", "12 cm"); when it
                     sits inside inline math, that math expression (right of its last "=")
8. ``whole``         otherwise a short response (<= 12 words) taken as a whole
9. ``none``          nothing usable

Reasoning inside ``<think>...</think>`` is ignored, and text after an unclosed ``<think>`` (a
generation cut off while still reasoning) is ignored too: a guess inside unfinished reasoning
is not the model's answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from frankenlab.grading.normalize import find_balanced, looks_like_math, normalize_answer, parse_number

__all__ = ["EXTRACTION_METHODS", "choice_text", "extract_answer", "letter_of", "option_letters", "strip_reasoning"]

EXTRACTION_METHODS = (
    "answer_tag", "boxed", "the_answer_is", "mcq_letter", "mcq_text", "last_number", "whole", "none",
)

_WHOLE_MAX_WORDS = 12

_ANSWER_IS_RE = re.compile(
    r"(?:\bfinal\s+answer|\banswer)\s*(?:is|:|=|should\s+be|would\s+be)\s*:?[ \t]*(?P<ans>[^\n]*)",
    re.IGNORECASE,
)
_NUMBER_SPAN = (
    r"(?:\\[dt]?frac\s*\{[^{}]*\}\s*\{[^{}]*\}|\\[dt]?frac\d\d"
    r"|(?<![\w.])(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?|\.\d+))"
)
_LAST_NUMBER_RE = re.compile(
    rf"(?P<num>(?:(?<![\w)\]}}.])-\s*)?{_NUMBER_SPAN})"
    r"(?P<tail>\s*(?:\\?%|percent\b)"
    r"|\s*(?:\^\s*\{?\\circ\}?|°)"
    r"|\s*(?:square\s+|sq\s+|cubic\s+)?(?:mm|cm|km|m|inches|inch|ft|feet|foot|yd|mi|miles?|mg|kg|g|lbs?"
    r"|ml|l|ms|s|sec|seconds?|min|minutes?|h|hours?|days?|years?|meters?|metres?|centimeters?"
    r"|millimeters?|kilometers?|grams?|kilograms?|liters?|litres?)(?:\^?[23])?\b)?"
)
# "which answer is correct", "the answer is not obvious": talk about the answer, not the answer.
_NOT_AN_ANSWER_RE = re.compile(
    r"(?:correct|right|incorrect|wrong|not|unclear|that|the\s+following|below|as\s+follows|to)\b",
    re.IGNORECASE,
)
_MATH_SPAN_RE = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
_CLAUSE_BREAK_RE = re.compile(
    r",?\s+(?:because|since|as|which|so|therefore|thus|given|where|but|and\s+(?:so|thus|therefore))\b",
    re.IGNORECASE,
)


def option_letters(n: int) -> str:
    """Letters naming ``n`` options: "ABCD" for 4; A-J when the count is unknown (n <= 0).

    A-J (not A-Z) for an unknown count keeps "f(x)" or "(s)" in prose from reading as options.
    """
    return "ABCDEFGHIJKLMNOPQRSTUVWXYZ"[: n if n > 0 else 10]


def strip_reasoning(response: str) -> str:
    """Drop ``<think>`` blocks; drop everything after an unclosed ``<think>`` (cut-off reasoning)."""
    text = re.sub(r"<think>.*?</think>", " ", response, flags=re.DOTALL | re.IGNORECASE)
    if re.search(r"</think>", text, re.IGNORECASE):  # closing tag without opening: reasoning came first
        text = re.split(r"</think>", text, flags=re.IGNORECASE)[-1]
    open_at = text.lower().find("<think>")
    if open_at >= 0:
        text = text[:open_at]
    return text


def _answer_tag(text: str) -> str | None:
    closed = re.findall(r"<answer>(.*?)</answer>", text, flags=re.DOTALL | re.IGNORECASE)
    last_open = text.lower().rfind("<answer>")
    last_close = text.lower().rfind("</answer>")
    if last_open > last_close:  # unclosed final tag: generation stopped inside the answer
        return text[last_open + len("<answer>") :].strip() or None
    for content in reversed(closed):
        if content.strip():
            return content.strip()
    return None


def _last_boxed(text: str) -> str | None:
    for m in reversed(list(re.finditer(r"\\(?:boxed|fbox)\s*(\{)?", text))):
        if m.group(1) is None:  # "\boxed 5" form: one token
            tok = re.match(r"\s*([^\s$]+)", text[m.end() :])
            if tok:
                return tok.group(1)
            continue
        end = find_balanced(text, m.end() - 1)
        if end is not None and text[m.end() : end].strip():
            return text[m.end() : end].strip()
    return None


def _cut_phrase(ans: str) -> str:
    """Keep the answer itself from "12. That is because ...": stop at the sentence end or clause break."""
    ans = ans.strip().replace("**", "").strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if ans.startswith(left):
            close = ans.find(right, len(left))
            if close > 0:
                return ans[: close + len(right)].strip()
    if ans.lstrip().startswith("\\boxed") or ans.lstrip().startswith("\\fbox"):
        boxed = _last_boxed(ans)
        if boxed is not None:
            return boxed
    depth = 0
    for i, ch in enumerate(ans):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        elif depth == 0 and ch in ".;!?" and (i + 1 == len(ans) or ans[i + 1].isspace()):
            ans = ans[:i]
            break
    m = _CLAUSE_BREAK_RE.search(ans)
    if m and m.start() > 0:
        ans = ans[: m.start()]
    return ans.strip()


def _answer_is(text: str) -> str | None:
    text = text.replace("**", "")
    for m in reversed(list(_ANSWER_IS_RE.finditer(text))):
        raw = m.group("ans")
        if not raw.strip():  # "Answer:\n\n12": the answer is on the next non-empty line
            following = [line for line in text[m.end() :].splitlines() if line.strip()]
            raw = following[0] if following else ""
        for _ in range(5):  # "Final Answer: The final answer is $5$." -> the inner phrase
            inner = _ANSWER_IS_RE.search(raw)
            if inner is None:
                break
            raw = inner.group("ans")
        ans = _cut_phrase(raw)
        if ans and not _NOT_AN_ANSWER_RE.match(ans):
            return ans
    return None


def letter_of(text: str, letters: str) -> str | None:
    """The option letter a short answer names ("B", "(B)", "B.", "B) dog", "option B"), else None."""
    s = text.strip().strip("*`").strip()
    s = re.sub(r"^\$+|\$+$", "", s).strip()
    s = re.sub(r"^\\(?:text|textbf|mathrm)\{(.*)\}$", r"\1", s).strip()
    patterns = (
        r"\(?([A-Za-z])\)?[.:)]?",  # the whole answer is a letter
        r"(?:option|choice)\s*\(?([A-Za-z])\)?(?:[.:)]|\s|$).*",
        r"\(([A-Za-z])\).*",
        r"([A-Z])[.:)](?:\s.*|$)",
    )
    for pat in patterns:
        m = re.fullmatch(pat, s, flags=re.DOTALL | (re.IGNORECASE if pat.startswith("(?:option") else 0))
        if m and m.group(1).upper() in letters:
            return m.group(1).upper()
    return None


def _mcq_letter_in_prose(text: str, letters: str) -> str | None:
    found: list[tuple[int, str]] = []
    for pat, flags in (
        (r"\(([A-Z])\)", 0),
        (r"\b(?:option|choice)\s*\(?([A-Za-z])\b\)?", re.IGNORECASE),
        (r"(?<![\w(])([A-Z])[.)](?=\s|$)", 0),
        (r"\*\*\(?([A-Z])\)?\*\*", 0),
        # "I choose B." / "is B, since" - the letter must end the clause ("is A cat" is prose)
        (r"\b(?i:is|be|choose|select|pick|picks|chose|selected)\s*:?\s*\(?([A-Z])\)?(?=\s*(?:[.,;:!?]|$))", 0),
    ):
        for m in re.finditer(pat, text, flags):
            if m.group(1).upper() in letters:
                found.append((m.start(), m.group(1).upper()))
    whole = re.fullmatch(r"\s*\**\(?([A-Za-z])\)?[.:)]?\**\s*", text)
    if whole is not None and whole.group(1).upper() in letters:
        return whole.group(1).upper()
    return max(found)[1] if found else None


def choice_text(choice: str, letter: str) -> str:
    """A choice without its own "B. " / "(B) " label, so "B. dog" compares as "dog"."""
    m = re.match(rf"\s*\(?{letter}[.):]\s+|\s*\({letter}\)\s*", choice, flags=re.IGNORECASE)
    return choice[m.end() :] if m else choice


def _mcq_text_in_prose(text: str, choices: Sequence[str]) -> str | None:
    """The single choice whose text the response mentions; None if none or several are mentioned."""
    hay = f" {normalize_answer(text)} "
    letters = option_letters(len(choices))
    hits = []
    for i, choice in enumerate(choices):
        needle = normalize_answer(choice_text(choice, letters[i]))
        if needle and re.search(rf"(?<!\w){re.escape(needle)}(?!\w)", hay):
            hits.append(needle)
    # "red car" mentioned also mentions "red": keep only maximal hits
    maximal = {h for h in hits if not any(h != o and h in o for o in hits)}
    if len(maximal) == 1:
        target = maximal.pop()
        return next(
            choice_text(c, letters[i]) for i, c in enumerate(choices)
            if normalize_answer(choice_text(c, letters[i])) == target
        )
    return None


def _last_number(text: str) -> str | None:
    """The last number; if it sits inside inline math ("is $\\sqrt{2}$"), that math (after its last "=")."""
    last = None
    for m in _LAST_NUMBER_RE.finditer(text):
        last = m
    if last is None:
        return None
    for span in _MATH_SPAN_RE.finditer(text):
        if span.start() <= last.start() < span.end():
            inner = next(g for g in span.groups() if g is not None)
            inner = inner.rsplit("=", 1)[-1].strip()
            if inner and looks_like_math(inner):
                return inner
    return (last.group("num") + (last.group("tail") or "")).strip()


def _bare_answer(text: str) -> bool:
    """A one-line response that *is* an answer ("2x", "\\sqrt{2}", "x = 5", "12 cm"), not prose."""
    s = text.strip()
    if "\n" in s or len(s.split()) > _WHOLE_MAX_WORDS:
        return False
    return parse_number(s) is not None or looks_like_math(s, bounded=False)


def extract_answer(
    response: str, choices: Sequence[str] | None = None, *, letter_mcq: bool = False
) -> tuple[str | None, str]:
    """Return ``(answer_text, method)`` or ``(None, "none")``; see the module docstring for the order.

    ``choices`` (or ``letter_mcq=True`` when only letters are known) enables the multiple-choice
    rules; option letters are limited to the number of choices, so "E" never counts for 4 options.
    """
    text = strip_reasoning(response).replace("\u2212", "-")
    if not text.strip():
        return None, "none"
    tagged = _answer_tag(text)
    if tagged is not None:
        inner = _last_boxed(tagged) or _answer_is(tagged) or tagged
        return inner.strip(), "answer_tag"
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed, "boxed"
    said = _answer_is(text)
    if said is not None:
        return said, "the_answer_is"
    is_mcq = bool(choices) or letter_mcq
    if is_mcq:
        letters = option_letters(len(choices) if choices else 0)
        letter = _mcq_letter_in_prose(text, letters)
        if letter is not None:
            return letter, "mcq_letter"
        if choices:
            choice = _mcq_text_in_prose(text, choices)
            if choice is not None:
                return choice, "mcq_text"
    if _bare_answer(text):
        return text.strip(), "whole"
    number = _last_number(text)
    if number is not None:
        return number, "last_number"
    whole = text.strip()
    if len(whole.split()) <= _WHOLE_MAX_WORDS:
        return whole, "whole"
    return None, "none"
