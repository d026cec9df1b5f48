"""The probes' questions: every ``--tasks`` spec loaded through :func:`frankenlab.tasks.load_tasks`.

A spec is anything the task loaders take: a ``.jsonl``/``.parquet`` file (``question``/``problem``/
``prompt`` and ``answer``/``final_answer``/``solution`` fields, a GSM8K ``#### 42`` or a ``\\boxed{}``
read as the answer, optional ``id`` and ``image`` relative to the file), a built-in dataset
(``gsm8k``, ``math500``, ...), or a generated task (``miniworld`` = the mini-world's text arithmetic,
``miniworld:FAMILY``, generated from the seed, test split).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from frankenlab.errors import TaskError
from frankenlab.tasks import TaskItem, load_tasks
from frankenlab.tasks.schema import kind_of

__all__ = ["item_kind", "load_math_tasks"]


def item_kind(item: TaskItem) -> str:
    """perception / reasoning from the item's *task name* (probe pair tasks are perception; math files,
    gsm8k and text arithmetic reasoning): the probes' documented rule, which picks the answer budget."""
    return kind_of(task=item.task)


def load_math_tasks(specs: Sequence[str], *, limit: int | None = None, seed: int = 0,
                    load_dataset: Callable[..., Any] | None = None) -> tuple[list[TaskItem], dict[str, str]]:
    """Items of every spec (the first ``limit`` of each task, in file order) and each task's version for the
    resume key. Generated tasks make ``limit`` items (100 without one) from ``seed``."""
    if not specs:
        raise TaskError("no tasks given; pass --tasks FILE.jsonl, gsm8k, math500 or miniworld.")
    tasks = load_tasks(list(specs), load_dataset=load_dataset, n_generated=limit, seed=seed)
    items: list[TaskItem] = []
    versions: dict[str, str] = {}
    for task in tasks:
        items += task.items[:limit] if limit is not None else task.items
        versions[f"task:{task.name}"] = task.version
    return items, versions
