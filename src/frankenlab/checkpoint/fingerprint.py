"""Stable identities for checkpoints: cheap by default, a full content hash on request.

IN and RL checkpoints of one model have byte-identical headers and file sizes, so a fingerprint
built from headers alone would call them equal. The cheap fingerprint therefore also hashes three
small samples (start, middle, end) of every tensor's bytes: a few KB of reads per tensor, however
big the model. Use `full_hash` for archival provenance.
"""

from __future__ import annotations

import hashlib
import struct

from frankenlab.checkpoint.index import ShardIndex

_CHUNK = 16 * 1024 * 1024
_SAMPLE = 256


def _data_offsets(header_raw: bytes) -> list[tuple[int, int]]:
    import json

    header = json.loads(header_raw)
    return sorted(tuple(v["data_offsets"]) for k, v in header.items() if k != "__metadata__")


def fingerprint(index: ShardIndex, config_bytes: bytes = b"") -> str:
    """Hash of config, headers, sizes and sampled tensor bytes (see module docstring)."""
    h = hashlib.sha256()
    h.update(config_bytes)
    for fname in sorted(index.files):
        path = index.root / fname
        raw = index.headers[fname]
        h.update(fname.encode())
        h.update(str(path.stat().st_size).encode())
        h.update(raw)
        base = 8 + len(raw)
        with path.open("rb") as fh:
            for start, end in _data_offsets(raw):
                length = end - start
                for off in {0, max(0, length // 2 - _SAMPLE // 2), max(0, length - _SAMPLE)}:
                    fh.seek(base + start + off)
                    h.update(fh.read(min(_SAMPLE, length - off)))
    h.update(struct.pack("<Q", len(index.files)))
    return "fp-" + h.hexdigest()[:20]


def full_hash(index: ShardIndex) -> str:
    """sha256 over every byte of every shard (slow on big models)."""
    h = hashlib.sha256()
    for fname in sorted(index.files):
        h.update(fname.encode())
        with (index.root / fname).open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                h.update(chunk)
    return "sha256-" + h.hexdigest()
