"""Resumable per-item results: one JSON line per finished item, appended and flushed as it ends.

A probe's output directory holds `<name>_items.jsonl` (the per-item record and the resume cache)
and `.probe-<name>.json` (the settings key the items were computed under). A rerun with the same
key skips the items already there (failed ones are retried); a different key is refused unless
`overwrite`, which clears the old results first. Final tables, plots and the manifest are
rewritten from the items at the end of every run, each file atomically. The directory check and
the record file are the shared ones of :mod:`frankenlab.io.store`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from frankenlab.io import write_json
from frankenlab.io.store import JsonlStore, claim_out_dir
from frankenlab.manifest import done_marker

__all__ = ["ItemStore"]


def _failed(record: dict[str, Any]) -> bool:
    return record.get("status") != "ok"


class ItemStore(JsonlStore):
    """Append-only item records under `out/<name>_items.jsonl`, keyed by `record["key"]`.

    `done` maps the key of every finished ("ok") item to its record; `records()` lists every record of
    this run in file order, failed ones included.
    """

    def __init__(self, out: str | os.PathLike[str], name: str, settings_key: str, *, overwrite: bool = False,
                 final_names: tuple[str, ...] = ()) -> None:
        self.out = Path(out)
        self.name = name
        self.key = settings_key
        self.marker = self.out / f".probe-{name}.json"
        items = self.out / f"{name}_items.jsonl"
        claim_out_dir(self.out, what=f"{name} probe", marker=self.marker.name, key=settings_key,
                      results=(items.name,), overwrite=overwrite,
                      ours=("manifest.json", "plots", done_marker(self.out, name).name, *final_names))
        self.out.mkdir(parents=True, exist_ok=True)
        super().__init__(items, retry=_failed)
        self.done: dict[str, dict[str, Any]] = {str(r["key"]): r for r in self.records()}
        write_json(self.marker, {"probe": name, "key": settings_key})

    def add(self, record: dict[str, Any]) -> None:
        """Append one record (needs "key" and "status") and make it durable before returning."""
        self.append([record])
        if not _failed(record):
            self.done[str(record["key"])] = record
