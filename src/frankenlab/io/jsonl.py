"""Line-numbered JSONL reading: every malformed line is an error that names the file and the line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from frankenlab.errors import FrankenlabError


def iter_jsonl(path: str | Path, *, error: type[FrankenlabError] = FrankenlabError,
               what: str = "a .jsonl file") -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; `error` (a FrankenlabError subclass) otherwise."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{p} does not exist or is not a file; pass the path of {what}.")
    with p.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{p}, line {lineno}: not valid JSON ({exc.msg}); write one object a line.") from exc
            if not isinstance(row, dict):
                raise error(f"{p}, line {lineno}: expected a JSON object, got {type(row).__name__}.")
            yield lineno, row
