"""``items.jsonl``: one record per model × task × item × setting, appended and flushed as answers arrive
(``samples.jsonl``: the same per sample index, keyed by :func:`sample_key`).

The file is the run's source of truth: tables are recomputed from it, and a rerun skips every key it
already holds, so an interrupted run resumes where it stopped. A torn last line (the process died
mid-write) is dropped on open; a duplicate key (never written by us) keeps its first record.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from frankenlab.io import write_text

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


class RecordStore:
    def __init__(self, path: str | os.PathLike[str], key: Callable[[dict[str, Any]], Key] = record_key) -> None:
        self.path = Path(path)
        self._key = key
        self._records: dict[Key, dict[str, Any]] = {}
        if not self.path.exists():
            return
        clean: list[str] = []
        torn = False
        with self.path.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                    key = self._key(rec)
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    torn = True
                    continue
                if key in self._records:
                    torn = True
                    continue
                self._records[key] = rec
                clean.append(json.dumps(rec, ensure_ascii=False) + "\n")
        if torn:
            write_text(self.path, "".join(clean))

    def __contains__(self, key: Key) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def records(self) -> list[dict[str, Any]]:
        return list(self._records.values())

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Write and flush (fsync) the records; keys already present are an error of the caller."""
        recs = list(records)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            for rec in recs:
                key = self._key(rec)
                if key in self._records:
                    raise ValueError(f"record {key} written twice")
                fh.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
                self._records[key] = rec
            fh.flush()
            os.fsync(fh.fileno())

    def drop(self, keys: Sequence[Key]) -> None:
        """Forget records (e.g. failed ones to retry) and rewrite the file atomically without them."""
        gone = set(keys)
        self._records = {k: r for k, r in self._records.items() if k not in gone}
        write_text(self.path, "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n"
                                      for r in self._records.values()))
