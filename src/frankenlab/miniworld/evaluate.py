"""Batched greedy evaluation of a mini-world model: per-family strict and lenient accuracy with intervals.

Two scores per item, because RL can change the *format* of answers as well as their content, and
the docs must say which of the two moved: ``strict`` is the response (whitespace-stripped) equal to
the gold answer character for character; ``lenient`` is :func:`frankenlab.grading.grade` (answer
extraction, number and case normalisation). Gains are paired differences over the same items with a
bootstrap interval, so item difficulty cancels.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from frankenlab.errors import TaskError
from frankenlab.grading import grade
from frankenlab.stats import paired_bootstrap_diff, wilson_interval
from frankenlab.tasks.schema import TaskItem

__all__ = [
    "ALL",
    "ItemResult",
    "accuracy_rows",
    "evaluate",
    "gain_rows",
]

log = logging.getLogger(__name__)

ALL = "all"  # the pseudo-family that pools every item


@dataclass(frozen=True)
class ItemResult:
    id: str
    family: str
    answer: str
    response: str
    strict: bool
    lenient: bool
    rule: str


def _score(item: TaskItem, response: str) -> ItemResult:
    text = response.strip()
    verdict = grade(
        text,
        item.answer,
        list(item.choices) if item.choices else None,
        answer_type=item.answer_type,
        use_math_verify=False,
    )
    return ItemResult(item.id, item.family, item.answer, text, text == item.answer.strip(), verdict.correct,
                      verdict.rule)


def evaluate(
    model: Any,
    processor: Any,
    items: Sequence[TaskItem],
    *,
    batch_size: int = 64,
    max_new_tokens: int = 8,
    progress: Callable[[int], None] | None = None,
) -> list[ItemResult]:
    """Greedy answers for every item (left-padded batches, vision tokens suppressed) and their grades."""
    from frankenlab.runtime.generate import HFBackend, Prompt

    if not items:
        raise TaskError("nothing to evaluate: the task list is empty.")
    backend = HFBackend(model, processor, batch_size=batch_size, max_new_tokens=max_new_tokens)
    responses = backend.generate([Prompt.of(it) for it in items], progress=progress)
    return [_score(it, r) for it, r in zip(items, responses, strict=True)]


def _by_family(results: Sequence[ItemResult]) -> dict[str, list[ItemResult]]:
    groups: dict[str, list[ItemResult]] = {}
    for r in results:
        groups.setdefault(r.family, []).append(r)
    groups[ALL] = list(results)
    return groups


def accuracy_rows(label: str, results: Sequence[ItemResult], confidence: float = 0.95) -> list[dict[str, Any]]:
    """One row per family (and ``all``): counts, accuracies and Wilson intervals of both scores."""
    rows = []
    for family, group in _by_family(results).items():
        n = len(group)
        row: dict[str, Any] = {"model": label, "family": family, "n": n}
        for score in ("strict", "lenient"):
            k = sum(getattr(r, score) for r in group)
            lo, hi = wilson_interval(k, n, confidence)
            row.update({f"{score}_correct": k, f"{score}_acc": k / n, f"{score}_lo": lo, f"{score}_hi": hi})
        rows.append(row)
    return rows


def gain_rows(
    label: str,
    results: Sequence[ItemResult],
    base_label: str,
    base: Sequence[ItemResult],
    *,
    score: str = "strict",
    seed: int = 0,
    n_boot: int = 2000,
) -> list[dict[str, Any]]:
    """Paired accuracy difference ``label - base_label`` per family, with bootstrap interval and p-value."""
    base_by_id = {r.id: r for r in base}
    if set(base_by_id) != {r.id for r in results} or len(base_by_id) != len(results):
        raise TaskError(f"{label} and {base_label} were not evaluated on the same items; gains need pairs.")
    rows = []
    for family, group in _by_family(results).items():
        a = np.array([getattr(r, score) for r in group], dtype=float)
        b = np.array([getattr(base_by_id[r.id], score) for r in group], dtype=float)
        diff, lo, hi, p = paired_bootstrap_diff(a, b, n_boot=n_boot, seed=seed)
        rows.append({"model": label, "versus": base_label, "family": family, "score": score, "n": len(group),
                     "acc": float(a.mean()), "versus_acc": float(b.mean()), "gain": diff, "gain_lo": lo,
                     "gain_hi": hi, "p_value": p})
    return rows


def write_responses(path: str | Path, label: str, results: Sequence[ItemResult]) -> Path:
    """Every response with its grades, one JSON object a line, for auditing the tables."""
    import json

    from frankenlab.io import write_text

    lines = [json.dumps({"model": label, **r.__dict__}) for r in results]
    return write_text(path, "".join(line + "\n" for line in lines))
