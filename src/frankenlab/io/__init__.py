"""Atomic writes and tidy tables."""

from frankenlab.io.atomic import atomic_dir, atomic_file, write_json, write_text
from frankenlab.io.tables import write_table

__all__ = ["atomic_dir", "atomic_file", "write_json", "write_table", "write_text"]
