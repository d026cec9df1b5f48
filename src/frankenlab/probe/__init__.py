"""Functional localization (visual K/V swapping, layer ablation, attention on image tokens) and behaviour
diffing (per-token KL between IN and RL, the logit lens).

Interventions (`hooks`) are context managers over forward hooks and text-model attention
functions; they undo themselves on exit, also on error. Runs write tidy tables, plots, per-item
JSONL and a manifest, and resume per item.
"""

from frankenlab.probe.ablate import AblationResult, AblationSettings, ablate_items, gold_logprobs, run_ablation
from frankenlab.probe.answers import box_iou, normalize, same_answer
from frankenlab.probe.attention import (
    AttentionProbeSettings,
    AttentionResult,
    generate_ids,
    run_attention_probe,
    vision_shares,
)
from frankenlab.probe.hooks import (
    AttentionRecord,
    SwapState,
    VisualKV,
    capture_kv,
    capture_residual,
    record_attention,
    skip_layers,
    swap_visual_kv,
)
from frankenlab.probe.kl import KLResult, KLSettings, kl_records, kl_tables, run_kl, token_kl
from frankenlab.probe.kv_swap import (
    SwapResult,
    VisionProbeSettings,
    capture_source,
    layer_variants,
    parse_layers,
    swap_pair,
)
from frankenlab.probe.lens import LensResult, LensSettings, emergence_layer, lens_logprobs, lens_tables, run_lens
from frankenlab.probe.run import ProbeModel, open_model
from frankenlab.probe.tasks import item_kind, load_math_tasks
from frankenlab.probe.vision import VisionResult, run_vision_probe

__all__ = [
    "AblationResult",
    "KLResult",
    "KLSettings",
    "LensResult",
    "LensSettings",
    "AblationSettings",
    "AttentionProbeSettings",
    "AttentionRecord",
    "AttentionResult",
    "item_kind",
    "ProbeModel",
    "SwapResult",
    "SwapState",
    "VisionProbeSettings",
    "VisionResult",
    "VisualKV",
    "ablate_items",
    "box_iou",
    "capture_kv",
    "capture_residual",
    "capture_source",
    "emergence_layer",
    "generate_ids",
    "gold_logprobs",
    "kl_records",
    "kl_tables",
    "layer_variants",
    "lens_logprobs",
    "lens_tables",
    "load_math_tasks",
    "normalize",
    "open_model",
    "parse_layers",
    "record_attention",
    "run_ablation",
    "run_attention_probe",
    "run_kl",
    "run_lens",
    "run_vision_probe",
    "same_answer",
    "skip_layers",
    "swap_pair",
    "swap_visual_kv",
    "token_kl",
    "vision_shares",
]
