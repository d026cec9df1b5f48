"""Line-numbered JSONL reading: every malformed line is an error that names the file and the line."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from frankenlab.errors import FrankenlabError


def iter_jsonl(path: str | Path, *, error: type[FrankenlabError] = FrankenlabError,
               what: str = "a .jsonl file", fix: str = "write one object a line",
               on_torn: Callable[[int], None] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; `error` (a FrankenlabError subclass) otherwise.

    `fix` ends the message of a malformed line. With `on_torn`, a malformed *last* line (what a
    process killed mid-write leaves) is not an error: it is skipped and its number passed to `on_torn`.
    """
    p = Path(path)
    if not p.is_file():
        raise error(f"{p} does not exist or is not a file; pass the path of {what}.")
    with p.open("rb") as fh:  # bytes: a line cut inside a UTF-8 sequence is a malformed line, not a crash
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                if on_torn is not None and not any(rest.strip() for rest in fh):
                    on_torn(lineno)
                    return
                why = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
                raise error(f"{p}, line {lineno}: not valid JSON ({why}); {fix}.") from exc
            if not isinstance(row, dict):
                raise error(f"{p}, line {lineno}: expected a JSON object, got {type(row).__name__}.")
            yield lineno, row
