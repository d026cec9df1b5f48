"""Built-in task names → Hugging Face datasets, with one small adapter per benchmark.

Tasks are data: each entry names the dataset id, config and split to load and a pure function that
turns one dataset row into a task row (the :func:`~frankenlab.tasks.schema.item_from_row` format).
The registry is filled here, once, and is read-only afterwards. Groups expand to several tasks:
``mathvista`` is MathVista testmini split by ``metadata.category`` into ``mathvista-general``
(general-vqa) and ``mathvista-math`` (math-targeted-vqa), as the paper evaluated it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from frankenlab.errors import TaskError

__all__ = ["GROUPS", "TASKS", "HFTaskSpec", "expand", "get_spec", "known_names"]

Row = Mapping[str, Any]


@dataclass(frozen=True)
class HFTaskSpec:
    """How to load one built-in task from the Hugging Face hub."""

    name: str
    dataset_id: str
    config: str | None
    split: str
    convert: Callable[[Row, int], dict[str, Any] | None]  # None skips the row (filters)
    url: str
    summary: str


def _meta(row: Row, key: str) -> Any:
    meta = row.get("metadata")
    return meta.get(key) if isinstance(meta, Mapping) else None


def _mathvista(category: str) -> Callable[[Row, int], dict[str, Any] | None]:
    def convert(row: Row, index: int) -> dict[str, Any] | None:
        if _meta(row, "category") != category:
            return None
        mcq = row.get("question_type") == "multi_choice"
        kind = "mcq" if mcq else {"integer": "numeric", "float": "numeric", "text": "text"}.get(
            str(row.get("answer_type")))
        return {
            "id": str(row["pid"]), "question": row["question"], "image": row.get("decoded_image"),
            "choices": list(row["choices"]) if mcq and row.get("choices") is not None else None,
            "answer": row["answer"], "answer_type": kind, "category": category,
            "unit": row.get("unit"), "precision": row.get("precision"),
            "source": _meta(row, "source"), "skills": _meta(row, "skills"),
        }

    return convert


def _mathverse(row: Row, index: int) -> dict[str, Any]:
    mcq = row.get("question_type") == "multi-choice"
    return {
        "id": str(row["sample_index"]), "question": row["question"], "image": row.get("image"),
        "choices": None, "answer": row["answer"], "answer_type": "mcq" if mcq else None,
        "problem_version": row.get("problem_version"), "problem_index": row.get("problem_index"),
        "subject": _meta(row, "subject"), "subfield": _meta(row, "subfield"),
    }


def _math500(row: Row, index: int) -> dict[str, Any]:
    return {
        "id": str(row.get("unique_id") or f"math500-{index:04d}"), "question": row["problem"], "image": None,
        "answer": row["answer"], "answer_type": "math", "subject": row.get("subject"), "level": row.get("level"),
    }


def gsm8k_gold(solution: str) -> str:
    """The number after ``####`` in a GSM8K solution, without thousands separators."""
    if "####" not in solution:
        raise TaskError(f"GSM8K answer without '####': {solution[-80:]!r}.")
    return re.sub(r"(?<=\d),(?=\d{3})", "", solution.rsplit("####", 1)[1].strip())


def _gsm8k(row: Row, index: int) -> dict[str, Any]:
    return {"id": f"gsm8k-{index:04d}", "question": row["question"], "image": None,
            "answer": gsm8k_gold(row["answer"]), "answer_type": "numeric"}


_SPECS = (
    HFTaskSpec("mathvista-general", "AI4Math/MathVista", None, "testmini", _mathvista("general-vqa"),
               "https://huggingface.co/datasets/AI4Math/MathVista", "MathVista testmini, general-vqa items"),
    HFTaskSpec("mathvista-math", "AI4Math/MathVista", None, "testmini", _mathvista("math-targeted-vqa"),
               "https://huggingface.co/datasets/AI4Math/MathVista", "MathVista testmini, math-targeted-vqa items"),
    HFTaskSpec("mathverse", "AI4Math/MathVerse", "testmini", "testmini", _mathverse,
               "https://huggingface.co/datasets/AI4Math/MathVerse", "MathVerse testmini (all problem versions)"),
    HFTaskSpec("math500", "HuggingFaceH4/MATH-500", None, "test", _math500,
               "https://huggingface.co/datasets/HuggingFaceH4/MATH-500", "MATH-500, text-only math"),
    HFTaskSpec("gsm8k", "openai/gsm8k", "main", "test", _gsm8k,
               "https://huggingface.co/datasets/openai/gsm8k", "GSM8K test, text-only grade-school math"),
)
TASKS: Mapping[str, HFTaskSpec] = MappingProxyType({s.name: s for s in _SPECS})
GROUPS: Mapping[str, tuple[str, ...]] = MappingProxyType({"mathvista": ("mathvista-general", "mathvista-math")})


def known_names() -> list[str]:
    return sorted([*TASKS, *GROUPS])


def expand(name: str) -> tuple[str, ...]:
    """Task names behind a registered name (a group expands, a task is itself)."""
    key = name.lower()
    if key in GROUPS:
        return GROUPS[key]
    if key in TASKS:
        return (key,)
    raise TaskError(f"unknown task {name!r}: not a .jsonl/.parquet path and not a built-in task; built-ins are "
                    f"{known_names()}.")


def get_spec(name: str) -> HFTaskSpec:
    """The spec of one built-in task; a group or an unknown name is a TaskError that lists the options."""
    key = name.lower()
    if key in TASKS:
        return TASKS[key]
    if key in GROUPS:
        raise TaskError(f"{name!r} is a group of tasks {list(GROUPS[key])}; load it with load_tasks().")
    expand(name)  # raises the "unknown task" error
    raise AssertionError("unreachable")
