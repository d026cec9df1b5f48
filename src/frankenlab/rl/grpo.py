"""GRPO through TRL's ``GRPOTrainer``, with a freeze spec applied first and proven afterwards.

Why a wrapper: TRL has no block freezing, and a freeze that silently matches nothing looks exactly
like a successful run. Here the spec is resolved against the model's own adapter (an empty match is
an error), only trainable parameters reach the optimizer, and :func:`run_rl` re-checks the saved
checkpoint with :func:`frankenlab.freeze.verify_frozen`. Runs are deterministic on one machine: one
thread, deterministic kernels, TRL's seed for sampling and data order, all restored afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from frankenlab.errors import FrankenlabError, FreezeError
from frankenlab.rl.rewards import MODES, ExactMatchReward

if TYPE_CHECKING:
    from frankenlab.tasks import Task, TaskItem

__all__ = ["GRPORun", "GRPOSettings", "deterministic", "quiet_transformers", "rl_dataset",
           "rl_items_from_tasks", "run_rl", "train_grpo"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GRPOSettings:
    """GRPO knobs that matter at mini-world scale (everything else is TRL's default)."""

    steps: int = 100
    lr: float = 1e-4
    prompts_per_step: int = 16
    num_generations: int = 4
    max_completion_length: int = 6
    temperature: float = 1.0
    beta: float = 0.0
    seed: int = 0
    reward: str = "strict"
    warmup_steps: int = 0
    threads: int = 1  # torch threads while training: 1 makes a run bit-reproducible on one machine

    def __post_init__(self) -> None:
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise FrankenlabError(f"threads={self.threads!r}: GRPO needs an integer thread count >= 1 (1 is "
                                  "bit-reproducible).")
        if self.steps < 1 or self.prompts_per_step < 1:
            raise FrankenlabError(f"GRPO steps and prompts per step must be >= 1, got {self.steps}, "
                                  f"{self.prompts_per_step}.")
        if self.num_generations < 2:
            raise FrankenlabError(f"num_generations={self.num_generations}: GRPO needs >= 2 samples per prompt "
                                  "to form a group advantage.")
        if self.reward not in MODES:
            raise FrankenlabError(f"unknown reward {self.reward!r}; choose one of {list(MODES)}.")
        if not 0 < self.lr < 1e-2:
            raise FrankenlabError(f"learning rate {self.lr} is outside (0, 1e-2); tiny models collapse above ~3e-4.")


def rl_items_from_tasks(tasks: Sequence[Task]) -> list[TaskItem]:
    """Every item of the tasks (JSONL, Parquet, hub, generated), images read now so that a missing file fails
    before training; each item's ``family`` (its row's field, else its task's name) groups the rewards."""
    return [replace(it, image=it.load_image()) if it.has_image else it for task in tasks for it in task.items]


@dataclass
class GRPORun:
    """What a GRPO run did: frozen tensors, reward counts, TRL's log history."""

    settings: GRPOSettings
    freeze: str | None
    frozen_names: list[str] = field(default_factory=list)
    trainable_params: int = 0
    frozen_params: int = 0
    reward: dict[str, Any] = field(default_factory=dict)
    log_history: list[dict[str, Any]] = field(default_factory=list)
    device: str = "cpu"  # where it trained: a GPU run is reproducible on that GPU, not bit-equal to a CPU one

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": asdict(self.settings), "freeze": self.freeze, "device": self.device,
            "n_frozen_tensors": len(self.frozen_names),
            "trainable_params": self.trainable_params, "frozen_params": self.frozen_params, "reward": self.reward,
            "log_history": self.log_history,
        }


@contextlib.contextmanager
def deterministic(threads: int = 1) -> Iterator[None]:
    """One torch thread and deterministic kernels for the block; the previous settings come back after.

    Deterministic mode also NaN-fills every ``torch.empty`` by default, a debugging aid that made TRL's
    fused log-prob kernel (a 32k-wide vocabulary tile) spend half of each GRPO step writing NaNs; it is
    switched off here, which changes no result.
    """
    import torch
    import torch.utils.deterministic as det

    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    old_fill = det.fill_uninitialized_memory
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    det.fill_uninitialized_memory = False
    try:
        yield
    finally:
        det.fill_uninitialized_memory = old_fill
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        torch.set_num_threads(old_threads)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """No transformers progress bars ("Loading weights", "Writing model shards") and no TRL/transformers
    deprecation chatter for the block: the library logs, the CLI shows progress."""
    import warnings

    from frankenlab.runtime.load import hf_progress_off

    with hf_progress_off(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*gradient_checkpointing.*", category=FutureWarning)
        yield


def _left_padded(processor: Any) -> contextlib.AbstractContextManager[None]:
    """TRL left-pads prompt ids itself; the processor's per-token fields (mm_token_type_ids) must agree."""
    from frankenlab.runtime.generate import left_padding

    return left_padding(processor)


def rl_dataset(items: Sequence[TaskItem], block: int = 1, seed: int = 0) -> Any:
    """A ``datasets.Dataset`` in TRL's conversational VLM shape: ``prompt`` messages plus an ``images`` list.

    ``items`` are :class:`~frankenlab.tasks.TaskItem` objects (images in memory or as paths).

    TRL 1.16 crashes on a generation batch that mixes image and text-only prompts (it hands ``None``
    images to the processor). So rows are laid out in homogeneous blocks of ``block`` prompts (one
    GRPO step's worth) in a seeded order, and training reads them in that order; items that do not fill
    a last block of their kind are left out (logged).
    """
    import random

    from datasets import Dataset, Features, Image, Value

    if not items:
        raise FrankenlabError("the RL task list is empty; pass at least one task row.")
    if block < 1:
        raise FrankenlabError(f"block size must be >= 1, got {block}.")
    rng = random.Random(f"frankenlab.rl.blocks:{seed}")
    blocks: list[list[Any]] = []
    for kind in (True, False):
        rows = [it for it in items if (it.image is not None) == kind]
        rng.shuffle(rows)
        full = len(rows) - len(rows) % block
        if full < len(rows):
            log.info("RL data: %d %s rows do not fill a block of %d and are left out", len(rows) - full,
                     "image" if kind else "text-only", block)
        blocks += [rows[i : i + block] for i in range(0, full, block)]
    if not blocks:
        raise FrankenlabError(f"{len(items)} RL rows cannot fill one step of {block} prompts of one kind (image "
                              "or text-only); pass more rows or fewer prompts per step.")
    rng.shuffle(blocks)
    ordered = [it for chunk in blocks for it in chunk]
    features = Features({
        "prompt": [{"role": Value("string"), "content": Value("string")}],
        "images": [Image()],
        "answer": Value("string"),
        "answer_type": Value("string"),
        "family": Value("string"),
        "choices": [Value("string")],
    })
    data = {
        "prompt": [[{"role": "user", "content": it.question}] for it in ordered],
        # an empty list (not None) for text-only rows: TRL then treats the whole block as text-only
        "images": [[it.load_image()] if it.has_image else [] for it in ordered],
        "answer": [str(it.answer) for it in ordered],
        "answer_type": [it.answer_type for it in ordered],
        "family": [it.family for it in ordered],
        "choices": [list(getattr(it, "choices", None) or []) for it in ordered],
    }
    return Dataset.from_dict(data, features=features)


def _vision_token_ids(processor: Any, model: Any) -> list[int]:
    from frankenlab.runtime.generate import suppressed_ids

    return suppressed_ids(processor, getattr(model, "config", None))


def train_grpo(
    model: Any,
    processor: Any,
    items: Sequence[TaskItem],
    settings: GRPOSettings | None = None,
    *,
    freeze: str | None = None,
    cuts: str | None = None,
    device: str = "cpu",
) -> GRPORun:
    """Train ``model`` in place with GRPO and a verifiable exact-match reward; returns what happened.

    ``freeze`` is a region spec (``early``, ``mid``, ``late``, ``vision``, ``llm:2-3``, ...) resolved by
    the model's adapter; frozen parameters get ``requires_grad=False`` and never reach the optimizer.
    ``device``: "cpu" (bit-reproducible on one machine), "auto" (the GPU when there is one), "cuda",
    "cuda:N"; training stays fp32 on every device.
    """
    from frankenlab.runtime.devices import resolve_device

    device = resolve_device(device)
    try:
        from transformers.trainer_callback import PrinterCallback, ProgressCallback
        from trl import GRPOConfig, GRPOTrainer
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise FrankenlabError("GRPO needs TRL: pip install 'frankenlab[rl]' (trl, accelerate, datasets).") from exc
    from frankenlab.arch.registry import adapter_for
    from frankenlab.freeze import apply_freeze, parse_freeze
    from frankenlab.freeze.spec import kept_requires_grad

    settings = settings or GRPOSettings()
    run = GRPORun(settings=settings, freeze=freeze, device=device)
    keep = contextlib.ExitStack()
    keep.enter_context(kept_requires_grad(model))  # the caller's model leaves as it came, frozen or not
    try:
        if freeze:
            adapter = adapter_for(model.config.to_dict())
            spec = parse_freeze(freeze, adapter, cuts)
            run.frozen_names = apply_freeze(model, adapter, spec, cuts).frozen_names
        params = list(model.parameters())
        run.trainable_params = sum(p.numel() for p in params if p.requires_grad)
        run.frozen_params = sum(p.numel() for p in params if not p.requires_grad)
        if run.trainable_params == 0:
            raise FreezeError(f"freeze spec {freeze!r} leaves no trainable parameter; nothing for GRPO to train.")
        reward = ExactMatchReward(settings.reward)
        dataset = rl_dataset(items, block=settings.prompts_per_step, seed=settings.seed)
        with (
            tempfile.TemporaryDirectory(prefix="frankenlab-grpo-") as work,
            _on_device(device),
            deterministic(settings.threads),
            _left_padded(processor),
            quiet_transformers(),
        ):
            trainer = GRPOTrainer(
                model=model, reward_funcs=[reward],
                args=_grpo_config(GRPOConfig, settings, work, processor, model, use_cpu=device == "cpu"),
                train_dataset=dataset, processing_class=processor,
            )
            # The library logs; printing belongs to the CLI.
            trainer.remove_callback(PrinterCallback)
            trainer.remove_callback(ProgressCallback)
            trainer.train()
            run.log_history = [dict(h) for h in trainer.state.log_history]
    finally:
        keep.close()
        model.eval()
    run.reward = reward.summary()
    return run


@contextlib.contextmanager
def _on_device(device: str) -> Iterator[None]:
    """On a GPU: cuBLAS gets the workspace that deterministic kernels need (set before its first use, kept
    afterwards), and `cuda:N` is the current GPU for the block, since the trainer trains on the current one
    (plain `cuda` leaves the current GPU alone, which `accelerate launch` sets per process)."""
    if device == "cpu":
        yield
        return
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    index = torch.device(device).index
    with torch.cuda.device(index) if index is not None else contextlib.nullcontext():
        yield


def _grpo_config(config_cls: Any, settings: GRPOSettings, work: str, processor: Any, model: Any,
                 use_cpu: bool = True) -> Any:
    """TRL's config for a small, deterministic run (CPU unless ``use_cpu`` is False) that saves and prints
    nothing."""
    return config_cls(
        output_dir=work,
        max_steps=settings.steps,
        learning_rate=settings.lr,
        lr_scheduler_type="constant_with_warmup" if settings.warmup_steps else "constant",
        warmup_steps=settings.warmup_steps,
        per_device_train_batch_size=settings.prompts_per_step * settings.num_generations,
        gradient_accumulation_steps=1,
        num_generations=settings.num_generations,
        max_completion_length=settings.max_completion_length,
        temperature=settings.temperature,
        beta=settings.beta,
        seed=settings.seed,
        data_seed=settings.seed,
        shuffle_dataset=False,  # rl_dataset's seeded block order keeps image and text prompts apart
        use_cpu=use_cpu,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        weight_decay=0.0,
        max_grad_norm=1.0,
        save_strategy="no",
        report_to="none",
        logging_steps=max(1, settings.steps // 10),
        disable_tqdm=True,
        dataloader_num_workers=0,
        generation_kwargs={"suppress_tokens": _vision_token_ids(processor, model)},
    )


def run_rl(
    model_dir: str | os.PathLike[str],
    tasks: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    settings: GRPOSettings | None = None,
    *,
    freeze: str | None = None,
    cuts: str | None = None,
    overwrite: bool = False,
    device: str = "cpu",
) -> Path:
    """Load a checkpoint, run GRPO on task files (JSONL/Parquet, :mod:`frankenlab.tasks` format), save
    atomically, and prove the freeze held.

    Writes ``out_dir`` as a Hugging Face directory (model + processor) with ``rl_run.json`` (settings,
    reward counts, log history, freeze verification). Nothing is left behind when any step fails.
    ``device`` as :func:`train_grpo` ("cpu" by default; the CLI's ``--device auto`` is the GPU when present).
    """
    from frankenlab.runtime.load import load
    from frankenlab.tasks import load_tasks

    settings = settings or GRPOSettings()
    if not tasks:
        raise FrankenlabError("no task files given; pass --tasks PATH.jsonl (one or more).")
    items = rl_items_from_tasks(load_tasks([str(t) for t in tasks]))
    target = Path(out_dir)
    if target.exists() and not overwrite:
        raise FrankenlabError(f"{target} already exists; choose another --out or pass --overwrite.")
    with quiet_transformers():
        model, processor = load(model_dir, attn_implementation="eager")
    model.float()
    run = train_grpo(model, processor, items, settings, freeze=freeze, cuts=cuts, device=device)
    state = _multi_process_state()
    if state is not None and not state.is_main_process:
        # torchrun / accelerate launch with N > 1: every rank holds the same weights; only the main one saves
        # (N writers racing for one atomic_dir fail), the others wait for it and return its checkpoint.
        state.wait_for_everyone()
        if not (target / "rl_run.json").is_file():
            raise FrankenlabError(f"the main process did not write {target}; see its error above.")
        return target
    try:
        _save_and_verify(model, processor, run, target, model_dir, tasks, items, freeze, cuts, overwrite)
    finally:
        if state is not None:
            state.wait_for_everyone()
    return target


def _multi_process_state() -> Any:
    """accelerate's process state when this run is one of several processes (None for a single process).

    Asked only after training, when the trainer has set the shared state up (asking earlier would fix its
    device before TRL's ``use_cpu`` does)."""
    try:
        from accelerate import PartialState
    except ImportError:  # pragma: no cover - accelerate comes with TRL
        return None
    state = PartialState()
    return state if state.num_processes > 1 else None


def _save_and_verify(model: Any, processor: Any, run: GRPORun, target: Path, model_dir: str | os.PathLike[str],
                     tasks: Sequence[str | os.PathLike[str]], items: Sequence[TaskItem], freeze: str | None,
                     cuts: str | None, overwrite: bool) -> None:
    from frankenlab.freeze import verify_frozen
    from frankenlab.io import atomic_dir, write_json

    with atomic_dir(target, overwrite=overwrite) as tmp, quiet_transformers():
        model.save_pretrained(str(tmp))
        processor.save_pretrained(str(tmp))
        record = run.to_dict() | {"model": str(model_dir), "tasks": [str(t) for t in tasks], "n_items": len(items)}
        if freeze:
            check = verify_frozen(str(model_dir), str(tmp), freeze, cuts)
            record["freeze_verified"] = {"ok": check.ok, "frozen_identical": len(check.frozen_identical),
                                         "frozen_changed": check.frozen_changed,
                                         "other_changed": len(check.other_changed)}
            if not check.ok:
                raise FreezeError(f"frozen tensors changed during GRPO: {', '.join(check.frozen_changed[:3])}; "
                                  "the optimizer saw frozen parameters.")
        write_json(tmp / "rl_run.json", record)
