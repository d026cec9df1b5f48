"""Necessity by freezing: which parameters a region spec freezes, applying it, and proving it held."""

from frankenlab.freeze.emit import emit_list, emit_regex
from frankenlab.freeze.spec import (
    FreezeReport,
    FreezeSpec,
    apply_freeze,
    frozen,
    kept_requires_grad,
    parse_freeze,
    region_counts,
)
from frankenlab.freeze.trainers import TRAINER_FORMATS, emit_trainer, native_frozen
from frankenlab.freeze.verify import VerifyResult, verify_frozen

__all__ = [
    "FreezeReport",
    "FreezeSpec",
    "TRAINER_FORMATS",
    "VerifyResult",
    "apply_freeze",
    "emit_list",
    "emit_regex",
    "emit_trainer",
    "frozen",
    "kept_requires_grad",
    "native_frozen",
    "parse_freeze",
    "region_counts",
    "verify_frozen",
]
