"""The same freeze as a config fragment for other RL trainers: verl, EasyR1, OpenRLHF, TRL + DeepSpeed.

Why per trainer: each takes a frozen set differently, and most can only freeze the whole vision tower.
A fragment therefore uses the trainer's native option only when that option freezes *exactly* the
``freeze show`` set; otherwise it is a small Python hook (``freeze(model)``) naming every frozen parameter,
with the place in the trainer's source where it must be called. Names are the in-memory (transformers5)
ones, what ``model.named_parameters()`` yields inside these trainers.

Sources read for the native options (snapshots of each repository's default branch):

* verl (volcengine/verl b178a3c): ``actor_rollout_ref.actor.freeze_vision_tower`` (verl/trainer/config/actor/
  actor.yaml); verl/workers/fsdp_workers.py ``_build_model_optimizer`` calls
  ``get_vl_model_vision_tower(model).requires_grad_(False)``, i.e. ``model.model.visual`` (Qwen-VL only;
  LLaVA prints "No vision tower found"), and forces FSDP ``use_orig_params``.
* EasyR1 (hiyouga/EasyR1 b44b311): ``worker.actor.model.freeze_vision_tower`` (verl/workers/actor/config.py);
  verl/workers/fsdp_workers.py freezes ``model.model.visual`` (or ``model.visual``), same set as verl.
* OpenRLHF (OpenRLHF/OpenRLHF 3c3be62): ``--actor.freeze_visual_encoder`` (openrlhf/cli/train_ppo_ray.py);
  openrlhf/models/actor.py freezes, on VLMs only, every parameter whose name contains neither
  ``language_model`` nor ``lm_head``. There is no ``--freeze_prefix`` option in its history.
* TRL (1.16, installed): ``GRPOTrainer`` has no freeze option; parameters with ``requires_grad=False`` never
  reach the optimizer (transformers ``Trainer.create_optimizer`` filters on it).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from frankenlab.arch.base import Adapter
from frankenlab.errors import FreezeError
from frankenlab.freeze.emit import emit_list, emit_regex
from frankenlab.freeze.spec import FreezeSpec

__all__ = ["TRAINER_FORMATS", "emit_trainer", "native_frozen"]

TRAINER_FORMATS: tuple[str, ...] = ("verl", "easyr1", "openrlhf", "trl-deepspeed")


def _visual_module(names: list[str]) -> set[str]:
    # verl/EasyR1: model.model.visual.requires_grad_(False)
    return {n for n in names if n.startswith("model.visual.")}


def _openrlhf_visual(names: list[str]) -> set[str]:
    # openrlhf/models/actor.py: `if "language_model" not in name and "lm_head" not in name: freeze`
    return {n for n in names if "language_model" not in n and "lm_head" not in n}


_NATIVE: dict[str, Callable[[list[str]], set[str]]] = {
    "verl": _visual_module,
    "easyr1": _visual_module,
    "openrlhf": _openrlhf_visual,
}


def native_frozen(trainer: str, adapter: Adapter, names: list[str]) -> set[str] | None:
    """The parameters ``trainer``'s own vision-freeze option would freeze on this model (None: no such option,
    or it does nothing here). ``names`` are in-memory (transformers5) parameter names."""
    rule = _NATIVE.get(trainer)
    if rule is None or not adapter.has_vision:
        return None
    chosen = rule(names)
    return chosen or None


def emit_trainer(trainer: str, spec: FreezeSpec, adapter: Adapter, names: list[str], source: str = "CKPT") -> str:
    """A fragment for ``trainer`` (one of :data:`TRAINER_FORMATS`) that freezes exactly ``spec.select(...)``.

    YAML (verl, EasyR1) or CLI flags (OpenRLHF) when the trainer's native option covers the set exactly,
    else a Python hook; the first line says which and where it goes.
    """
    if trainer not in TRAINER_FORMATS:
        raise FreezeError(f"--emit {trainer!r}: use one of regex, list, {', '.join(TRAINER_FORMATS)}.")
    laid_out = [adapter.to_layout(n, "transformers5") for n in names]
    chosen = emit_list(spec, adapter, names, "transformers5")
    head = f"frankenlab freeze emit --emit {trainer}: {spec.text!r} on {source}: {len(chosen)} tensors frozen"
    native = native_frozen(trainer, adapter, laid_out)
    if native is not None and native == set(chosen):
        if trainer == "verl":
            return (f"# {head} (native option, verl/workers/fsdp_workers.py)\n"
                    "actor_rollout_ref:\n  actor:\n    freeze_vision_tower: true\n")
        if trainer == "easyr1":
            return (f"# {head} (native option, verl/workers/fsdp_workers.py of EasyR1)\n"
                    "worker:\n  actor:\n    model:\n      freeze_vision_tower: true\n")
        return f"# {head} (native option, openrlhf/models/actor.py)\n--actor.freeze_visual_encoder\n"
    regex = emit_regex(spec, adapter, names, "transformers5")
    return _hook(trainer, head, regex, chosen)


_WHERE = {
    "verl": (
        "verl has no option for this set (actor_rollout_ref.actor.freeze_vision_tower freezes only the whole\n"
        "# model.model.visual). Call freeze(actor_module) in verl/workers/fsdp_workers.py,\n"
        "# ActorRolloutRefWorker._build_model_optimizer, right after its freeze_vision_tower block (before FSDP\n"
        "# wraps the module), and run with actor_rollout_ref.actor.fsdp_config.use_orig_params=true (FSDP1 needs\n"
        "# it for mixed requires_grad, as verl's own vision freeze sets)."
    ),
    "easyr1": (
        "EasyR1 has no option for this set (worker.actor.model.freeze_vision_tower freezes only the whole\n"
        "# model.model.visual). Call freeze(model) in verl/workers/fsdp_workers.py of EasyR1, in\n"
        "# _build_model_optimizer right after its freeze_vision_tower block (before FSDP wraps the module),\n"
        "# and run with worker.actor.fsdp.use_orig_params=true (as its own vision freeze sets)."
    ),
    "openrlhf": (
        "OpenRLHF has no option for this set (--actor.freeze_visual_encoder freezes everything outside\n"
        "# language_model/lm_head, on VLMs only). Call freeze(actor.model) in openrlhf/trainer/ray/ppo_actor.py\n"
        "# right after `actor = Actor(...)` (before strategy.prepare builds the DeepSpeed optimizer)."
    ),
    "trl-deepspeed": (
        "TRL has no freeze option. Call freeze(trainer.model) after GRPOTrainer(...) and before\n"
        "# trainer.train() (the optimizer is built in train() from parameters with requires_grad=True; TRL's\n"
        "# experimental AsyncGRPOTrainer re-enables the whole text model in __init__, so freezing before\n"
        "# construction is undone there). Under ZeRO-3 save with\n"
        "# \"zero_optimization\": {\"stage3_gather_16bit_weights_on_model_save\": true} so save_pretrained writes\n"
        "# full tensors, then check with: frankenlab freeze verify BEFORE AFTER --frozen SPEC."
    ),
}


def _hook(trainer: str, head: str, regex: str, chosen: list[str]) -> str:
    names = ",\n".join(f"    {json.dumps(n)}" for n in chosen)
    return f'''# {head} (Python hook)
# {_WHERE[trainer]}
import re

FROZEN_REGEX = {regex!r}
FROZEN_NAMES = frozenset({{
{names},
}})


def freeze(model):
    """Set requires_grad=False on exactly FROZEN_NAMES (matched by FROZEN_REGEX); fail if the names do not fit."""
    rx = re.compile(FROZEN_REGEX)
    params = dict(model.named_parameters())
    hit = {{n for n in params if rx.match(n)}}
    if hit != FROZEN_NAMES:
        missing = sorted(FROZEN_NAMES - hit)
        raise RuntimeError(
            f"frankenlab freeze hook: the regex matches {{len(hit)}} parameters, {{len(FROZEN_NAMES)}} expected "
            f"(first missing: {{missing[:1]}}); the model's names differ from the checkpoint's (PEFT or another "
            "wrapper?). Emit again from the model you train."
        )
    for n in FROZEN_NAMES:
        params[n].requires_grad_(False)
    return len(FROZEN_NAMES)
'''
