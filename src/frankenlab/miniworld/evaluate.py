"""The mini-world's per-family tables (strict and lenient accuracy, paired gains) on top of ``frankenlab eval``.

Two scores per item, because RL can change the *format* of answers as well as their content, and
the docs must say which of the two moved: ``strict`` is the response (whitespace-stripped) equal to
the gold answer character for character; ``lenient`` is ``frankenlab eval``'s grade (answer
extraction, number and case normalisation). Answers come from :func:`frankenlab.eval.run.answer_items`,
accuracies and their Wilson intervals from :func:`frankenlab.eval.metrics.accuracy`, gains (paired
differences over the same items, so item difficulty cancels) from
:func:`frankenlab.eval.metrics.compare_paired`: one evaluator, only the grouping by family is here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frankenlab.errors import TaskError
from frankenlab.eval.metrics import accuracy, compare_paired
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
    """Both scores of one response, graded by ``frankenlab eval``'s rule."""
    from frankenlab.eval.run import grade_record

    record: dict[str, Any] = {"response": response, "error": None}
    grade_record(record, item)
    return _result(item, record)


def _result(item: TaskItem, record: dict[str, Any]) -> ItemResult:
    text = (record.get("response") or "").strip()
    return ItemResult(item.id, item.family, item.answer, text, record.get("error") is None and text ==
                      item.answer.strip(), bool(record.get("correct")) and record.get("error") is None,
                      record.get("rule") or "error")


def evaluate(
    model: Any,
    processor: Any,
    items: Sequence[TaskItem],
    *,
    batch_size: int = 64,
    max_new_tokens: int | None = 8,
    progress: Callable[[int], None] | None = None,
) -> list[ItemResult]:
    """Greedy answers for every item and both scores, through :func:`frankenlab.eval.run.answer_items`.

    The answers and the lenient grade are exactly ``frankenlab eval``'s (same prompts, batching, grading);
    ``max_new_tokens=None`` gives each item kind its default length. Items whose prompt or generation
    failed count as wrong under both scores and are logged.
    """
    from frankenlab.eval.run import answer_items
    from frankenlab.runtime.generate import HFBackend

    if not items:
        raise TaskError("nothing to evaluate: the task list is empty.")
    backend = HFBackend(model, processor, batch_size=batch_size, max_new_tokens=max_new_tokens)
    records = answer_items(backend, items, progress=progress)
    failed = [r for r in records if r.get("error")]
    if failed:
        log.warning("%d of %d items failed and count as wrong (first: %s: %s)", len(failed), len(records),
                    failed[0]["item_id"], failed[0]["error"])
    return [_result(it, rec) for it, rec in zip(items, records, strict=True)]


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
            acc = accuracy([bool(getattr(r, score)) for r in group], confidence=confidence)
            row.update({f"{score}_correct": acc.k, f"{score}_acc": acc.value, f"{score}_lo": acc.ci_low,
                        f"{score}_hi": acc.ci_high})
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
        c = compare_paired([bool(getattr(r, score)) for r in group],
                           [bool(getattr(base_by_id[r.id], score)) for r in group], n_boot=n_boot, seed=seed)
        rows.append({"model": label, "versus": base_label, "family": family, "score": score, "n": c.n,
                     "acc": c.mean_a, "versus_acc": c.mean_b, "gain": c.diff, "gain_lo": c.ci_low,
                     "gain_hi": c.ci_high, "p_value": c.p_bootstrap})
    return rows


def write_responses(path: str | Path, label: str, results: Sequence[ItemResult]) -> Path:
    """Every response with its grades, one JSON object a line, for auditing the tables."""
    import json

    from frankenlab.io import write_text

    lines = [json.dumps({"model": label, **r.__dict__}) for r in results]
    return write_text(path, "".join(line + "\n" for line in lines))
