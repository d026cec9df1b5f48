"""Update characterization: what each training phase changed, per tensor, layer, module kind and region.

    from frankenlab.compare import compare_checkpoints
    res = compare_checkpoints("ckpt/in", "ckpt/rl", base="ckpt/base", out_dir="out/compare")
    res.layers  # energy, relative energy, ranks and subspace geometry per unified layer and phase

    from frankenlab.compare import compare_overlap  # changed-entry overlap of two outputs made with masks=True
"""

from frankenlab.compare.metrics import METRICS, DeltaFacts, DeltaMetric, Spectrum, SpectrumSettings, delta_metric
from frankenlab.compare.overlap import OverlapResult, compare_overlap
from frankenlab.compare.run import CompareResult, compare_checkpoints, load_result
from frankenlab.compare.stream import ProgressEvent

__all__ = [
    "METRICS",
    "CompareResult",
    "DeltaFacts",
    "DeltaMetric",
    "OverlapResult",
    "ProgressEvent",
    "Spectrum",
    "SpectrumSettings",
    "compare_checkpoints",
    "compare_overlap",
    "delta_metric",
    "load_result",
]
