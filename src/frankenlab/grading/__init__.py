"""Answer grading: extract the final answer from a response, normalize it, and compare to the gold.

Every decision is recorded in a :class:`Verdict` (which rule decided, how the answer was found),
so accuracy numbers can be audited item by item.
"""

from frankenlab.grading.extract import EXTRACTION_METHODS, extract_answer
from frankenlab.grading.grade import (
    ANSWER_TYPES,
    RULES,
    Verdict,
    grade,
    grade_batch,
    math_verify_available,
)
from frankenlab.grading.normalize import ParsedNumber, normalize_answer, parse_number

__all__ = [
    "ANSWER_TYPES",
    "EXTRACTION_METHODS",
    "RULES",
    "ParsedNumber",
    "Verdict",
    "extract_answer",
    "grade",
    "grade_batch",
    "math_verify_available",
    "normalize_answer",
    "parse_number",
]
