"""Tidy tables as Parquet + CSV with a fixed leading column order."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from frankenlab.io.atomic import atomic_file


def write_table(df: pd.DataFrame, path: str | os.PathLike[str], columns: Sequence[str] | None = None) -> Path:
    """Write `<stem>.csv` and `<stem>.parquet`; `columns` come first in that order, the rest after."""
    stem = Path(path)
    if stem.suffix in (".csv", ".parquet"):
        stem = stem.with_suffix("")
    if columns is not None:
        missing = [c for c in columns if c not in df.columns]
        for c in missing:
            df[c] = pd.NA
        rest = [c for c in df.columns if c not in columns]
        df = df[list(columns) + rest]
    with atomic_file(stem.with_suffix(".csv"), "w", encoding="utf-8", newline="") as fh:
        df.to_csv(fh, index=False)
    with atomic_file(stem.with_suffix(".parquet"), "wb") as fh:
        df.to_parquet(fh, index=False)
    return stem.with_suffix(".csv")
