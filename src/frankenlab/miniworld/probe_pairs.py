"""Built-in (target, source, prompt) triples for visual-token swapping.

The two images of a pair share size and grid and differ only in the probed attribute (count,
digit, position, colour or shape), so a swap that flips the answer to the source's answer shows
that the layers swapped carry that attribute. Prompts reuse the mini-world question templates, so
a model trained on the mini-world tasks understands them. The file format and its reader live in
:mod:`frankenlab.tasks.pairs` (the probes read it without knowing the mini-world).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from frankenlab.errors import TaskError
from frankenlab.io import atomic_file, write_text
from frankenlab.miniworld.tasks import (
    DIGIT_QUESTION,
    color_question,
    count_question,
    locate_question,
    position_answer,
    shape_question,
)
from frankenlab.synth.scenes import COLORS, SHAPES, Digit, Obj, Scene, render
from frankenlab.tasks.pairs import PROBE_TASKS, load_probe_pairs

__all__ = ["PROBE_TASKS", "load_probe_pairs", "make_probe_pairs", "write_probe_pairs"]

_ROWS = _COLS = 3
_MAX_TRIES = 1000


def _random_obj(rng: random.Random, cell: int) -> Obj:
    return Obj(rng.choice(SHAPES), rng.choice(COLORS), cell // _COLS, cell % _COLS)


def _pair(task: str, rng: random.Random, idx: int) -> tuple[Scene, Scene, str, str, str, str]:
    """(target, source, prompt, target answer, source answer, attribute) for pair number `idx`."""
    n_cells = _ROWS * _COLS
    if task == "counting":  # source = target plus or minus whole objects; the shared ones are identical
        t, s = rng.sample(range(1, 6), 2)
        objs = [_random_obj(rng, c) for c in rng.sample(range(n_cells), max(t, s))]
        return (
            Scene(_ROWS, _COLS, objs[:t]), Scene(_ROWS, _COLS, objs[:s]), count_question(), str(t), str(s), "count"
        )
    if task == "ocr":  # the same cell holds a different digit
        cell = rng.randrange(n_cells)
        t, s = rng.sample(range(10), 2)
        r, c = divmod(cell, _COLS)
        return (
            Scene(_ROWS, _COLS, digits=[Digit(t, r, c)]), Scene(_ROWS, _COLS, digits=[Digit(s, r, c)]),
            DIGIT_QUESTION, str(t), str(s), "digit",
        )
    if task == "grounding":  # the probed object moves; up to two distractors stay where they are
        cells = rng.sample(range(n_cells), 2 + rng.randint(0, 2))
        probed = _random_obj(rng, cells[0])
        others = []
        for c in cells[2:]:
            o = _random_obj(rng, c)
            while (o.color, o.kind) == (probed.color, probed.kind):
                o = _random_obj(rng, c)
            others.append(o)
        moved = Obj(probed.kind, probed.color, cells[1] // _COLS, cells[1] % _COLS)
        return (
            Scene(_ROWS, _COLS, [probed, *others]), Scene(_ROWS, _COLS, [moved, *others]),
            locate_question(probed.color, probed.kind), position_answer(probed.row, probed.col),
            position_answer(moved.row, moved.col), "position",
        )
    if task == "recognition":  # one object; alternate pairs change its colour or its shape
        r, c = divmod(rng.randrange(n_cells), _COLS)
        if idx % 2 == 0:
            kind = rng.choice(SHAPES)
            t, s = rng.sample(COLORS, 2)
            target, source = Obj(kind, t, r, c), Obj(kind, s, r, c)
            prompt, attribute = color_question(r, c), "color"
        else:
            color = rng.choice(COLORS)
            t, s = rng.sample(SHAPES, 2)
            target, source = Obj(t, color, r, c), Obj(s, color, r, c)
            prompt, attribute = shape_question(r, c), "shape"
        return Scene(_ROWS, _COLS, [target]), Scene(_ROWS, _COLS, [source]), prompt, t, s, attribute
    raise TaskError(f"unknown probe task {task!r}; choose one of {list(PROBE_TASKS)}.")


def make_probe_pairs(n_per_task: int, seed: int) -> list[dict[str, Any]]:
    """`n_per_task` distinct pairs per probe task, with PIL images; deterministic in the seed."""
    if n_per_task < 0:
        raise TaskError(f"n_per_task must be >= 0, got {n_per_task}.")
    rows: list[dict[str, Any]] = []
    for task in PROBE_TASKS:
        rng = random.Random(f"frankenlab.probe_pairs:{seed}:{task}")
        seen: set[tuple[str, str, str]] = set()
        for i in range(n_per_task):
            for _ in range(_MAX_TRIES):
                target, source, prompt, t_ans, s_ans, attribute = _pair(task, rng, i)
                key = (prompt, target.key(), source.key())
                if key not in seen:
                    break
            else:
                raise TaskError(f"probe task {task!r} has no more distinct pairs after {i}; ask for fewer.")
            seen.add(key)
            assert t_ans != s_ans, f"probe pair {task}-{i} has equal answers {t_ans!r}"
            assert target.size == source.size
            rows.append(
                {
                    "id": f"{task}-{i:04d}", "task": task, "target_image": render(target),
                    "source_image": render(source), "prompt": prompt,
                    "meta": {"target_answer": t_ans, "source_answer": s_ans, "attribute": attribute},
                }
            )
    return rows


def write_probe_pairs(out_dir: str | Path, n_per_task: int = 50, seed: int = 0) -> Path:
    """Write ``out_dir/pairs.jsonl`` and its PNGs under ``out_dir/images/``; returns the JSONL path."""
    out = Path(out_dir)
    lines = []
    for row in make_probe_pairs(n_per_task, seed):
        paths = {}
        for role in ("target", "source"):
            rel = f"images/{row['id']}_{role}.png"
            with atomic_file(out / rel, "wb") as fh:
                row[f"{role}_image"].save(fh, format="PNG")
            paths[role] = rel
        record = {**row, "target_image": paths["target"], "source_image": paths["source"]}
        lines.append(json.dumps(record))
    return write_text(out / "pairs.jsonl", "".join(line + "\n" for line in lines))
