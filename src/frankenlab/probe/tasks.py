"""Question sets for the ablation and attention probes: local files, HF datasets, the mini-world.

A task spec is one of
* a path to a ``.jsonl`` or ``.parquet`` file with a question (``question``/``problem``/``prompt``)
  and an answer (``answer``/``final_answer``; a GSM8K-style "#### 42" or a ``\\boxed{}`` inside
  ``solution`` is read too) per row, optional ``id`` and ``image`` (relative to the file);
* ``gsm8k`` or ``math500`` — the test splits of openai/gsm8k and HuggingFaceH4/MATH-500 through
  `datasets` (online, or from its local cache);
* ``miniworld`` (the mini-world's text arithmetic, ``text_arith``) or ``miniworld:<text family>`` —
  generated from the seed, test split.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frankenlab.errors import TaskError
from frankenlab.grading.extract import extract_answer

__all__ = ["MathItem", "load_math_tasks"]

_QUESTION_KEYS = ("question", "problem", "prompt", "query")
_ANSWER_KEYS = ("answer", "final_answer", "gold", "solution")
_HF = {"gsm8k": ("openai/gsm8k", "main", "test"), "math500": ("HuggingFaceH4/MATH-500", None, "test")}


@dataclass(frozen=True)
class MathItem:
    """One question with its gold answer; `image` is an absolute path or None."""

    id: str
    task: str
    question: str
    answer: str
    image: str | None = None

    @property
    def key(self) -> str:
        return f"{self.task}/{self.id}"


def _answer_of(row: dict[str, Any], where: str) -> str:
    for key in _ANSWER_KEYS:
        value = row.get(key)
        if value is None or isinstance(value, bool) or str(value).strip() == "":
            continue
        text = str(value)
        if "####" in text:
            return text.rsplit("####", 1)[1].strip().replace(",", "")
        if key == "solution":
            found, _ = extract_answer(text)
            if found is None:
                continue
            return found
        return text.strip()
    raise TaskError(f"{where}: no answer field (looked for {', '.join(_ANSWER_KEYS)}).")


def _rows_to_items(rows: list[dict[str, Any]], task: str, base: Path | None, origin: str) -> list[MathItem]:
    items: list[MathItem] = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        where = f"{origin}, row {i + 1}"
        question = next((str(row[k]) for k in _QUESTION_KEYS if isinstance(row.get(k), str) and row[k].strip()), None)
        if question is None:
            raise TaskError(f"{where}: no question field (looked for {', '.join(_QUESTION_KEYS)}).")
        item_id = str(row.get("id", row.get("unique_id", i)))
        if item_id in seen:
            raise TaskError(f"{where}: id {item_id!r} is used twice.")
        seen.add(item_id)
        image = row.get("image")
        if isinstance(image, str) and image:
            path = Path(image) if base is None else (base / image).resolve()
            if not path.is_file():
                raise TaskError(f"{where}: image {image!r} not found at {path}; paths are relative to the file.")
            image = str(path)
        else:
            image = None
        items.append(MathItem(item_id, task, question, _answer_of(row, where), image))
    return items


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _from_file(path: Path) -> tuple[list[MathItem], str]:
    if path.suffix == ".parquet":
        import pandas as pd

        rows = pd.read_parquet(path).to_dict(orient="records")
    else:
        rows = []
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise TaskError(f"{path}, line {lineno}: not valid JSON ({exc.msg}).") from exc
    return _rows_to_items(rows, path.stem, path.parent, str(path)), _digest(path.read_bytes())


def _from_hf(name: str) -> tuple[list[MathItem], str]:
    repo, config, split = _HF[name]
    try:
        import datasets
    except ImportError as exc:
        raise TaskError(f"task {name!r} needs the `datasets` package (pip install datasets), or pass a local "
                        ".jsonl/.parquet file.") from exc
    try:
        ds = datasets.load_dataset(repo, config, split=split)
    except Exception as exc:  # datasets raises many types offline (ConnectionError, DatasetNotFoundError, ...)
        raise TaskError(f"cannot load {repo} ({type(exc).__name__}: {exc}); offline, download it once or pass a "
                        "local .jsonl/.parquet file with question and answer fields.") from exc
    rows = [dict(r) for r in ds]
    fingerprint = getattr(ds, "_fingerprint", None) or _digest(json.dumps(rows[:50], default=str).encode())
    return _rows_to_items(rows, name, None, repo), str(fingerprint)


def _from_miniworld(spec: str, n: int, seed: int) -> tuple[list[MathItem], str]:
    from frankenlab.miniworld.tasks import make_split

    family = spec.split(":", 1)[1] if ":" in spec else "text_arith"
    generated = make_split(n, seed, families=[family], split="test")
    if any(it.image is not None for it in generated):
        raise TaskError(f"mini-world family {family!r} has images; export it to a task file first "
                        "(frankenlab.miniworld.tasks.export_tasks) and pass that file.")
    items = [MathItem(it.id, f"miniworld_{family}", it.question, it.answer) for it in generated]
    return items, _digest(json.dumps([(it.id, it.question, it.answer) for it in items]).encode())


def load_math_tasks(specs: Sequence[str], *, limit: int | None = None,
                    seed: int = 0) -> tuple[list[MathItem], dict[str, str]]:
    """Items of every spec (first `limit` of each) and a digest per spec for the resume key."""
    if not specs:
        raise TaskError("no tasks given; pass --tasks FILE.jsonl, gsm8k, math500 or miniworld.")
    items: list[MathItem] = []
    digests: dict[str, str] = {}
    for spec in specs:
        path = Path(spec)
        if path.suffix in (".jsonl", ".parquet", ".json") and path.is_file():
            got, digest = _from_file(path)
        elif spec.lower() in _HF:
            got, digest = _from_hf(spec.lower())
        elif re.fullmatch(r"miniworld(:\w+)?", spec):
            got, digest = _from_miniworld(spec, limit if limit is not None else 100, seed)
        else:
            raise TaskError(f"unknown task {spec!r}: not an existing .jsonl/.parquet file, and not one of gsm8k, "
                            "math500, miniworld[:family].")
        items += got[:limit] if limit is not None else got
        digests[f"task:{spec}"] = digest
    keys = [it.key for it in items]
    if len(set(keys)) != len(keys):
        raise TaskError("two task specs produce items with the same task name and id; rename one file.")
    return items, digests
