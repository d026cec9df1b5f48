"""Atomic writes, tidy tables, and the output-directory check and record store every resumable run shares."""

from frankenlab.io.atomic import atomic_dir, atomic_file, write_json, write_text
from frankenlab.io.store import JsonlStore, OutDir, claim_out_dir, clear_out_dir, marker_key, read_marker
from frankenlab.io.tables import write_table

__all__ = ["JsonlStore", "OutDir", "atomic_dir", "atomic_file", "claim_out_dir", "clear_out_dir", "marker_key",
           "read_marker", "write_json", "write_table", "write_text"]
