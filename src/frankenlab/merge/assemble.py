"""Assembly from a plan: a checkpoint directory on disk, or weights swapped into a loaded model.

On disk (`write_merged`, `merge`): tensors stream into bounded shards inside a temporary sibling
directory that is renamed into place only when everything (and `verify`, if asked) succeeded.
Verbatim tensors are copied byte for byte in the kernel; interpolated or re-typed ones are computed
in bounded chunks; rank-K ones (a truncated SVD needs the whole matrix) one matrix at a time.
Config, generation config, tokenizer, processor and chat-template files come from the rest model;
`provenance.json` records every tensor's source.

In memory (`assemble`): a model is loaded once (from the rest model) and later calls copy in only
the tensors whose declared source differs from what the model holds, so a sweep over variants
never reloads the whole model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from frankenlab.checkpoint import Checkpoint, open_checkpoint
from frankenlab.errors import ArchitectureError, OutputError, RecipeError
from frankenlab.io import atomic_dir, write_json
from frankenlab.io.shards import DEFAULT_MAX_SHARD_BYTES, ShardWriter, st_dtype
from frankenlab.merge.compute import DEFAULT_CHUNK_ELEMS, Sources, intra_op_threads
from frankenlab.merge.plan import ANCHOR, TARGET, MergePlan, TensorPlan, make_plan
from frankenlab.merge.recipe import Recipe

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

PROVENANCE_FILE = "provenance.json"
#: Files copied from the rest model besides config.json (whatever of them exists).
AUX_PATTERNS = (
    "generation_config.json", "tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab*",
    "merges*", "chat_template*", "preprocessor_config.json", "processor_config.json",
    "video_preprocessor_config.json", "*.tiktoken", "spiece.model", "additional_chat_templates",
)
CheckpointLike = str | os.PathLike[str] | Checkpoint


@contextlib.contextmanager
def open_inputs(in_: CheckpointLike, rl: CheckpointLike) -> Iterator[dict[str, Checkpoint]]:
    """IN and RL as open Checkpoints; those opened here are closed afterwards."""
    with contextlib.ExitStack() as stack:
        models = {}
        for label, src in (("IN", in_), ("RL", rl)):
            c = open_checkpoint(src, label=label)
            if not isinstance(src, Checkpoint):
                stack.enter_context(c)
            models[label] = c
        yield models


def _as_recipe(recipe: Recipe | str | MergePlan) -> Recipe:
    if isinstance(recipe, MergePlan):
        return recipe.recipe
    if isinstance(recipe, str):
        return Recipe.parse(recipe)
    return recipe


# -- on disk ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class MergeResult:
    out: Path
    plan: MergePlan
    files: tuple[str, ...]
    bytes_written: int
    seconds: float
    verified: bool


def _torch_name(st: str) -> str:
    return {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}.get(st, st.lower())


def _copy_aux(rest: Checkpoint, tmp: Path, dtype: str | None) -> list[str]:
    copied = []
    if dtype is None:
        (tmp / "config.json").write_bytes(rest.config_bytes)
    else:  # the stored dtype changed: say so, or "auto" loading would cast back
        def retag(node: Any) -> Any:
            if isinstance(node, dict):
                return {k: (_torch_name(dtype) if k in ("dtype", "torch_dtype") and isinstance(v, str) else retag(v))
                        for k, v in node.items()}
            return node

        (tmp / "config.json").write_text(json.dumps(retag(rest.config), indent=2) + "\n", encoding="utf-8")
    for pattern in AUX_PATTERNS:
        for src in sorted(rest.root.glob(pattern)):
            if src.suffix == ".safetensors" or (tmp / src.name).exists():
                continue
            if src.is_dir():
                shutil.copytree(src, tmp / src.name)
            else:
                shutil.copyfile(src, tmp / src.name)
            copied.append(src.name)
    return copied


def svd_record(plan: MergePlan, threads: int) -> dict[str, Any] | None:
    """What `--verify` (or anyone) needs to recompute the rank-K tensors bit for bit; None without any."""
    if not any(t.rank_k is not None for t in plan.tensors):
        return None
    import torch

    return {"function": "torch.linalg.svd", "full_matrices": False, "threads": threads, "torch": torch.__version__,
            "truncated_tensors": sum(1 for t in plan.tensors if t.rank_k is not None)}


def _svd_threads(threads: int | None) -> int:
    import torch

    return max(1, int(threads)) if threads is not None else torch.get_num_threads()


def _shard_metadata(plan: MergePlan) -> dict[str, str]:
    return {"frankenlab_recipe": plan.recipe.spec(), "frankenlab_rest": plan.rest,
            "frankenlab_inputs": json.dumps(plan.inputs, sort_keys=True)}


def write_merged(plan: MergePlan, models: Mapping[str, Checkpoint], out: str | os.PathLike[str], *,
                 overwrite: bool = False, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, verify: bool = False,
                 chunk_elems: int = DEFAULT_CHUNK_ELEMS, threads: int | None = 1) -> MergeResult:
    """Write `plan` as a Hugging Face checkpoint directory `out` (atomically; see module docstring).

    `threads` caps torch's intra-op threads while computing (see `compute.intra_op_threads`); rank-K
    tensors are computed with exactly that many (None: torch's current count), recorded in provenance.
    """
    from frankenlab.manifest import versions

    models = {k.upper(): v for k, v in models.items()}
    for label, fp in plan.inputs.items():
        if label not in models or models[label].fingerprint != fp:
            raise RecipeError(f"the plan was made for another {label} checkpoint; make the plan again.")
    rest = models[plan.rest]
    svd_threads = _svd_threads(threads)
    t0 = time.perf_counter()
    target = Path(out)
    entered = False
    try:
        with atomic_dir(target, overwrite=overwrite) as tmp:
            entered = True
            with intra_op_threads(threads), Sources(models, chunk_elems=chunk_elems, svd_threads=svd_threads) as src, \
                    ShardWriter(tmp, [t.spec for t in plan.tensors], max_shard_bytes=max_shard_bytes,
                                metadata=_shard_metadata(plan)) as writer:
                for t in plan.tensors:
                    raw = src.raw_copy(t)
                    if raw is not None:
                        writer.copy_range(t.out_name, *raw)
                    else:
                        writer.write_chunks(t.out_name, src.chunks(t))
                files = tuple(writer.files)
            aux = _copy_aux(rest, tmp, plan.dtype)
            prov = plan.provenance()
            tensors = prov.pop("tensors")
            svd = svd_record(plan, svd_threads)
            if svd is not None:
                prov["svd"] = svd
            prov.update({"files": list(files), "copied_from_rest": ["config.json", *aux], "versions": versions(),
                         "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "tensors": tensors})
            write_json(tmp / PROVENANCE_FILE, prov)
            if verify:
                from frankenlab.merge.verify import verify_merged

                with intra_op_threads(threads):
                    verify_merged(tmp, models, chunk_elems=chunk_elems)
    except OutputError as exc:
        if entered and "nothing was left behind" not in str(exc):
            raise OutputError(f"{exc} The partial output was removed; nothing was left behind.") from exc
        raise
    return MergeResult(out=target.resolve(), plan=plan, files=files, bytes_written=plan.total_bytes,
                       seconds=time.perf_counter() - t0, verified=verify)


def merge(in_: CheckpointLike, rl: CheckpointLike, recipe: Recipe | str, out: str | os.PathLike[str], *,
          dtype: str | torch.dtype | None = None, overwrite: bool = False, verify: bool = False,
          max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, threads: int | None = 1) -> MergeResult:
    """Plan and write one variant: `merge("ckpt/in", "ckpt/rl", "IN:RL:RL", "out/in-rl-rl")`."""
    with open_inputs(in_, rl) as models:
        plan = make_plan(_as_recipe(recipe), models, dtype=dtype)
        return write_merged(plan, models, out, overwrite=overwrite, verify=verify, max_shard_bytes=max_shard_bytes,
                            threads=threads)


# -- in memory -------------------------------------------------------------------------------
STATE_ATTR = "_frankenlab_assembly"


@dataclass
class AssemblyState:
    """What an assembled model holds: per canonical tensor, a key naming its values' origin."""

    held: dict[str, tuple[Any, ...]]
    provenance: dict[str, Any] | None = None
    loaded: tuple[str, ...] = ()  # tensors copied in by the last `assemble` call
    skipped: int = 0


def assembly_state(model: Any) -> AssemblyState | None:
    return getattr(model, STATE_ATTR, None)


def _key(t: TensorPlan, fps: Mapping[str, str], svd_threads: int = 1) -> tuple[Any, ...]:
    label = t.copy_from
    if label is not None:
        return ("copy", fps[label])
    if t.rank_k is not None:
        return ("rank", fps[ANCHOR], fps[TARGET], t.alpha, t.rank_k, svd_threads)
    return ("interp", fps[ANCHOR], fps[TARGET], t.alpha)


def assemble(recipe: Recipe | str | MergePlan, in_: CheckpointLike, rl: CheckpointLike, *, model: Any = None,
             dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu",
             attn_implementation: str | None = None, assume: str | None = None, threads: int | None = 1) -> Any:
    """A transformers model holding the recipe's weights, without writing anything to disk.

    Without `model`, the rest model is loaded (`runtime.load_model`) and the recipe applied. With
    `model`, tensors are copied into it in place, and only those whose source differs from what
    the model holds: after an earlier `assemble` the model knows (see `assembly_state`); for a
    model loaded otherwise, pass `assume="IN"` (or "RL") if it holds exactly that checkpoint,
    else every planned tensor is copied. Values equal the on-disk path's bit for bit (with `dtype`,
    or the model's own dtype, as the output dtype; rank-K tensors with the same `threads` as the
    writer's, see `compute.low_rank_delta`). Returns the model.
    """
    import torch

    from frankenlab.runtime.load import load_model

    with open_inputs(in_, rl) as models:
        plan = make_plan(_as_recipe(recipe), models, dtype=dtype)
        fps = plan.inputs
        svd_threads = _svd_threads(threads)
        if model is None:
            model = load_model(models[plan.rest], dtype=dtype, device=device, attn_implementation=attn_implementation)
            state = AssemblyState(held={n: ("copy", fps[plan.rest]) for n in models[plan.rest].canonical_names()})
        else:
            state = assembly_state(model)
            if state is None:
                held = {}
                if assume is not None:
                    label = assume.upper()
                    if label not in models:
                        raise RecipeError(f"assume={assume!r}: expected IN or RL.")
                    held = {n: ("copy", fps[label]) for n in models[label].canonical_names()}
                state = AssemblyState(held=held)
        targets = dict(model.named_parameters(remove_duplicate=False))
        targets.update(dict(model.named_buffers(remove_duplicate=False)))
        by_storage: dict[int, TensorPlan] = {}
        todo: list[tuple[TensorPlan, Any]] = []
        for t in plan.tensors:
            dest = targets.get(t.name)
            if dest is None:
                raise ArchitectureError(f"the model has no parameter {t.name!r}; was it loaded from another "
                                        "architecture than the checkpoints?")
            if tuple(dest.shape) != t.shape:
                raise ArchitectureError(f"parameter {t.name!r} has shape {list(dest.shape)} in the model but "
                                        f"{list(t.shape)} in the checkpoints.")
            ptr = dest.data_ptr()
            twin = by_storage.get(ptr)
            if twin is not None:
                if _key(twin, fps, svd_threads) != _key(t, fps, svd_threads):
                    raise RecipeError(f"{t.name!r} and {twin.name!r} share one tensor in this model (tied weights) "
                                      "but the recipe takes them from different sources; take both from one model.")
                state.held[t.name] = _key(t, fps, svd_threads)
                continue
            by_storage[ptr] = t
            todo.append((t, dest))
        loaded = []
        with Sources(models, svd_threads=svd_threads) as src, torch.no_grad():
            for t, dest in todo:
                key = _key(t, fps, svd_threads)
                if state.held.get(t.name) == key:
                    continue
                exact = dataclasses.replace(t, out_dtype=st_dtype(dest.dtype))
                dest.data.copy_(src.tensor(exact))
                state.held[t.name] = key
                loaded.append(t.name)
        state.provenance = plan.provenance()
        svd = svd_record(plan, svd_threads)
        if svd is not None:
            state.provenance["svd"] = svd
        state.loaded = tuple(loaded)
        state.skipped = len(plan.tensors) - len(loaded)
        setattr(model, STATE_ATTR, state)
        log.info("assembled %s: %d tensors copied in, %d already held", plan.recipe.label, len(loaded), state.skipped)
        return model
