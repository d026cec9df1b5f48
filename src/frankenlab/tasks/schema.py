"""Task items as typed records, validated once at load time with the place of every problem.

One format for every source: JSONL and Parquet rows, Hugging Face dataset rows (through the adapters in
:mod:`frankenlab.tasks.registry`) and the mini-world's exported tasks all become :class:`TaskItem`s, so the
evaluation loop never guesses at fields. ``answer_type`` is normalized to the grading vocabulary
(``mcq``, ``numeric``, ``text``, ``math`` or None = infer) so that ``grade`` gets what it understands.

Every item has a *kind*, ``perception`` or ``reasoning`` (:func:`kind_of`), which picks its default answer
length (`frankenlab.runtime.generate.DEFAULT_MAX_NEW_TOKENS`) when no explicit ``max_new_tokens`` is given.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from PIL import Image

from frankenlab.errors import TaskError

__all__ = ["ANSWER_ALIASES", "ANSWER_TYPE_ALIASES", "CORE_FIELDS", "ITEM_KINDS", "QUESTION_ALIASES", "Task", "TaskItem",
           "gsm8k_gold", "item_from_row", "kind_of", "normalize_answer_type"]

#: Accepted spellings of an answer type → the grading vocabulary (None lets the grader infer).
ANSWER_TYPE_ALIASES: Mapping[str, str | None] = MappingProxyType({
    "mcq": "mcq", "choice": "mcq", "multi_choice": "mcq", "multiple_choice": "mcq", "multi-choice": "mcq",
    "numeric": "numeric", "number": "numeric", "int": "numeric", "integer": "numeric", "float": "numeric",
    "text": "text", "str": "text", "string": "text",
    "math": "math", "latex": "math", "expression": "math",
    "auto": None, "free": None, "free_form": None, "free-form": None, "list": None,
})
CORE_FIELDS = ("id", "question", "image", "choices", "answer", "answer_type", "description")
#: Other spellings read when the core field is absent (math datasets' ``problem``/``solution``, ...).
QUESTION_ALIASES = ("problem", "prompt", "query")
ANSWER_ALIASES = ("final_answer", "gold", "solution")
ID_ALIASES = ("unique_id",)
_IN_MEMORY = "<in-memory>"

#: Item kinds; ``meta["kind"]`` may name one explicitly.
ITEM_KINDS = ("perception", "reasoning")
#: Metadata fields whose words say what an item is (mini-world ``ability``/``family``, MathVista ``category``, ...).
_KIND_FIELDS = ("ability", "category", "family", "task", "subject", "skills", "question_type")
_REASONING_WORDS = re.compile(r"reason|math|arith|gsm|geometr|algebra|logic|calcul|proof|puzzle|word[ _-]?problem",
                              re.IGNORECASE)
_PERCEPTION_WORDS = re.compile(r"percept|count|ocr|ground|recogn|colou?r|shape|locat|detect|\bread", re.IGNORECASE)


def _words(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        return " ".join(str(v) for v in (value.tolist() if hasattr(value, "tolist") else value))
    return ""


def kind_of(*, task: str | None = None, meta: Mapping[str, Any] | None = None, answer_type: str | None = None,
            choices: Sequence[str] | None = None) -> str:
    """``perception`` or ``reasoning``: what the item's own metadata, then its task's name, say it is.

    In order: an explicit ``meta["kind"]``; reasoning words (math, arithmetic, reasoning, geometry, ...) in
    the metadata fields of ``_KIND_FIELDS`` or the task name; ``answer_type == "math"``; perception words
    (counting, OCR, grounding, recognition, colour, shape, locate, ...); multiple choice. Reasoning words win
    over perception words ("count_arith" reasons about a count). An item that says nothing is *reasoning*:
    a too-long budget only costs time, a too-short one cuts the answer off and grades it wrong.
    """
    meta = meta or {}
    explicit = meta.get("kind")
    if explicit is not None:
        if explicit not in ITEM_KINDS:
            raise TaskError(f"item kind {explicit!r} is unknown; use one of {list(ITEM_KINDS)} or leave it out.")
        return str(explicit)
    text = " ".join([*(_words(meta.get(k)) for k in _KIND_FIELDS), task or ""])
    if _REASONING_WORDS.search(text) or answer_type == "math":
        return "reasoning"
    if _PERCEPTION_WORDS.search(text) or choices:
        return "perception"
    return "reasoning"


def normalize_answer_type(value: Any, where: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or value.lower() not in ANSWER_TYPE_ALIASES:
        known = sorted(k for k in ANSWER_TYPE_ALIASES)
        raise TaskError(f"{where}: answer_type {value!r} is unknown; use one of {known} or leave it empty.")
    return ANSWER_TYPE_ALIASES[value.lower()]


@dataclass(frozen=True)
class TaskItem:
    """One question. ``image`` is an absolute path, an in-memory PIL image (datasets), or None (text-only)."""

    id: str
    question: str
    answer: str
    answer_type: str | None = None
    image: str | Image.Image | None = field(default=None, compare=False, repr=False)
    choices: tuple[str, ...] | None = None
    description: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)
    task: str | None = field(default=None, compare=False)  # its task's name (set by :class:`Task`)

    @property
    def has_image(self) -> bool:
        return self.image is not None

    @property
    def key(self) -> str:
        """``task/id``: unique across the tasks of one run (task names are unique, ids unique per task)."""
        return f"{self.task}/{self.id}"

    @property
    def family(self) -> str:
        """The row's ``family`` field (the mini-world's question family), else the task's name: how RL rewards
        and per-family tables group items."""
        family = self.meta.get("family")
        return family if isinstance(family, str) and family else (self.task or "tasks")

    def kind(self, task: str | None = None) -> str:
        """``perception`` or ``reasoning`` (:func:`kind_of`); ``task`` is the name of the task it belongs to."""
        return kind_of(task=task, meta=self.meta, answer_type=self.answer_type, choices=self.choices)

    @property
    def image_ref(self) -> str | None:
        """What results record about the image: its path, or a marker for in-memory images."""
        if self.image is None:
            return None
        return self.image if isinstance(self.image, str) else _IN_MEMORY

    def load_image(self) -> Image.Image:
        """The image as RGB; TaskError naming the item when it cannot be read."""
        if self.image is None:
            raise TaskError(f"item {self.id!r} has no image.")
        if isinstance(self.image, Image.Image):
            return self.image.convert("RGB")
        try:
            with Image.open(self.image) as im:
                return im.convert("RGB")
        except OSError as exc:
            raise TaskError(f"item {self.id!r}: cannot read image {self.image} ({exc}).") from exc


@dataclass(frozen=True)
class Task:
    """A named list of items; ``version`` fingerprints the data so results record what was evaluated."""

    name: str
    items: tuple[TaskItem, ...]
    source: str
    version: str

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for it in self.items:
            if it.id in seen:
                raise TaskError(f"task {self.name!r} ({self.source}): item id {it.id!r} is used twice.")
            seen.add(it.id)
        if any(it.task != self.name for it in self.items):  # items always know their task (renamed: NAME=SPEC)
            object.__setattr__(self, "items", tuple(replace(it, task=self.name) for it in self.items))

    def ids(self) -> list[str]:
        return [it.id for it in self.items]

    def subsample(self, limit: int | None, seed: int = 0) -> Task:
        """``limit`` items chosen by a seeded hash of (seed, task, id), kept in file order.

        Hash ranks rather than a shuffled list make the choice independent of row order, and nested:
        the items chosen for ``limit=50`` are among those chosen for ``limit=100`` with the same seed.
        """
        if limit is None or limit >= len(self.items):
            return self
        if limit < 1:
            raise TaskError(f"--limit must be >= 1, got {limit}.")

        def rank(it: TaskItem) -> bytes:
            return hashlib.sha256(f"{seed}\x00{self.name}\x00{it.id}".encode()).digest()

        chosen = {it.id for it in sorted(self.items, key=rank)[:limit]}
        return replace(self, items=tuple(it for it in self.items if it.id in chosen))

    def select(self, ids: Sequence[str]) -> Task:
        """The items with these ids, in task order; TaskError when one is missing (a changed task file)."""
        by_id = {it.id: it for it in self.items}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise TaskError(f"task {self.name!r} has no items {missing[:5]} (of {len(missing)} missing); the task "
                            "data changed since these ids were chosen.")
        wanted = set(ids)
        return replace(self, items=tuple(it for it in self.items if it.id in wanted))


def _text(row: Mapping[str, Any], key: str, where: str, *, required: bool) -> str | None:
    value = row.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) or str(value).strip() == "":
        what = "a non-empty string" if key != "answer" else "a non-empty string or a number"
        raise TaskError(f"{where}: field {key!r} must be {what}, got {value!r}.")
    if isinstance(value, float) and key == "answer":
        return repr(value) if not value.is_integer() else str(int(value))
    return str(value)


def _image(value: Any, base: Path | None, where: str) -> str | Image.Image | None:
    """A path relative to ``base`` (checked to exist), a PIL image, bytes, or a datasets image dict."""
    if value is None:
        return None
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, Mapping):  # {"bytes": ..., "path": ...} as datasets / Parquet store images
        if value.get("bytes"):
            value = value["bytes"]
        elif value.get("path"):
            value = value["path"]
        else:
            raise TaskError(f"{where}: image record has neither bytes nor a path.")
    if isinstance(value, (bytes, bytearray)):
        try:
            with Image.open(io.BytesIO(value)) as im:
                im.load()
                return im.copy()
        except OSError as exc:
            raise TaskError(f"{where}: image bytes cannot be decoded ({exc}).") from exc
    if not isinstance(value, str) or not value:
        raise TaskError(f"{where}: 'image' must be null or a path relative to the task file, got {value!r}.")
    path = Path(value)
    if not path.is_absolute():
        path = (base or Path.cwd()) / path
    path = path.resolve()
    if not path.is_file():
        raise TaskError(f"{where}: image {value!r} not found at {path}; image paths are relative to the task file.")
    return str(path)


def _choices(value: Any, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if hasattr(value, "tolist"):  # numpy arrays from Parquet
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not all(isinstance(c, str) for c in value):
        raise TaskError(f"{where}: 'choices' must be null or a list of strings, got {value!r}.")
    return tuple(value) or None


def _check_gold_choice(answer: str, choices: tuple[str, ...], where: str) -> None:
    """Multiple-choice golds must name an option (by letter or text), or grading would fail on every item.

    The grader itself decides (grading the gold against itself), so load-time and grade-time agree.
    """
    from frankenlab.errors import GradingError
    from frankenlab.grading import grade

    try:
        grade(answer, answer, list(choices), answer_type="mcq")
    except GradingError as exc:
        raise TaskError(f"{where}: {exc}.") from exc


def gsm8k_gold(solution: str) -> str:
    """The number after ``####`` in a GSM8K solution, without thousands separators."""
    if "####" not in solution:
        raise TaskError(f"GSM8K answer without '####': {solution[-80:]!r}.")
    return re.sub(r"(?<=\d),(?=\d{3})", "", solution.rsplit("####", 1)[1].strip())


def _present(row: Mapping[str, Any], key: str) -> bool:
    value = row.get(key)
    return value is not None and not (isinstance(value, str) and not value.strip())


def _question(row: Mapping[str, Any], where: str) -> str:
    if row.get("question") is None:
        for key in QUESTION_ALIASES:
            if _present(row, key) and isinstance(row[key], str):
                return row[key]
        raise TaskError(f"{where}: field 'question' must be a non-empty string, got None (also looked for "
                        f"{', '.join(map(repr, QUESTION_ALIASES))}).")
    text = _text(row, "question", where, required=True)
    assert text is not None
    return text


def _answer(row: Mapping[str, Any], where: str) -> str:
    """``answer`` (a GSM8K ``... #### 42`` becomes ``42``), else an alias; a ``solution`` gives its ``\\boxed{}``."""
    if row.get("answer") is not None:
        text = _text(row, "answer", where, required=True)
        assert text is not None
        return gsm8k_gold(text) if "####" in text else text
    for key in ANSWER_ALIASES:
        if not _present(row, key) or isinstance(row[key], bool):
            continue
        text = str(row[key])
        if "####" in text:
            return gsm8k_gold(text)
        if key == "solution":
            from frankenlab.grading.extract import extract_answer

            found, rule = extract_answer(text)
            if found is not None and rule != "whole":  # a final answer was marked, not the whole derivation
                return found
            continue
        return text.strip()
    raise TaskError(f"{where}: field 'answer' must be a non-empty string or a number, got None (also looked for "
                    f"{', '.join(map(repr, ANSWER_ALIASES))}; a 'solution' needs a \\boxed{{}} or '#### N').")


def _item_id(row: Mapping[str, Any], where: str, index: int | None) -> str:
    if row.get("id") is None:
        for key in ID_ALIASES:
            if _present(row, key):
                return str(row[key])
        if index is not None:
            return str(index)
    text = _text(row, "id", where, required=True)
    assert text is not None
    return text


def item_from_row(row: Mapping[str, Any], *, base: Path | None = None, where: str = "row",
                  index: int | None = None) -> TaskItem:
    """Validate one row (``where`` names it in errors, e.g. "tasks.jsonl, line 7"); other fields go to meta.

    Math datasets' spellings are read too (``problem``/``prompt``/``query`` for the question,
    ``final_answer``/``gold``/``solution`` for the answer, ``unique_id`` for the id); a row without an id
    is named by its 0-based ``index`` in the file.
    """
    if not isinstance(row, Mapping):
        raise TaskError(f"{where}: expected an object with fields {list(CORE_FIELDS)}, got {type(row).__name__}.")
    item_id = _item_id(row, where, index)
    question = _question(row, where)
    answer = _answer(row, where)
    raw_type = row.get("answer_type")
    answer_type = normalize_answer_type(raw_type, where)
    if raw_type in ("int", "integer") and not re.fullmatch(r"-?\d+", answer.strip()):
        raise TaskError(f"{where}: answer {answer!r} is not an integer but answer_type is {raw_type!r}.")
    choices = _choices(row.get("choices"), where)
    if answer_type == "mcq" and not choices and not re.fullmatch(r"\(?[A-Z]\)?", answer.strip()):
        raise TaskError(f"{where}: a multiple-choice item needs 'choices' or an option letter as its answer.")
    if choices:
        _check_gold_choice(answer, choices, where)
    description = row.get("description")
    if description is not None and not isinstance(description, str):
        raise TaskError(f"{where}: 'description' must be a string or null, got {description!r}.")
    meta = {k: v for k, v in row.items() if k not in CORE_FIELDS}
    if meta.get("kind") is not None and meta["kind"] not in ITEM_KINDS:
        raise TaskError(f"{where}: 'kind' must be one of {list(ITEM_KINDS)} or null, got {meta['kind']!r}.")
    return TaskItem(id=item_id, question=question, answer=answer, answer_type=answer_type,
                    image=_image(row.get("image"), base, where), choices=choices,
                    description=description or None, meta=MappingProxyType(meta))
