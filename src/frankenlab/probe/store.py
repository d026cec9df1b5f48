"""Resumable per-item results: one JSON line per finished item, appended and flushed as it ends.

A probe's output directory holds `<name>_items.jsonl` (the per-item record and the resume cache)
and `.probe-<name>.json` (the settings key the items were computed under). A rerun with the same
key skips the items already there (failed ones are retried); a different key is refused unless
`overwrite`, which clears the old results first. Final tables, plots and the manifest are
rewritten from the items at the end of every run, each file atomically.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from frankenlab.errors import OutputError
from frankenlab.io import write_json, write_text

__all__ = ["ItemStore"]


class ItemStore:
    """Append-only item records under `out/<name>_items.jsonl`, keyed by `record["key"]`."""

    def __init__(self, out: str | os.PathLike[str], name: str, settings_key: str, *, overwrite: bool = False,
                 final_names: tuple[str, ...] = ()) -> None:
        self.out = Path(out)
        self.name = name
        self.key = settings_key
        self.path = self.out / f"{name}_items.jsonl"
        self.marker = self.out / f".probe-{name}.json"
        self._final = final_names
        self._check(overwrite)
        self.out.mkdir(parents=True, exist_ok=True)
        self.done: dict[str, dict[str, Any]] = self._load()
        write_json(self.marker, {"probe": name, "key": settings_key})

    def _check(self, overwrite: bool) -> None:
        if self.out.exists() and not self.out.is_dir():
            raise OutputError(f"{self.out} is a file; --out must be a directory.")
        if not self.out.exists():
            return
        ours = {self.path.name, self.marker.name, "manifest.json", "plots", f".done-{self.name}.json", *self._final}
        foreign = sorted(p.name for p in self.out.iterdir() if p.name not in ours and not p.name.startswith("."))
        if foreign:
            raise OutputError(f"{self.out} holds files that are not this probe's output ({', '.join(foreign[:5])}); "
                              "choose a new or empty directory.")
        old_key = None
        if self.marker.exists():
            with contextlib.suppress(OSError, json.JSONDecodeError):
                old_key = json.loads(self.marker.read_text()).get("key")
        if (self.path.exists() or self.marker.exists()) and old_key != self.key:
            if not overwrite:
                raise OutputError(f"{self.out} holds {self.name} results computed with other inputs or settings; pass "
                                  "--overwrite to replace them, or choose another --out.")
            for p in self.out.iterdir():
                if p.is_dir():
                    shutil.rmtree(p)
                else:
                    p.unlink()

    def _load(self) -> dict[str, dict[str, Any]]:
        """Finished ("ok") records; a torn last line or failed items are dropped (and retried)."""
        if not self.path.exists():
            return {}
        good: dict[str, dict[str, Any]] = {}
        lines = self.path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                if i == len(lines) - 1:
                    break  # interrupted while writing the last line
                raise OutputError(f"{self.path}, line {i + 1} is not JSON ({exc.msg}); delete the file to start "
                                  "over.") from exc
            if rec.get("status") == "ok":
                good[str(rec["key"])] = rec
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in good.values()))
        return good

    def add(self, record: dict[str, Any]) -> None:
        """Append one record (needs "key" and "status") and make it durable before returning."""
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if record.get("status") == "ok":
            self.done[str(record["key"])] = record

    def records(self) -> list[dict[str, Any]]:
        """Every record of this run, in file order (ok and failed)."""
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records())
