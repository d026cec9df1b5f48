"""Supervised fine-tuning of the tiny VLM: a plain torch loop, loss on the answer tokens only.

Why not TRL's SFTTrainer: at this size its per-step overhead (collators re-running the processor,
accelerate wrapping, logging) costs more than the model itself, and bit-reproducibility is easier to
guarantee when every source of randomness is one seeded ``torch.Generator``. Images are processed
once (:func:`encode_examples`); a training step only pads and concatenates tensors.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from transformers import PreTrainedModel

from frankenlab.errors import FrankenlabError
from frankenlab.freeze.spec import kept_requires_grad
from frankenlab.tiny.tokenizer import IM_END

__all__ = ["Encoded", "SFTConfig", "collate", "encode_examples", "prompt_messages", "train_sft"]

log = logging.getLogger(__name__)

_IGNORE = -100


@dataclass(frozen=True)
class Encoded:
    """One tokenized example; ``n_prompt`` tokens of context, then the supervised answer tokens."""

    input_ids: torch.Tensor  # (L,) int64
    mm_token_type_ids: torch.Tensor  # (L,) int64
    n_prompt: int
    pixel_values: torch.Tensor | None  # (patches, dim) float32
    image_grid_thw: torch.Tensor | None  # (1, 3) int64


@dataclass(frozen=True)
class SFTConfig:
    """Optimisation settings; defaults are what ``miniworld build`` uses for the IN model."""

    steps: int = 3000
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup: int = 50
    seed: int = 0
    #: The vision tower trains at ``lr * vision_lr_scale``; 0 keeps it frozen (no backward through it,
    #: half the step time). At full rate a from-scratch tower collapsed to a near-constant output before
    #: the language model learned to read it (chance accuracy on every perception family); its seeded
    #: random features, read by a trained projector, were enough for the mini-world's perception.
    vision_lr_scale: float = 0.0


def prompt_messages(question: str, has_image: bool) -> list[dict]:
    """The user turn every mini-world consumer uses (SFT, GRPO, evaluation): image first, then the question."""
    content: list[dict] = [{"type": "image"}] if has_image else []
    content.append({"type": "text", "text": question})
    return [{"role": "user", "content": content}]


def encode_examples(
    processor: Any, rows: Sequence[tuple[str, Image.Image | None, str]], chunk: int = 256
) -> list[Encoded]:
    """Tokenize (question, image or None, answer) rows; the target is ``answer<|im_end|>``.

    Rows go through the processor in chunks (one call per chunk and kind), which is several times
    faster than one call per row; padding is stripped again with the attention mask.
    """
    tok = processor.tokenizer
    out: list[Encoded | None] = [None] * len(rows)
    answers = tok([answer + IM_END for _, _, answer in rows], add_special_tokens=False)["input_ids"]
    for has_image in (True, False):
        idx = [i for i, (_, image, _) in enumerate(rows) if (image is not None) == has_image]
        for start in range(0, len(idx), chunk):
            part = idx[start : start + chunk]
            texts = [
                processor.apply_chat_template(
                    prompt_messages(rows[i][0], has_image), tokenize=False, add_generation_prompt=True
                )
                for i in part
            ]
            kw: dict[str, Any] = {"images": [rows[i][1] for i in part]} if has_image else {}
            batch = processor(text=texts, padding=True, return_tensors="pt", **kw)
            mm_all = batch.get("mm_token_type_ids")
            if has_image:
                sizes = batch["image_grid_thw"].prod(dim=-1).tolist()
                pixels = torch.split(batch["pixel_values"], sizes)
            for j, i in enumerate(part):
                keep = batch["attention_mask"][j].bool()
                prompt_ids = batch["input_ids"][j][keep]
                mm = mm_all[j][keep] if mm_all is not None else torch.zeros_like(prompt_ids)
                answer_ids = torch.tensor(answers[i], dtype=torch.long)
                out[i] = Encoded(
                    input_ids=torch.cat([prompt_ids, answer_ids]),
                    mm_token_type_ids=torch.cat([mm, torch.zeros_like(answer_ids)]),
                    n_prompt=int(prompt_ids.numel()),
                    pixel_values=pixels[j] if has_image else None,
                    image_grid_thw=batch["image_grid_thw"][j : j + 1] if has_image else None,
                )
    return [e for e in out if e is not None]


def collate(examples: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch with labels masked to the answer; images concatenated in batch order."""
    width = max(int(e.input_ids.numel()) for e in examples)
    n = len(examples)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mm = torch.zeros((n, width), dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    labels = torch.full((n, width), _IGNORE, dtype=torch.long)
    for i, e in enumerate(examples):
        length = int(e.input_ids.numel())
        ids[i, :length] = e.input_ids
        mm[i, :length] = e.mm_token_type_ids
        mask[i, :length] = 1
        labels[i, e.n_prompt : length] = e.input_ids[e.n_prompt :]
    batch = {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": mm, "labels": labels}
    images = [e for e in examples if e.pixel_values is not None]
    if images:
        batch["pixel_values"] = torch.cat([e.pixel_values for e in images])
        batch["image_grid_thw"] = torch.cat([e.image_grid_thw for e in images])
    return batch


def _lr_lambda(cfg: SFTConfig) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return f


def _split_vision(
    model: PreTrainedModel, trainable_only: bool = True
) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """Parameters of the vision section (by the architecture adapter) and all the others."""
    from frankenlab.arch.registry import adapter_for

    adapter = adapter_for(model.config.to_dict())
    vision, other = [], []
    for name, p in model.named_parameters():
        if p.requires_grad or not trainable_only:
            (vision if adapter.classify(name).section == "vision" else other).append(p)
    return vision, other


def train_sft(
    model: PreTrainedModel,
    examples: Sequence[Encoded],
    cfg: SFTConfig,
    *,
    pad_id: int,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train in place with AdamW + warmup/cosine; returns the loss of every step.

    Data order comes from a generator seeded with ``cfg.seed`` (epochs reshuffled), so the same
    model, examples and config give bit-identical weights on the same machine.
    """
    if not examples:
        raise FrankenlabError("SFT needs at least one example; the task mix produced none.")
    if cfg.steps < 1 or cfg.batch_size < 1:
        raise FrankenlabError(f"SFT steps and batch size must be >= 1, got {cfg.steps} and {cfg.batch_size}.")
    if cfg.vision_lr_scale < 0:
        raise FrankenlabError(f"vision_lr_scale must be >= 0, got {cfg.vision_lr_scale}.")
    gen = torch.Generator().manual_seed(cfg.seed)
    all_vision = _split_vision(model, trainable_only=False)[0]
    keep = contextlib.ExitStack()
    keep.enter_context(kept_requires_grad(model))
    vision, other = _split_vision(model)
    if cfg.vision_lr_scale == 0:
        for p in all_vision:
            p.requires_grad_(False)
        vision = []
    params = vision + other
    groups = [{"params": other, "lr": cfg.lr}]
    if vision:
        groups.append({"params": vision, "lr": cfg.lr * cfg.vision_lr_scale})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    try:
        return _loop(model, examples, cfg, pad_id, gen, opt, sched, params, on_step)
    finally:
        keep.close()
        model.eval()


def _loop(model: PreTrainedModel, examples: Sequence[Encoded], cfg: SFTConfig, pad_id: int,
          gen: torch.Generator, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
          params: list[torch.nn.Parameter], on_step: Callable[[int, float], None] | None) -> list[float]:
    model.train()
    order = torch.randperm(len(examples), generator=gen)
    cursor = 0
    losses: list[float] = []
    for step in range(cfg.steps):
        if cursor + cfg.batch_size > len(order):
            order = torch.randperm(len(examples), generator=gen)
            cursor = 0
        idx = order[cursor : cursor + cfg.batch_size].tolist()
        cursor += cfg.batch_size
        batch = collate([examples[i] for i in idx], pad_id)
        out = model(**batch)
        loss = out.loss
        if not torch.isfinite(loss):
            raise FrankenlabError(f"SFT loss became {loss.item()} at step {step}; lower the learning rate.")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, losses[-1])
    return losses
