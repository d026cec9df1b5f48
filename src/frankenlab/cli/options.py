"""CLI options shared by every command group."""

from __future__ import annotations

from typing import Annotated

import typer

__all__ = ["Threads", "apply_threads"]

Threads = Annotated[int | None, typer.Option(
    "--threads", min=1, help="CPU threads for torch (default: $FRANKENLAB_THREADS, else the cores this process may "
                             "run on). On a machine shared with other jobs, 1 is often fastest.")]


def apply_threads(threads: int | None) -> int:
    """Set torch's thread count for this command (see `frankenlab.runtime.threads`)."""
    from frankenlab.runtime.threads import set_threads

    return set_threads(threads)
