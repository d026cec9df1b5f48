"""`frankenlab compare` (filled in by the compare work)."""

from __future__ import annotations

import typer


def compare_cmd() -> None:
    """Streaming weight-delta energy and spectra (not yet implemented)."""
    raise typer.Exit(1)
