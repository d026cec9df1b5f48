"""`frankenlab merge` (filled in by the merge work)."""

from __future__ import annotations

import typer


def merge_cmd() -> None:
    """Frankenstein models by block transplant (not yet implemented)."""
    raise typer.Exit(1)
