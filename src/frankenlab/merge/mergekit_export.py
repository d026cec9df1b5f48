"""The same plan as a mergekit YAML, where mergekit can express it, and a list of where it cannot.

Mapping: contiguous runs of LLM layers (and vision blocks) with one assignment become `slices`;
transplants use `merge_method: passthrough`, plans with interpolation use `linear` with weights
(1 − α, α) on (IN, RL). `base_model` is the rest model, so mergekit takes config.json and the
tokenizer from it (without `base_model` it takes them from an arbitrary referenced model).

What mergekit cannot express (reported as warnings, and the export is then not `exact`):
* a module's leading weights (embeddings; the vision patch embedding) come from its first
  slice's model(s), and its trailing weights (final norm, lm_head) from its last slice's model(s)
  (mergekit 0.1.x pairs the last slice's models with the first slice's source count, so after a
  one-model first slice they come from the last slice's first model); frankenlab takes them from
  the rest model (or an explicit --take);
* interpolated tensors are computed in mergekit's own arithmetic ((1−α)·IN + α·RL), so they agree
  to the output dtype's precision, not bit for bit; extrapolation (α > 1 or α < 0) gives weights
  outside [0, 1], which mergekit's linear method takes as they are (it checks no range, and its
  `normalize` divides by the weights' sum, here 1). Its large terms cancel, so the export then
  asks for a float32 working dtype (`dtype: float32`, `out_dtype` = the output dtype);
* rank-K transplants: mergekit has no truncated-SVD operator on a delta. The YAML writes those
  tensors as the full delta (RL, or its α interpolation) and the export is marked not exact;
* families without a mergekit architecture definition (LLaVA) or with another module layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from frankenlab.merge.plan import ANCHOR, TARGET, MergePlan, TensorPlan

#: mergekit module names per family (its _data/architectures/*.json); text families have one module.
_MODULES = {"llm": "text_decoder", "vision": "vision_tower", "projector": "multi_modal_projector"}
#: mergekit describes the VLM projector as a pseudo-stack of this many identical "layers".
_PROJECTOR_LAYERS = {"qwen2_vl": 2, "qwen2_5_vl": 2, "qwen3_vl": 3}
_TEXT_FAMILIES = {"text"}
_TORCH_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}


@dataclass(frozen=True)
class MergekitExport:
    yaml: str
    config: dict[str, Any]
    warnings: tuple[str, ...]

    @property
    def exact(self) -> bool:
        """True when mergekit would produce the plan's tensors (interpolations up to rounding aside)."""
        return not any(w.startswith(("differs:", "unsupported:")) for w in self.warnings)


Assign = tuple[str, float | None]  # (source, alpha)


def _assign(t: TensorPlan) -> Assign:
    """What mergekit can express for `t`: a rank-K tensor becomes its full delta (warned about)."""
    if t.rank_k is not None:
        if t.alpha is None:
            return (TARGET, None)
        return (ANCHOR, None) if t.alpha == 0.0 else (TARGET, t.alpha)
    label = t.copy_from
    return (label, None) if label is not None else (t.source, t.alpha)


def _describe(a: Assign) -> str:
    return a[0] if a[1] is None else f"{ANCHOR}+{a[1]:g}·({TARGET}−{ANCHOR})"


def _runs(plan: MergePlan, section: str) -> list[tuple[int, int, Assign]]:
    """[(first, last_exclusive, assignment)] over the blocks of one stack; mixed blocks are split."""
    per_block: dict[int, set[Assign]] = {}
    for t in plan.tensors:
        if t.section == section and t.block is not None:
            per_block.setdefault(t.block, set()).add(_assign(t))
    runs: list[tuple[int, int, Assign]] = []
    for b in sorted(per_block):
        assigns = per_block[b]
        a = next(iter(assigns)) if len(assigns) == 1 else ("mixed", None)
        if runs and runs[-1][1] == b and runs[-1][2] == a:
            runs[-1] = (runs[-1][0], b + 1, a)
        else:
            runs.append((b, b + 1, a))
    return runs


def _sources(a: Assign, lo: int, hi: int, paths: dict[str, str], linear: bool) -> list[dict[str, Any]]:
    label, alpha = a
    if alpha is None:
        src: dict[str, Any] = {"model": paths[label], "layer_range": [lo, hi]}
        if linear:
            src["parameters"] = {"weight": 1.0}
        return [src]
    return [{"model": paths[ANCHOR], "layer_range": [lo, hi], "parameters": {"weight": 1.0 - alpha}},
            {"model": paths[TARGET], "layer_range": [lo, hi], "parameters": {"weight": alpha}}]


def _edge_checks(plan: MergePlan, section: str, runs: list[tuple[int, int, Assign]], module: str,
                 warnings: list[str]) -> None:
    """Compare the leading/trailing non-block tensors with what mergekit would take."""
    if not runs:
        return
    first, last = runs[0][2], runs[-1][2]
    if first[1] is None and last[1] is not None:  # see the module docstring: one source, the anchor
        last = (ANCHOR, None)
    lead = {"llm": ("embed",), "vision": ("vision",)}[section]
    trail = {"llm": ("other", "head"), "vision": ()}[section]
    for t in plan.tensors:
        if t.block is not None:
            continue
        want = None
        if t.section in lead:
            want, where = first, "first"
        elif t.section in trail:
            want, where = last, "last"
        if want is None:
            continue
        if _assign(t) != want:
            warnings.append(f"differs: mergekit takes {t.out_name} ({module}) from the {where} slice "
                            f"({_describe(want)}), this plan from {_describe(_assign(t))}.")


def to_mergekit(plan: MergePlan) -> MergekitExport:
    """mergekit YAML for `plan`, plus warnings for every tensor it would produce differently."""
    paths = plan.paths
    warnings: list[str] = []
    ranked = [t for t in plan.tensors if t.rank_k is not None]
    if ranked:
        regions = ",".join(f"{r}={k}" for r, k in plan.recipe.rank)
        warnings.append(f"unsupported: --rank {regions}: mergekit has no rank-K (truncated SVD) operator on the "
                        f"delta RL - IN; this YAML writes the {len(ranked)} truncated tensor(s) (first: "
                        f"{ranked[0].out_name}) with their full delta instead. Use frankenlab merge for rank-K.")
    alphas = {_assign(t)[1] for t in plan.tensors} - {None}
    linear = bool(alphas)
    extrapolated = sorted(a for a in alphas if not 0.0 <= a <= 1.0)
    if linear:
        warnings.append("rounding: interpolated tensors are computed by mergekit's linear method "
                        "((1-a)*IN + a*RL in its working dtype); they agree to output precision, not bit for bit.")
    if extrapolated:
        listed = ", ".join(f"{a:g}" for a in extrapolated)
        warnings.append(f"rounding: alpha {listed} extrapolates; mergekit's linear method accepts the weights "
                        "(1-a, a) outside [0, 1] unchecked (normalize divides by their sum, 1), but (1-a)*IN + a*RL "
                        "cancels large terms, so the YAML computes in float32 (dtype) and casts on output "
                        "(out_dtype).")
    dtypes = {t.out_dtype for t in plan.tensors}
    config: dict[str, Any] = {"merge_method": "linear" if linear else "passthrough",
                              "base_model": paths[plan.rest]}
    if len(dtypes) == 1:
        config["dtype"] = _TORCH_NAMES.get(next(iter(dtypes)), next(iter(dtypes)).lower())
    modules: dict[str, Any] = {}
    for section in ("llm", "vision"):
        runs = _runs(plan, section)
        if not runs:
            continue
        module = _MODULES[section]
        for lo, hi, a in runs:
            if a[0] == "mixed":
                warnings.append(f"differs: {section} block(s) {lo}-{hi - 1} mix sources within a block; mergekit "
                                "slices take whole layers.")
        slices = [{"sources": _sources(a if a[0] != "mixed" else (plan.rest, None), lo, hi, paths, linear)}
                  for lo, hi, a in runs]
        modules[module] = {"slices": slices}
        _edge_checks(plan, section, runs, module, warnings)
    proj = {_assign(t) for t in plan.tensors if t.section == "projector"}
    if proj:
        n = _PROJECTOR_LAYERS.get(plan.family)
        if len(proj) > 1:
            warnings.append("differs: projector tensors come from several sources; mergekit takes it whole.")
        a = next(iter(proj))
        if n is None:
            warnings.append(f"unsupported: mergekit has no projector definition for {plan.family}.")
            n = 1
        modules[_MODULES["projector"]] = {"slices": [{"sources": _sources(a, 0, n, paths, linear)}]}
    if plan.family not in _PROJECTOR_LAYERS and plan.family not in _TEXT_FAMILIES:
        warnings.append(f"unsupported: mergekit ships no architecture definition for {plan.family} "
                        f"({plan.model_type}); the YAML shows the intended slices but may not run.")
    if plan.family in _TEXT_FAMILIES:
        config["slices"] = modules["text_decoder"]["slices"]
    else:
        config["modules"] = modules
    if plan.dtype is not None and len(dtypes) == 1:
        config["out_dtype"] = config["dtype"]
    if extrapolated and config.get("dtype") in ("bfloat16", "float16"):
        config["out_dtype"] = config["dtype"]
        config["dtype"] = "float32"
    header = [
        "# mergekit equivalent of a frankenlab merge (generated; mergekit is not a frankenlab dependency)",
        f"# recipe: {plan.recipe.spec()}",
        f"# run: mergekit-yaml THIS.yaml OUT_DIR   (inputs use the {plan.layout} key layout)",
    ]
    if warnings:
        header.append("# Where mergekit's result differs from frankenlab's plan:")
        header += [f"#   - {w}" for w in warnings]
    else:
        header.append("# mergekit expresses this plan exactly.")
    text = "\n".join(header) + "\n" + yaml.safe_dump(config, sort_keys=False, default_flow_style=None)
    return MergekitExport(yaml=text, config=config, warnings=tuple(warnings))
