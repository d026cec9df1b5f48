"""One error family, so the CLI can turn any expected failure into one clear line and exit 2."""

from __future__ import annotations


class FrankenlabError(Exception):
    """Base of every error frankenlab raises on purpose; messages say what, where and how to fix."""


class CheckpointError(FrankenlabError):
    """A checkpoint cannot be found, opened or read."""


class ArchitectureError(FrankenlabError):
    """Unknown model type, unclaimed tensor, or checkpoints of different architectures."""


class RegionError(FrankenlabError):
    """A region, span or partition cut that does not fit the model."""


class RecipeError(FrankenlabError):
    """A merge recipe that cannot be applied."""


class CompareError(FrankenlabError):
    """Two checkpoints that cannot be compared tensor by tensor."""


class OutputError(FrankenlabError):
    """An output location that cannot be written (exists, disk full, permissions)."""


class GradingError(FrankenlabError):
    """Answer grading failed in a way that is not a wrong answer."""


class FreezeError(FrankenlabError):
    """A freeze specification that matches nothing or cannot be applied."""


class TaskError(FrankenlabError):
    """A task or probe set that cannot be loaded or is malformed."""


class ProbeError(FrankenlabError):
    """A probe (visual K/V swap, layer ablation, attention share) that cannot run as asked."""


class EvalError(FrankenlabError):
    """An evaluation that cannot run or resume (bad settings, missing descriptions, endpoint failures)."""
