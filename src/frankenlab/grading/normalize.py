"""Answer normalization: turn the many ways a model writes one answer into one comparable form.

Two products: :func:`normalize_answer` (a canonical string for exact match) and :func:`parse_number`
(an exact rational value plus percent flag and unit, for numeric comparison). Values are
``fractions.Fraction`` so that "0.75", "3/4" and ``\\frac{3}{4}`` compare equal *exactly*, with no
float round-off and no hidden tolerance.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from types import MappingProxyType

__all__ = [
    "ParsedNumber",
    "canonical_unit",
    "find_balanced",
    "looks_like_math",
    "normalize_answer",
    "parse_number",
    "strip_math_wrappers",
]

# Unit aliases -> canonical symbol. Read-only so the module holds no mutable state.
_UNIT_ALIASES = MappingProxyType(
    {
        "mm": "mm", "millimeter": "mm", "millimetre": "mm",
        "cm": "cm", "centimeter": "cm", "centimetre": "cm",
        "m": "m", "meter": "m", "metre": "m",
        "km": "km", "kilometer": "km", "kilometre": "km",
        "in": "in", "inch": "in", "inches": "in",
        "ft": "ft", "foot": "ft", "feet": "ft",
        "yd": "yd", "yard": "yd",
        "mi": "mi", "mile": "mi",
        "mg": "mg", "milligram": "mg",
        "g": "g", "gram": "g", "gramme": "g",
        "kg": "kg", "kilogram": "kg", "kilo": "kg",
        "lb": "lb", "pound": "lb",
        "oz": "oz", "ounce": "oz",
        "ms": "ms", "millisecond": "ms",
        "s": "s", "sec": "s", "second": "s",
        "min": "min", "minute": "min",
        "h": "h", "hr": "h", "hour": "h",
        "day": "day", "week": "week", "month": "month", "year": "year", "yr": "year",
        "ml": "ml", "milliliter": "ml", "millilitre": "ml",
        "l": "l", "liter": "l", "litre": "l",
        "newton": "newton", "joule": "joule", "watt": "watt", "volt": "volt", "amp": "ampere",
        "ampere": "ampere", "hz": "hz", "hertz": "hz", "pa": "pa", "pascal": "pa", "kelvin": "kelvin",
        "mph": "mph", "kph": "km/h", "km/h": "km/h", "kmh": "km/h", "m/s": "m/s",
        "dollar": "usd", "usd": "usd", "cent": "cent", "euro": "eur", "eur": "eur",
        "unit": "unit",
    }
)

# Trailing letters that are math, not a unit: "2x", "3 pi", "2e", "4i" must not read as 2, 3, 2, 4.
_NOT_UNITS = frozenset({"pi", "e", "i", "j", "x", "y", "z", "n", "k", "a", "b", "c", "d", "t", "sqrt", "or", "and"})

# math_verify runs without its signal-based timeout (it cannot work off the main thread), so we
# refuse inputs that could make sympy run for ever: long strings, towers of powers, big factorials.
_MATH_MAX_CHARS = 200
_RISKY_MATH_RE = re.compile(
    r"\^\s*\{[^{}]*\^"  # tower of powers: 10^{10^{10}}
    r"|\^\s*\(?\s*[\d.]+\s*\)?\s*\^"  # 9^9^9
    r"|\^\s*[({]?\s*\d{5,}"  # huge exponent
    r"|\d{4,}\s*!|[)}]\s*!"  # huge factorial
)
_MATH_WORDS = frozenset(
    {"sqrt", "frac", "dfrac", "tfrac", "pi", "sin", "cos", "tan", "cot", "sec", "csc", "log", "ln", "exp",
     "inf", "infty", "arcsin", "arccos", "arctan", "cdot", "times", "div", "pm", "le", "ge", "leq", "geq",
     "neq", "cup", "cap", "in", "mathbb", "left", "right", "circ", "text", "mathrm", "binom", "theta",
     "alpha", "beta", "gamma", "lambda", "mu", "sigma", "omega", "phi", "varphi", "boxed", "over"}
)

# Words that mean "percent"; a percent is a flag on the number, not a unit.
_PERCENT_WORDS = ("%", "percent", "per cent", "pct")

_TEXT_COMMANDS = (
    "text", "textbf", "textit", "textrm", "textnormal", "mathrm", "mathbf", "mathit", "mbox",
    "operatorname", "mathsf", "texttt", "emph",
)

_NUM = r"(?:\d+(?:\.\d*)?|\.\d+)"
_THOUSANDS = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?"
_UNIT_TOKEN = r"[a-z]+(?:/[a-z]+)?(?:\^?[23])?"
_NUMBER_RE = re.compile(
    rf"""^(?P<sign>[-+])?\s*
    (?:
        (?P<mixed_int>\d+)\s+(?P<mixed_num>\d+)\s*/\s*(?P<mixed_den>\d+)
      | \(?(?P<fnum>{_NUM})\)?\s*/\s*\(?(?P<fden>{_NUM})\)?
      | (?P<thousands>{_THOUSANDS})
      | (?P<dec>{_NUM})(?:e(?P<exp>[-+]?\d+)|\s*(?:\\times|\\cdot|\*|x)\s*10\s*\^\s*\{{?(?P<exp10>[-+]?\d+)\}}?)?
    )
    \s*(?P<pct>%|percent|per\ cent|pct)?
    \s*(?P<unit>{_UNIT_TOKEN}(?:\s+{_UNIT_TOKEN})?)?
    $""",
    re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class ParsedNumber:
    """An answer read as a number: exact value, whether it carried a percent sign, and its unit."""

    value: Fraction
    percent: bool = False
    unit: str | None = None


def find_balanced(text: str, open_index: int) -> int | None:
    """Index of the ``}`` matching the ``{`` at ``open_index``; None if unbalanced (truncated output)."""
    depth = 0
    i = open_index
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] in "{}":
            i += 2  # escaped brace \{ or \} does not count
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _replace_command(text: str, names: tuple[str, ...], render: Callable[[str], str]) -> str:
    """Replace ``\\name{arg}`` (balanced braces, innermost via repetition) by ``render(arg)``."""
    pattern = re.compile(r"\\(?:" + "|".join(names) + r")\s*\{")
    for _ in range(50):  # bounded: each pass removes one command
        m = pattern.search(text)
        if not m:
            break
        end = find_balanced(text, m.end() - 1)
        if end is None:
            break
        text = text[: m.start()] + render(text[m.end() : end]) + text[end + 1 :]
    return text


def _frac_to_slash(text: str) -> str:
    """``\\frac{a}{b}`` (also dfrac/tfrac, ``\\frac12``) -> ``a/b``; parenthesize non-atomic parts."""
    text = re.sub(r"\\[dt]frac(?![a-zA-Z])", r"\\frac", text)
    text = re.sub(r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}", text)
    # A digit right before \frac is a mixed number: 2\frac{1}{2} = 2 1/2.
    text = re.sub(r"(\d)\s*\\frac", r"\1 \\frac", text)

    def atom(s: str) -> str:
        s = s.strip()
        return s if re.fullmatch(r"-?[\w.]+", s) else f"({s})"

    for _ in range(50):
        # innermost first: a \frac whose two groups contain no further \frac
        m = re.search(r"\\frac\s*\{", text)
        if not m:
            break
        num_end = find_balanced(text, m.end() - 1)
        if num_end is None:
            break
        rest = text[num_end + 1 :]
        m2 = re.match(r"\s*\{", rest)
        if not m2:
            break
        den_open = num_end + 1 + m2.end() - 1
        den_end = find_balanced(text, den_open)
        if den_end is None:
            break
        num = _frac_to_slash(text[m.end() : num_end])
        den = _frac_to_slash(text[den_open + 1 : den_end])
        text = text[: m.start()] + f"{atom(num)}/{atom(den)}" + text[den_end + 1 :]
    return text


def strip_math_wrappers(text: str) -> str:
    """Remove what only *frames* an answer: ``$..$``, ``\\(..\\)``, ``\\[..\\]``, whole ``\\boxed{..}``."""
    s = text.strip()
    for _ in range(5):
        before = s
        for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
                s = s[len(left) : len(s) - len(right)].strip()
                break
        m = re.match(r"\\(?:boxed|fbox)\s*\{", s)
        if m:
            end = find_balanced(s, m.end() - 1)
            if end == len(s) - 1:
                s = s[m.end() : end].strip()
        if s == before:
            break
    return s


def canonical_unit(unit: str | None) -> str | None:
    """Canonical spelling of a unit ("centimeters" -> "cm", "square cm" -> "cm^2"); None stays None."""
    if unit is None:
        return None
    u = re.sub(r"\s+", " ", unit.strip().lower().rstrip("."))
    if not u:
        return None
    power = ""
    for word, p in (("square ", "^2"), ("sq ", "^2"), ("sq. ", "^2"), ("cubic ", "^3")):
        if u.startswith(word):
            u, power = u[len(word) :], p
            break
    m = re.fullmatch(r"(.+?)\^?([23])", u)
    if m and not power and not u.isdigit():
        u, power = m.group(1), "^" + m.group(2)
    if u in _UNIT_ALIASES:
        return _UNIT_ALIASES[u] + power
    if len(u) > 3 and u.endswith("s") and u[:-1] in _UNIT_ALIASES:
        return _UNIT_ALIASES[u[:-1]] + power
    if len(u) > 3 and u.endswith("s"):
        u = u[:-1]  # unknown word: at least make "apples" == "apple"
    return u + power


def _remove_degrees(s: str) -> str:
    """Degrees carry no information for matching ("30°" == "30^\\circ" == "30 degrees" == "30")."""
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\\degree|°", "", s)
    s = re.sub(r"(?<=[\d\s}])\s*(?:degrees?|deg)\b\.?", "", s, flags=re.IGNORECASE)
    return s


def normalize_answer(text: str, *, strip_units: bool = False) -> str:
    """Canonical string for exact match; ``strip_units`` also drops a trailing unit ("5 cm" -> "5").

    Only formatting is removed (LaTeX wrappers, case, spacing, trailing punctuation, thousands
    separators, degree marks); nothing that could change which answer is meant.
    """
    s = text.replace("\u2212", "-").replace("\u00a0", " ").replace("\u2009", " ")
    s = s.replace("\u00b2", "^2").replace("\u00b3", "^3")
    s = s.strip().strip("*`").strip()
    s = re.sub(r"(?<=\$)\s*[.,;!?]+$", "", s).strip()  # "$5$." -> "$5$" so the wrapper can go
    s = strip_math_wrappers(s)
    s = _replace_command(s, _TEXT_COMMANDS, lambda arg: arg)
    s = strip_math_wrappers(s)
    s = re.sub(r"\\left(?![a-zA-Z])|\\right(?![a-zA-Z])", "", s)
    s = re.sub(r"\\(?:displaystyle|mathrm|bigl|bigr|Bigl|Bigr|big|Big)(?![a-zA-Z])", "", s)
    s = _frac_to_slash(s)
    s = _remove_degrees(s)
    s = re.sub(r"([_^])\{\s*(\w+)\s*\}", r"\1\2", s)  # x^{2} -> x^2, a_{1} -> a_1
    s = s.replace("\\%", "%").replace("\\$", "").replace("{,}", ",")
    s = re.sub(r"^\$(?=\s*[-\d.])", "", s)  # a lone leading currency dollar: "$5"
    s = re.sub(r"\\[,;:! ]|\\q?quad(?![a-zA-Z])|~", " ", s)
    s = re.sub(r"\s+", " ", s).strip().lower()
    for _ in range(3):
        s = s.rstrip(".,;:!?").strip()
        if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
            s = s[1:-1].strip()
    if re.fullmatch(rf"[-+]?{_THOUSANDS}(?:\s*%)?(?:\s+\S.*)?", s):
        s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)
    s = re.sub(r"(?<=[(\[{])\s+|\s+(?=[)\]}])", "", s)
    s = re.sub(r"\s*,\s*", _canonical_comma, s)  # "(1,2)" == "(1, 2)", but "1,234" stays one number
    if strip_units:
        s = _strip_trailing_unit(s)
    return s


def _canonical_comma(m: re.Match[str]) -> str:
    text, start, end = m.string, m.start(), m.end()
    thousands = (
        m.group(0) == ","
        and start > 0
        and text[start - 1].isdigit()
        and re.match(r"\d{3}(?!\d)", text[end:]) is not None
    )
    return "," if thousands else ", "


def _strip_trailing_unit(s: str) -> str:
    """Drop a trailing unit after a number or closing brace: "5 cm" -> "5", "3\\sqrt{2} m" -> "3\\sqrt{2}"."""
    m = re.fullmatch(rf"(?P<head>.*?[\d}}).])\s*(?P<unit>{_UNIT_TOKEN}(?:\s+{_UNIT_TOKEN})?)", s)
    if m and canonical_unit(m.group("unit")) is not None:
        unit = m.group("unit")
        first = unit.split()[0].split("^")[0]
        if first in _UNIT_ALIASES or first.rstrip("s") in _UNIT_ALIASES or first in ("square", "sq", "cubic"):
            return m.group("head").strip()
    return s


def parse_number(text: str) -> ParsedNumber | None:
    """Read an answer as an exact number with optional percent and unit; None if it is not one.

    Accepts "1,234", "-3.5", "3/4", "\\frac{3}{4}", "2 1/2", "1.5e3", "1.5 \\times 10^{3}", "50%",
    "12 cm". A bare variable or expression ("2x", "\\sqrt{2}") is not a number.
    """
    s = normalize_answer(text)
    if not s:
        return None
    m = _NUMBER_RE.match(s)
    if not m:
        return None
    try:
        if m.group("mixed_int") is not None:
            den = Fraction(m.group("mixed_den"))
            if den == 0:
                return None
            value = Fraction(m.group("mixed_int")) + Fraction(m.group("mixed_num")) / den
        elif m.group("fnum") is not None:
            den = Fraction(m.group("fden"))
            if den == 0:
                return None
            value = Fraction(m.group("fnum")) / den
        elif m.group("thousands") is not None:
            value = Fraction(m.group("thousands").replace(",", ""))
        else:
            value = Fraction(m.group("dec"))
            exp = m.group("exp") or m.group("exp10")
            if exp is not None:
                if abs(int(exp)) > 400:
                    return None
                value *= Fraction(10) ** int(exp)
    except (ValueError, ZeroDivisionError):
        return None
    if m.group("sign") == "-":
        value = -value
    unit = m.group("unit")
    percent = m.group("pct") is not None
    if unit is not None and unit.strip() in _PERCENT_WORDS:
        percent, unit = True, None
    if unit is not None and not _is_unit(unit):
        return None
    return ParsedNumber(value=value, percent=percent, unit=canonical_unit(unit))


def _is_unit(unit: str) -> bool:
    """Whether trailing letters may be a unit (not a variable or constant such as x, pi, e, i)."""
    first = unit.split()[0]
    base = re.sub(r"\^?[23]$", "", first)
    if first in _NOT_UNITS or base in _NOT_UNITS:
        return False
    return len(base) >= 2 or base in _UNIT_ALIASES


def looks_like_math(text: str, *, bounded: bool = True) -> bool:
    """Math notation rather than prose; with ``bounded``, also small enough for sympy without a timeout.

    Words are not math: math_verify reads "Paris" as P*a*r*i*s, which would equal "sirap".
    """
    s = strip_math_wrappers(text)
    if not s or (bounded and (len(s) > _MATH_MAX_CHARS or _RISKY_MATH_RE.search(s))):
        return False
    if "\n" in s:
        return False
    words = re.findall(r"\\?[A-Za-z]{2,}", s)
    if any(w.lstrip("\\").lower() not in _MATH_WORDS for w in words):
        return False
    return bool(re.search(r"[\d\\^=+\-*/()\[\]{}<>|]", s)) or len(s) == 1
