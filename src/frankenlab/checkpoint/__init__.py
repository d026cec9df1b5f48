"""Checkpoint access: local Hugging Face directories or hub ids, read one tensor at a time."""

from frankenlab.checkpoint.fingerprint import fingerprint, full_hash
from frankenlab.checkpoint.index import ShardIndex, TensorMeta, read_safetensors_header
from frankenlab.checkpoint.reader import Checkpoint, open_checkpoint
from frankenlab.checkpoint.source import resolve_checkpoint

__all__ = [
    "Checkpoint",
    "ShardIndex",
    "TensorMeta",
    "fingerprint",
    "full_hash",
    "open_checkpoint",
    "read_safetensors_header",
    "resolve_checkpoint",
]
