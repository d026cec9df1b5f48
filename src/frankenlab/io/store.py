"""Resumable outputs: whose directory is this, and the append-only JSONL records a run resumes from.

Every analysis that writes into `--out` (compare, probe, eval, study) decides with
:func:`claim_out_dir` whether the directory may take its output, so all of them refuse an unrelated
directory the same way and resume their own. Per-item results go to a :class:`JsonlStore`: one JSON
line per record, appended and flushed as it finishes, so a killed run loses at most the line it was
writing and the next run skips every record already there.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from frankenlab.errors import OutputError
from frankenlab.io.atomic import write_text
from frankenlab.io.jsonl import iter_jsonl

__all__ = ["JsonlStore", "OutDir", "claim_out_dir", "clear_out_dir", "marker_key", "read_marker"]

Record = dict[str, Any]


# -- markers ------------------------------------------------------------------------------------
def read_marker(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A marker file's JSON object; None when it is missing, {} when it cannot be read (so it matches no key)."""
    p = Path(path)
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def marker_key(path: str | os.PathLike[str]) -> str | None:
    """The settings key a marker records (None when there is no readable one)."""
    key = (read_marker(path) or {}).get("key")
    return None if key is None else str(key)


# -- output directories -------------------------------------------------------------------------
@dataclass(frozen=True)
class OutDir:
    """What :func:`claim_out_dir` decided.

    `previous` is the earlier run's marker when the run resumes it (None: no marker to resume from,
    or the directory was cleared); `current`: that marker records this run's key, so its results are
    reusable as they are.
    """

    path: Path
    previous: dict[str, Any] | None
    current: bool


def _matches(name: str, patterns: Collection[str]) -> bool:
    return any(fnmatchcase(name, p) for p in patterns)


def clear_out_dir(out: str | os.PathLike[str], ours: Collection[str], *, keep: Collection[str] = ()) -> None:
    """Remove the entries of `out` that match `ours` (glob patterns) but not `keep`; nothing else is touched."""
    root = Path(out)
    if not root.is_dir():
        return
    for p in sorted(root.iterdir()):
        if _matches(p.name, ours) and not _matches(p.name, keep):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()


def _listing(names: list[str], most: int = 5) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def claim_out_dir(out: str | os.PathLike[str], *, what: str, ours: Collection[str], marker: str,
                  key: str | None = None, results: Collection[str] = (), keep: Collection[str] = (),
                  overwrite: bool = False) -> OutDir:
    """Decide whether `out` may take this run's output, before anything is written; creates nothing.

    * missing: fresh. Not a directory: refused.
    * Without our `marker`, an entry that matches none of `ours` (glob patterns) is foreign and the
      directory is refused (dot-files never count as foreign); with the marker the directory is ours.
    * The marker records `key`: resumed, `current`. With `key` None the caller compares its settings
      with `previous` itself, and only `overwrite` says to start again.
    * The marker records another key, or there is no marker but a `results` file: an earlier run with
      other settings, refused without `overwrite`. With it, the entries matching `ours` except `keep`
      (a cache keyed by itself, say) are removed, foreign ones never, and the run starts fresh.
    """
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise OutputError(f"{root} is a file; --out must be a directory (new, empty, or an earlier {what} output).")
    if not root.exists():
        return OutDir(root, None, False)
    mine = {*ours, *results, marker}
    previous = read_marker(root / marker)
    if previous is None:
        foreign = sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and not _matches(p.name, mine))
        if foreign:
            raise OutputError(f"{root} holds files that are not this {what}'s output ({_listing(foreign)}); choose a "
                              "new or empty directory.")
    if previous is not None and key is None and not overwrite:
        return OutDir(root, previous, False)  # the caller checks its settings against `previous`
    if previous is not None and key is not None and previous.get("key") == key:
        return OutDir(root, previous, True)
    if previous is None and not any((root / name).exists() for name in results):
        return OutDir(root, None, False)
    if not overwrite:
        raise OutputError(f"{root} holds {what} results computed with other inputs or settings; pass --overwrite "
                          "to replace them, or choose another --out.")
    clear_out_dir(root, mine, keep=keep)
    return OutDir(root, None, False)


# -- records ------------------------------------------------------------------------------------
def _by_key_field(record: Record) -> Hashable:
    return str(record["key"])


def _line(record: Record) -> str:
    return json.dumps(record, ensure_ascii=False, default=str) + "\n"


class JsonlStore:
    """Append-only records in one JSONL file, one per key (`key(record)`), kept in file order.

    On open, a torn last line (the process died mid-write) is dropped, a duplicate key keeps its first
    record, and records for which `retry(record)` is true (failed ones) are dropped so that the run
    computes them again; the file is then rewritten atomically without them. A malformed line
    elsewhere is an error. `overwrite` starts from an empty file.
    """

    def __init__(self, path: str | os.PathLike[str], key: Callable[[Record], Hashable] = _by_key_field, *,
                 retry: Callable[[Record], bool] | None = None, overwrite: bool = False) -> None:
        self.path = Path(path)
        self._key = key
        self._records: dict[Hashable, Record] = {}
        if overwrite:
            self.path.unlink(missing_ok=True)
        elif self.path.exists():
            self._load(retry)

    def _load(self, retry: Callable[[Record], bool] | None) -> None:
        dropped = []

        def torn(lineno: int) -> None:
            dropped.append(lineno)

        fix = "delete the file (or pass --overwrite) to start over"
        for lineno, rec in iter_jsonl(self.path, error=OutputError, what="a results file", fix=fix, on_torn=torn):
            try:
                key = self._key(rec)
            except (KeyError, TypeError, ValueError) as exc:
                raise OutputError(f"{self.path}, line {lineno}: a record without its key ({exc!r}); {fix}.") from exc
            if key in self._records or (retry is not None and retry(rec)):
                dropped.append(lineno)
                continue
            self._records[key] = rec
        if dropped:
            self._rewrite()

    def _rewrite(self) -> None:
        write_text(self.path, "".join(_line(r) for r in self._records.values()))

    def __contains__(self, key: Hashable) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records())

    def get(self, key: Hashable) -> Record | None:
        return self._records.get(key)

    def records(self) -> list[Record]:
        """Every record, in file order."""
        return list(self._records.values())

    def append(self, records: Iterable[Record]) -> None:
        """Write the records and make them durable (flush + fsync) before returning; a key is written once."""
        recs = [(self._key(r), r) for r in records]
        seen: set[Hashable] = set()
        for k, _ in recs:
            if k in self._records or k in seen:
                raise OutputError(f"record {k!r} is already in {self.path}; each key is written once (drop() it "
                                  "first to replace it).")
            seen.add(k)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            for k, rec in recs:
                fh.write(_line(rec))
                self._records[k] = rec
            fh.flush()
            os.fsync(fh.fileno())

    def drop(self, keys: Iterable[Hashable]) -> None:
        """Forget records (e.g. failed ones to retry) and rewrite the file atomically without them."""
        gone = set(keys)
        if not gone & self._records.keys():
            return
        self._records = {k: r for k, r in self._records.items() if k not in gone}
        self._rewrite()
