"""Probe pairs: (target image, source image, prompt) triples for visual-token swapping, as files.

The format is what the attention and swap probes read; the mini-world writes it
(:func:`frankenlab.miniworld.probe_pairs.write_probe_pairs`), and any other source can too. One JSON
object a line: ``id``, ``task`` (one of :data:`PROBE_TASKS`), ``prompt``, ``target_image`` and
``source_image`` (paths relative to the file, same pixel size), and ``meta`` with the string
``target_answer`` and ``source_answer``, which must differ (the pair differs in the probed attribute).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from frankenlab.errors import TaskError
from frankenlab.io.jsonl import iter_jsonl

__all__ = ["PROBE_TASKS", "load_probe_pairs"]

PROBE_TASKS: tuple[str, ...] = ("counting", "ocr", "grounding", "recognition")


def _check(row: dict[str, Any], where: str) -> None:
    for key in ("id", "task", "prompt", "target_image", "source_image"):
        if not isinstance(row.get(key), str) or not row[key]:
            raise TaskError(f"{where}: field {key!r} must be a non-empty string, got {row.get(key)!r}.")
    if row["task"] not in PROBE_TASKS:
        raise TaskError(f"{where}: task {row['task']!r} is not one of {list(PROBE_TASKS)}.")
    meta = row.get("meta")
    answers = ("target_answer", "source_answer")
    if not isinstance(meta, dict) or not all(isinstance(meta.get(k), str) for k in answers):
        raise TaskError(f"{where}: 'meta' must be an object with string 'target_answer' and 'source_answer'.")
    if meta["target_answer"] == meta["source_answer"]:
        raise TaskError(f"{where}: target and source answers are both {meta['target_answer']!r}; a probe pair "
                        "must differ in the probed attribute.")


def load_probe_pairs(path: str | Path) -> list[dict[str, Any]]:
    """Validated probe rows; image fields come back as absolute paths that exist and match in size."""
    p = Path(path)
    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for lineno, row in iter_jsonl(p, error=TaskError):
        where = f"{p}, line {lineno}"
        _check(row, where)
        if row["id"] in seen:
            raise TaskError(f"{where}: id {row['id']!r} already used on line {seen[row['id']]}.")
        seen[row["id"]] = lineno
        resolved = {}
        sizes = {}
        for role in ("target_image", "source_image"):
            img = (p.parent / row[role]).resolve()
            if not img.is_file():
                raise TaskError(f"{where}: {role} {row[role]!r} not found at {img}; paths are relative to the file.")
            try:
                with Image.open(img) as im:
                    sizes[role] = im.size
            except OSError as exc:
                raise TaskError(f"{where}: {role} {img} is not a readable image ({exc}).") from exc
            resolved[role] = str(img)
        if sizes["target_image"] != sizes["source_image"]:
            raise TaskError(f"{where}: target image is {sizes['target_image']} but source is "
                            f"{sizes['source_image']}; swapped visual tokens need images of the same size.")
        rows.append({**row, **resolved})
    return rows
