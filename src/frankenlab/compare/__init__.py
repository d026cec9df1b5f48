"""Update characterization: what each training phase changed, per tensor, layer, module kind and region.

    from frankenlab.compare import compare_checkpoints
    res = compare_checkpoints("ckpt/in", "ckpt/rl", base="ckpt/base", out_dir="out/compare")
    res.layers  # energy, relative energy and ranks per unified layer and phase
"""

from frankenlab.compare.metrics import METRICS, DeltaFacts, DeltaMetric, Spectrum, SpectrumSettings, delta_metric
from frankenlab.compare.run import CompareResult, compare_checkpoints, load_result
from frankenlab.compare.stream import ProgressEvent

__all__ = [
    "METRICS",
    "CompareResult",
    "DeltaFacts",
    "DeltaMetric",
    "ProgressEvent",
    "Spectrum",
    "SpectrumSettings",
    "compare_checkpoints",
    "delta_metric",
    "load_result",
]
