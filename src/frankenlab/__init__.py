"""frankenlab: what did RL change in this model, and where?

The public API is re-exported here; heavy optional dependencies (trl, vllm) are imported only by
the functions that need them.
"""

from frankenlab.arch import Adapter, TensorInfo, adapter_for, supported_model_types
from frankenlab.checkpoint import Checkpoint, open_checkpoint
from frankenlab.errors import (
    ArchitectureError,
    CheckpointError,
    CompareError,
    EvalError,
    FrankenlabError,
    FreezeError,
    GradingError,
    OutputError,
    ProbeError,
    RecipeError,
    RegionError,
    TaskError,
)
from frankenlab.info import describe
from frankenlab.layers import UnifiedLayer, layer_map
from frankenlab.planted import plant_noise, plant_null
from frankenlab.regions import Partition, Region, parse_cuts, parse_region, parse_regions, standard_regions

__version__ = "0.1.0"

__all__ = [
    "Adapter",
    "ArchitectureError",
    "Checkpoint",
    "CheckpointError",
    "CompareError",
    "EvalError",
    "FrankenlabError",
    "FreezeError",
    "GradingError",
    "OutputError",
    "Partition",
    "ProbeError",
    "RecipeError",
    "Region",
    "RegionError",
    "TaskError",
    "TensorInfo",
    "UnifiedLayer",
    "__version__",
    "adapter_for",
    "describe",
    "layer_map",
    "open_checkpoint",
    "parse_cuts",
    "parse_region",
    "parse_regions",
    "plant_noise",
    "plant_null",
    "standard_regions",
    "supported_model_types",
]
