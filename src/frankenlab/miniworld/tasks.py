"""Mini-world question families that pull apart perception, vision-to-reasoning and text reasoning.

Each family asks one templated, short question about a seeded :class:`~frankenlab.synth.Scene`
and computes the answer from the scene record. ``count_arith`` / ``digit_arith`` need a
perception step followed by arithmetic; ``text_arith`` states the same fact in words with no
image, so the three abilities of the paper (M_vis, M_v2r, M_rea) each get their own items.

Splits are disjoint by construction: an item belongs to ``test`` when a hash of its question and
scene falls in a fixed 1-in-5 bucket and to ``train`` otherwise, whatever the seeds and sizes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from frankenlab.errors import TaskError
from frankenlab.io import atomic_file, write_text
from frankenlab.synth.scenes import COLORS, SHAPES, Obj, Scene, describe, random_scene, render
from frankenlab.tasks.registry import GeneratedTaskSpec
from frankenlab.tasks.schema import Task, TaskItem, normalize_answer_type

__all__ = [
    "ABILITY_OF",
    "ANSWER_TYPES",
    "ARITH_OPS",
    "DIGIT_QUESTION",
    "FAMILIES",
    "SPLITS",
    "TASK_SPEC",
    "TaskItem",
    "color_question",
    "count_question",
    "export_tasks",
    "locate_question",
    "make_item",
    "make_split",
    "miniworld_task",
    "position_answer",
    "shape_question",
]

log = logging.getLogger(__name__)

FAMILIES: tuple[str, ...] = (
    "count", "color", "shape", "read_digit", "locate", "count_arith", "digit_arith", "text_arith",
)
ABILITY_OF: Mapping[str, str] = MappingProxyType(
    {
        "count": "perception",
        "color": "perception",
        "shape": "perception",
        "read_digit": "perception",
        "locate": "perception",
        "count_arith": "vision_to_reasoning",
        "digit_arith": "vision_to_reasoning",
        "text_arith": "text_reasoning",
    }
)
ANSWER_TYPES: tuple[str, ...] = ("int", "str", "choice")  # as written in exported task files
_FILE_TYPE = MappingProxyType({"numeric": "int", "text": "str", "mcq": "choice"})
SPLITS: tuple[str, ...] = ("train", "test")
#: Arithmetic steps applied to a seen count or digit; answers stay at most two digits (max 27).
ARITH_OPS: tuple[tuple[str, int], ...] = tuple(("plus", k) for k in range(1, 10)) + (("times", 2), ("times", 3))
DIGIT_QUESTION = "What digit is shown?"

_TEST_BUCKETS = 5  # one hash bucket in five is the test split
_MAX_TRIES = 2000  # draws per item before a family is declared exhausted
_PLURAL = MappingProxyType({"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"})
_ID_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


# --- question templates (shared with the probe pairs, so the trained model knows them) ---------


def _noun(color: str | None, kind: str | None, n: int) -> str:
    noun = (kind or "shape") if n == 1 else (_PLURAL[kind] if kind else "shapes")
    return f"{color} {noun}" if color else noun


def count_question(color: str | None = None, kind: str | None = None) -> str:
    return f"How many {_noun(color, kind, 2)} are there?"


def color_question(row: int, col: int) -> str:
    """Colour of the shape at a 0-based cell (worded 1-based)."""
    return f"What color is the shape at row {row + 1}, column {col + 1}?"


def shape_question(row: int, col: int) -> str:
    return f"What shape is at row {row + 1}, column {col + 1}?"


def locate_question(color: str, kind: str) -> str:
    return f"Where is the {color} {kind}?"


def position_answer(row: int, col: int) -> str:
    """Canonical locate answer: 1-based "row,column" with no spaces, e.g. "2,3"."""
    return f"{row + 1},{col + 1}"


def _apply(op: tuple[str, int], x: int) -> int:
    name, k = op
    return x + k if name == "plus" else x * k


# --- drafts: scene + question + answer, before any pixels are made ------------------------------


@dataclass(frozen=True)
class _Draft:
    family: str
    scene: Scene
    question: str
    answer: str
    answer_type: str
    has_image: bool

    def key(self) -> str:
        return self.question + "|" + (self.scene.key() if self.has_image else "")


def _count_scene(rng: random.Random) -> tuple[Scene, str | None, str | None, int]:
    """A scene and a counting subject (all shapes, a colour, a shape or both) whose count is near uniform.

    The count is drawn first and the scene built around it, so no answer dominates (sampling
    scenes first makes "1" the answer to half of all colour and shape questions).
    """
    mode = rng.choices(("all", "color", "shape", "both"), weights=(3, 2, 2, 1))[0]
    if mode == "all":
        scene = random_scene(rng)
        return scene, None, None, len(scene.objects)
    color = rng.choice(COLORS) if mode in ("color", "both") else None
    kind = rng.choice(SHAPES) if mode in ("shape", "both") else None

    def matches(o: Obj) -> bool:
        return (color is None or o.color == color) and (kind is None or o.kind == kind)

    k = rng.randint(0, 4)
    others = rng.randint(0 if k else 1, 5 - k)
    cells = rng.sample(range(9), k + others)
    objs = [Obj(kind or rng.choice(SHAPES), color or rng.choice(COLORS), c // 3, c % 3) for c in cells[:k]]
    for c in cells[k:]:
        o = Obj(rng.choice(SHAPES), rng.choice(COLORS), c // 3, c % 3)
        while matches(o):
            o = Obj(rng.choice(SHAPES), rng.choice(COLORS), c // 3, c % 3)
        objs.append(o)
    scene = Scene(3, 3, objs)
    return scene, color, kind, sum(matches(o) for o in scene.objects)


def _draft(family: str, rng: random.Random) -> _Draft:
    if family in ("count", "count_arith"):
        scene, color, kind, n = _count_scene(rng)
        q = count_question(color, kind)
        if family == "count":
            return _Draft(family, scene, q, str(n), "int", True)
        op = rng.choice(ARITH_OPS)
        return _Draft(family, scene, f"{q[:-1]}, {op[0]} {op[1]}?", str(_apply(op, n)), "int", True)
    if family in ("color", "shape"):
        scene = random_scene(rng)
        obj = rng.choice(scene.objects)
        if family == "color":
            return _Draft(family, scene, color_question(obj.row, obj.col), obj.color, "str", True)
        return _Draft(family, scene, shape_question(obj.row, obj.col), obj.kind, "str", True)
    if family in ("read_digit", "digit_arith"):
        scene = random_scene(rng, n_objects=(0, 2), n_digits=(1, 1))
        d = scene.digits[0].value
        if family == "read_digit":
            return _Draft(family, scene, DIGIT_QUESTION, str(d), "int", True)
        op = rng.choice(ARITH_OPS)
        return _Draft(family, scene, f"What is the digit shown {op[0]} {op[1]}?", str(_apply(op, d)), "int", True)
    if family == "locate":
        for _ in range(_MAX_TRIES):
            scene = random_scene(rng)
            pairs = [(o.color, o.kind) for o in scene.objects]
            unique = [o for o in scene.objects if pairs.count((o.color, o.kind)) == 1]
            if unique:
                obj = rng.choice(unique)
                q = locate_question(obj.color, obj.kind)
                return _Draft(family, scene, q, position_answer(obj.row, obj.col), "str", True)
        raise TaskError("could not draw a scene with a uniquely located object; this is a bug, please report it.")
    if family == "text_arith":
        op = rng.choice(ARITH_OPS)
        if rng.random() < 0.5:
            scene = random_scene(rng, n_objects=(0, 2), n_digits=(1, 1))
            d = scene.digits[0].value
            q = f"The digit shown is {d}. What is the digit shown {op[0]} {op[1]}?"
            return _Draft(family, scene, q, str(_apply(op, d)), "int", False)
        scene, color, kind, n = _count_scene(rng)
        fact = f"There {'is' if n == 1 else 'are'} {n} {_noun(color, kind, n)}."
        q = f"{fact} {count_question(color, kind)[:-1]}, {op[0]} {op[1]}?"
        return _Draft(family, scene, q, str(_apply(op, n)), "int", False)
    raise TaskError(f"unknown task family {family!r}; choose one of {list(FAMILIES)}.")


def _finish(draft: _Draft, item_id: str) -> TaskItem:
    """The task item: ``meta`` holds ``family``, ``ability`` and the ``scene`` (so any consumer can re-check
    the answer); ``answer_type`` is in the grading vocabulary (``numeric``/``text``)."""
    image = render(draft.scene) if draft.has_image else None
    meta = {"family": draft.family, "ability": ABILITY_OF[draft.family], "scene": draft.scene}
    return TaskItem(id=item_id, question=draft.question, answer=draft.answer,
                    answer_type=normalize_answer_type(draft.answer_type, item_id), image=image,
                    description=describe(draft.scene), meta=MappingProxyType(meta))


def _split_of(key: str) -> str:
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return "test" if int.from_bytes(digest[:8], "big") % _TEST_BUCKETS == 0 else "train"


def make_item(family: str, rng: random.Random, idx: int, *, split: str | None = None) -> TaskItem:
    """One item of `family` from `rng`, with id ``[split-]family-idx``; no split filtering."""
    prefix = f"{split}-{family}" if split else family
    return _finish(_draft(family, rng), f"{prefix}-{idx:05d}")


def make_split(
    n: int, seed: int, families: Sequence[str] | None = None, split: str = "train", *, unique: bool = True
) -> list[TaskItem]:
    """`n` items cycling through `families`, deterministic in (n, seed, families, split).

    Train and test never share a (question, scene) pair, nor, for text-only items, a question.
    `unique` also forbids repeats within the split; text-only families have a few hundred distinct
    questions per split, so pass ``unique=False`` to draw more of them than that.
    """
    if split not in SPLITS:
        raise TaskError(f"unknown split {split!r}; choose one of {list(SPLITS)}.")
    fams = tuple(FAMILIES if families is None else families)
    unknown = [f for f in fams if f not in ABILITY_OF]
    if unknown or not fams:
        raise TaskError(f"unknown or no task families {unknown}; choose from {list(FAMILIES)}.")
    if n < 0:
        raise TaskError(f"number of items must be >= 0, got {n}.")
    rng = random.Random(f"frankenlab.miniworld:{seed}:{split}")
    seen: set[str] = set()
    items: list[TaskItem] = []
    for i in range(n):
        family = fams[i % len(fams)]
        for _ in range(_MAX_TRIES):
            draft = _draft(family, rng)
            key = draft.key()
            if _split_of(key) == split and not (unique and key in seen):
                break
        else:
            done = sum(it.family == family for it in items)
            raise TaskError(
                f"family {family!r} ran out of new {split} items after {done}; ask for fewer items, "
                "or pass unique=False to allow repeats within the split."
            )
        seen.add(key)
        items.append(_finish(draft, f"{split}-{family}-{i:05d}"))
    return items


# --- the eval task format: JSONL rows with images relative to the file -------------------------


def export_tasks(items: Sequence[TaskItem], out_dir: str | Path, name: str) -> Path:
    """Write ``out_dir/name.jsonl`` and ``out_dir/images/<id>.png``; returns the JSONL path."""
    if not name or not _ID_RE.match(name):
        raise TaskError(f"task file name {name!r} must be non-empty letters, digits, '_', '-' or '.'.")
    ids = [it.id for it in items]
    bad = [i for i in ids if not _ID_RE.match(i)]
    if bad:
        raise TaskError(f"item ids {bad[:3]} cannot be file names; use letters, digits, '_', '-' or '.'.")
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise TaskError(f"duplicate item ids {dupes[:3]}; ids must be unique within a task file.")
    out = Path(out_dir)
    rows = []
    for it in items:
        rel = None
        if it.image is not None:
            rel = f"images/{it.id}.png"
            with atomic_file(out / rel, "wb") as fh:
                it.image.save(fh, format="PNG")
        rows.append(
            {
                "id": it.id, "question": it.question, "image": rel, "choices": None, "answer": it.answer,
                "answer_type": _FILE_TYPE.get(it.answer_type or "", it.answer_type), "family": it.family,
                "ability": it.meta.get("ability"), "description": it.description,
            }
        )
    return write_text(out / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def miniworld_task(variant: str | None, n: int, seed: int) -> Task:
    """``n`` test-split items of one family (``variant``; the bare ``miniworld`` is ``text_arith``, ``all``
    cycles through every family), generated from ``seed``: what ``--tasks miniworld[:FAMILY]`` loads."""
    family = variant or "text_arith"
    families = FAMILIES if family == "all" else (family,)
    try:
        items = make_split(n, seed, families, split="test")
    except TaskError:  # more items than the family has distinct questions (text_arith: a few hundred)
        log.warning("miniworld:%s has fewer than %d distinct test items; repeats allowed", family, n)
        items = make_split(n, seed, families, split="test", unique=False)
    digest = hashlib.sha256(json.dumps([(it.id, it.question, it.answer) for it in items]).encode()).hexdigest()
    return Task(name=f"miniworld_{family}", items=tuple(items), source=f"generated:miniworld:{family}:seed={seed}",
                version=f"sha256:{digest[:16]}")


#: Registered under the ``frankenlab.tasks`` entry point (pyproject.toml): ``miniworld``, ``miniworld:FAMILY``.
TASK_SPEC = GeneratedTaskSpec(
    prefix="miniworld", make=miniworld_task, variants=(*FAMILIES, "all"),
    summary="the mini-world's question families, test split, generated from the seed",
)
