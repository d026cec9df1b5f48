"""Built-in task names → Hugging Face datasets, with one small adapter per benchmark.

Tasks are data: each entry names the dataset id, config and split to load and a pure function that
turns one dataset row into a task row (the :func:`~frankenlab.tasks.schema.item_from_row` format).
The registry is filled here, once, and is read-only afterwards. Groups expand to several tasks:
``mathvista`` is MathVista testmini split by ``metadata.category`` into ``mathvista-general``
(general-vqa) and ``mathvista-math`` (math-targeted-vqa), as the paper evaluated it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from frankenlab.errors import TaskError
from frankenlab.tasks.schema import gsm8k_gold

if TYPE_CHECKING:
    from frankenlab.tasks.schema import Task

__all__ = ["DEFAULT_GENERATED_ITEMS", "ENTRY_POINT_GROUP", "GROUPS", "TASKS", "GeneratedTaskSpec", "HFTaskSpec",
           "expand", "generator_for", "generators", "get_spec", "gsm8k_gold", "known_names", "register_generator"]

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


#: Items a generated task makes when the caller gives no count (``--limit``).
DEFAULT_GENERATED_ITEMS = 100
#: Packages add generated tasks through this entry-point group (each entry point is a GeneratedTaskSpec).
ENTRY_POINT_GROUP = "frankenlab.tasks"


@dataclass(frozen=True)
class GeneratedTaskSpec:
    """A task made from a seed rather than read (the mini-world's question families).

    ``make(variant, n, seed)`` returns a :class:`~frankenlab.tasks.schema.Task` of ``n`` items; ``variant``
    is the part after ``PREFIX:`` (None for the bare prefix) and must be one of ``variants``.
    """

    prefix: str
    make: Callable[[str | None, int, int], Task]
    variants: tuple[str, ...]
    summary: str


_GENERATORS: dict[str, GeneratedTaskSpec] = {}
_LOCK = threading.Lock()
_DISCOVERED = False


def register_generator(spec: GeneratedTaskSpec) -> None:
    """Make ``PREFIX`` and ``PREFIX:VARIANT`` loadable by :func:`~frankenlab.tasks.load_tasks`."""
    key = spec.prefix.lower()
    if key in TASKS or key in GROUPS:
        raise TaskError(f"generated task prefix {spec.prefix!r} is already a built-in dataset name.")
    with _LOCK:
        old = _GENERATORS.get(key)
        if old is not None and old != spec:
            raise TaskError(f"generated task prefix {spec.prefix!r} is registered twice.")
        _GENERATORS[key] = spec


def _discover() -> None:
    """Load the entry points once (lazily: importing a generator's package can be slow)."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name.lower() in _GENERATORS:
            continue
        try:
            spec = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin names itself instead of failing obscurely
            raise TaskError(f"the generated-task entry point {ep.name!r} ({ep.value}) cannot be loaded "
                            f"({type(exc).__name__}: {exc}); reinstall the package that provides it.") from exc
        if not isinstance(spec, GeneratedTaskSpec):
            raise TaskError(f"entry point {ep.value} ({ENTRY_POINT_GROUP}) is a {type(spec).__name__}, not a "
                            "GeneratedTaskSpec.")
        register_generator(spec)
    _DISCOVERED = True


def generators() -> Mapping[str, GeneratedTaskSpec]:
    _discover()
    return MappingProxyType(dict(_GENERATORS))


def generator_for(spec: str) -> tuple[GeneratedTaskSpec, str | None] | None:
    """``(generator, variant)`` when ``spec`` is ``PREFIX`` or ``PREFIX:VARIANT`` of a registered generator."""
    prefix, sep, variant = spec.partition(":")
    if not re.fullmatch(r"[A-Za-z][\w.-]*", prefix) or (sep and not variant):
        return None
    gen = generators().get(prefix.lower())
    if gen is None:
        return None
    if sep and variant not in gen.variants:
        raise TaskError(f"{spec!r}: {gen.prefix} has no variant {variant!r}; choose one of "
                        f"{[f'{gen.prefix}:{v}' for v in gen.variants]}.")
    return gen, (variant or None)


def known_names() -> list[str]:
    return sorted([*TASKS, *GROUPS, *(f"{p}[:VARIANT]" for p in generators())])


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
