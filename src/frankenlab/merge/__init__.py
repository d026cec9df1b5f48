"""Frankenstein models: transplant or interpolate blocks of RL into IN, with explicit provenance.

    from frankenlab.merge import Recipe, merge, assemble
    merge("ckpt/in", "ckpt/rl", "IN:RL:RL", "out/in-rl-rl", verify=True)      # on disk
    model = assemble("IN:RL:RL", "ckpt/in", "ckpt/rl")                       # in memory
    model = assemble("RL:IN:IN", "ckpt/in", "ckpt/rl", model=model)          # swaps only what differs
    merge("ckpt/in", "ckpt/rl", Recipe.parse("IN:IN:IN", rank="late=8", alpha="mid=1.5"), "out/r8")
"""

from frankenlab.merge.assemble import (
    PROVENANCE_FILE,
    AssemblyState,
    MergeResult,
    assemble,
    assembly_state,
    merge,
    open_inputs,
    write_merged,
)
from frankenlab.merge.compute import interpolate, low_rank_delta
from frankenlab.merge.mergekit_export import MergekitExport, to_mergekit
from frankenlab.merge.plan import MergePlan, TensorPlan, make_plan, resolve_region
from frankenlab.merge.recipe import STANDARD, Recipe, Take, load_recipes, recipes_from_config, standard_recipes
from frankenlab.merge.verify import VerifyReport, verify_merged

__all__ = [
    "PROVENANCE_FILE",
    "STANDARD",
    "AssemblyState",
    "MergePlan",
    "MergeResult",
    "MergekitExport",
    "Recipe",
    "Take",
    "TensorPlan",
    "VerifyReport",
    "assemble",
    "assembly_state",
    "interpolate",
    "load_recipes",
    "low_rank_delta",
    "make_plan",
    "merge",
    "open_inputs",
    "recipes_from_config",
    "resolve_region",
    "standard_recipes",
    "to_mergekit",
    "verify_merged",
    "write_merged",
]
