"""``items.jsonl``: one record per model × task × item × setting, appended and flushed as answers arrive
(``samples.jsonl``: the same per sample index, keyed by :func:`sample_key`).

The file is the run's source of truth: tables are recomputed from it, and a rerun skips every key it
already holds, so an interrupted run resumes where it stopped. A torn last line (the process died
mid-write) is dropped on open; a duplicate key (never written by us) keeps its first record. The store is
:class:`frankenlab.io.store.JsonlStore`; failed records stay until ``retry_failed`` drops them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from frankenlab.io.store import JsonlStore

__all__ = ["RECORD_FIELDS", "RecordStore", "record_key", "sample_key"]

RECORD_FIELDS = ("model", "task", "item_id", "setting", "prompt", "answer", "answer_type", "choices", "response",
                 "extracted", "extraction", "rule", "rule_correct", "decided_by", "judge", "correct", "error",
                 "elapsed_s")

Key = tuple[Any, ...]


def record_key(record: dict[str, Any]) -> Key:
    return (record["model"], record["task"], record["item_id"], record["setting"])


def sample_key(record: dict[str, Any]) -> Key:
    """(model, task, item_id, setting, sample index): the key of a pass@k sample record."""
    return (*record_key(record), int(record["sample"]))


class RecordStore(JsonlStore):
    """``items.jsonl`` (keyed by :func:`record_key`) or ``samples.jsonl`` (``key=sample_key``) of one run."""

    def __init__(self, path: str | os.PathLike[str], key: Callable[[dict[str, Any]], Key] = record_key) -> None:
        super().__init__(path, key=key)
