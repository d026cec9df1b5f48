"""Models under evaluation: labels, fingerprints, and a generation backend per model, opened one at a time.

A model is a checkpoint directory or hub id, an in-memory ``(model, processor)`` pair (a merge's
``assemble`` output, so sweeps write no checkpoints), or a ready backend object with ``generate`` and
``settings``. Its fingerprint is recorded so that a resumed run cannot mix answers of two different
models under one label. A checkpoint's ``generation_config`` is reported, and applied only when asked.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frankenlab.errors import EvalError
from frankenlab.eval.config import EvalConfig
from frankenlab.runtime.generate import (
    DEFAULT_MAX_NEW_TOKENS,
    GenerationSettings,
    HFBackend,
    generation_config_dict,
    resolve_max_new_tokens,
    without_checkpoint_generation_config,
)

__all__ = ["ModelInfo", "check_backend_device_map", "in_memory_fingerprint", "label_models", "model_info",
           "open_backend"]

ModelSource = Any  # str | os.PathLike | tuple[model, processor] | backend


@dataclass(frozen=True)
class ModelInfo:
    label: str
    kind: str  # "checkpoint", "in-memory" or "backend"
    source: str
    fingerprint: str | None


def label_models(args: Sequence[str], labels: Sequence[str] | None = None) -> dict[str, str]:
    """``["IN=ckpts/in", "ckpts/rl"]`` → ``{"IN": "ckpts/in", "rl": "ckpts/rl"}``; labels must be unique.

    ``labels`` (``--model-label``, in order) override; the default label is the directory name.
    """
    if labels and len(labels) != len(args):
        raise EvalError(f"{len(labels)} --model-label value(s) for {len(args)} model(s); give one per model.")
    out: dict[str, str] = {}
    for i, arg in enumerate(args):
        label, sep, path = str(arg).partition("=")
        if not sep or not label or Path(arg).exists():
            label, path = Path(str(arg).rstrip("/")).name or str(arg), str(arg)
        if labels:
            label = labels[i]
        if label in out:
            raise EvalError(f"two models are labelled {label!r}; name them with LABEL=PATH or --model-label.")
        out[label] = path
    if not out:
        raise EvalError("no models given; pass one or more checkpoint directories (or LABEL=PATH).")
    return out


def in_memory_fingerprint(model: Any) -> str:
    """Names, shapes and strided value samples of every tensor: cheap, and different for any real merge."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // 64)
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(flat[::step][:64].float().cpu().numpy().tobytes())
    return "mem:" + h.hexdigest()[:16]


def _is_backend(source: Any) -> bool:
    return hasattr(source, "generate") and hasattr(source, "settings") and not isinstance(source, tuple)


def model_info(label: str, source: ModelSource) -> ModelInfo:
    if isinstance(source, (str, os.PathLike)):
        from frankenlab.checkpoint import Checkpoint

        with Checkpoint(source) as c:
            return ModelInfo(label, "checkpoint", str(c.root), c.fingerprint)
    if isinstance(source, tuple) and len(source) == 2:
        model = source[0]
        return ModelInfo(label, "in-memory", type(model).__name__, in_memory_fingerprint(model))
    if _is_backend(source):
        model = getattr(source, "model", None)
        fp = in_memory_fingerprint(model) if hasattr(model, "state_dict") else None
        return ModelInfo(label, "backend", f"{type(source).__name__}", fp)
    raise EvalError(f"model {label!r}: expected a checkpoint path, a (model, processor) pair or a backend, "
                    f"got {type(source).__name__}.")


def _generation_config_dict(model: Any = None, path: str | None = None) -> dict[str, Any] | None:
    gc = getattr(model, "generation_config", None) if model is not None else None
    if gc is not None:
        return generation_config_dict(gc)
    if path is not None and (Path(path) / "generation_config.json").is_file():
        return json.loads((Path(path) / "generation_config.json").read_text())
    return None


def effective_settings(base: GenerationSettings, gen_config: Mapping[str, Any] | None,
                       apply: bool) -> GenerationSettings:
    """``base``, or with --use-generation-config the checkpoint's sampling fields laid over it."""
    if not apply or not gen_config:
        return base
    over: dict[str, Any] = {}
    for key in ("do_sample", "temperature", "top_p", "max_new_tokens"):
        if gen_config.get(key) is not None:
            over[key] = gen_config[key]
    return dataclasses.replace(base, **over)


def lengths_by_kind(settings: GenerationSettings) -> dict[str, int]:
    """The answer-length limit each item kind gets under ``settings`` (recorded in run.json)."""
    return {kind: resolve_max_new_tokens(settings.max_new_tokens, kind) for kind in DEFAULT_MAX_NEW_TOKENS}


class _TimedHFBackend(HFBackend):
    """HFBackend whose batches stop at ``max_time`` seconds (transformers' own stopping criterion)."""

    def __init__(self, *args: Any, max_time: float | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.max_time = max_time

    def generate_kwargs(self) -> dict[str, Any]:
        kw = super().generate_kwargs()
        if self.max_time is not None:
            kw["max_time"] = self.max_time
        return kw


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_backend_device_map(backend: str, device_map: str | Mapping[str, Any] | None) -> None:
    """A device map splits a model in the HF backend; vLLM has its own tensor parallelism, so the two do not mix."""
    if device_map is not None and backend == "vllm":
        raise EvalError("--device-map splits a model for the HF backend; vLLM splits it with its own tensor "
                        "parallelism: use --backend vllm --tensor-parallel-size N, or --backend hf --device-map "
                        "auto.")


@contextlib.contextmanager
def open_backend(label: str, source: ModelSource, cfg: EvalConfig) -> Iterator[tuple[Any, dict[str, Any]]]:
    """(backend, report) for one model; the report (backend, settings, generation_config) goes into run.json.

    Models loaded here are released when the block ends; in-memory models get their generation config
    restored.
    """
    from frankenlab.runtime.vllm import pick_backend

    if _is_backend(source):
        yield source, {"backend": getattr(source, "name", type(source).__name__),
                       "generation": source.settings.to_dict(), "generation_config": None,
                       "max_new_tokens_by_kind": lengths_by_kind(source.settings)}
        return
    in_memory = isinstance(source, tuple)
    device_map = None if in_memory else getattr(cfg, "device_map", None)  # an in-memory model is placed already
    check_backend_device_map(cfg.backend, device_map)
    # a device map is the HF backend's way to split a model, so with one `auto` means HF
    kind = "hf" if in_memory or device_map is not None else pick_backend(cfg.backend)
    if in_memory and cfg.backend == "vllm":
        raise EvalError(f"model {label!r} is in memory; vLLM loads checkpoints from disk. Use --backend hf, or "
                        "write the merged model to a directory first.")
    if kind == "vllm":
        from frankenlab.runtime.load import load_processor
        from frankenlab.runtime.vllm import VLLMBackend

        gen_config = _generation_config_dict(path=str(source))
        settings = effective_settings(cfg.generation, gen_config, cfg.use_generation_config)
        backend = VLLMBackend(source, load_processor(source), settings=settings,
                              tensor_parallel_size=cfg.tensor_parallel_size, dtype=cfg.dtype)
        yield backend, {"backend": "vllm", "generation": settings.to_dict(), "generation_config": gen_config,
                        "max_new_tokens_by_kind": lengths_by_kind(settings)}
        return
    if in_memory:
        model, processor = source
    else:
        from frankenlab.runtime.load import load

        if device_map is not None:  # accelerate places the modules; `device` must be auto (checked by load)
            model, processor = load(source, dtype=cfg.dtype, device=cfg.device, device_map=device_map)
        else:
            model, processor = load(source, dtype=cfg.dtype, device=_device(cfg.device))
    gen_config = _generation_config_dict(model=model)
    settings = effective_settings(cfg.generation, gen_config, cfg.use_generation_config)
    backend = _TimedHFBackend(model, processor, settings=settings, max_time=cfg.timeout_s,
                              checkpoint_eos=cfg.use_generation_config)
    report = {"backend": "hf", "generation": settings.to_dict(), "generation_config": gen_config,
              "max_new_tokens_by_kind": lengths_by_kind(settings)}
    if device_map is not None:
        report["device_map"] = device_map
    try:
        if cfg.use_generation_config:
            yield backend, report
        else:
            with without_checkpoint_generation_config(model):
                yield backend, report
    finally:
        del backend
        if not in_memory:
            del model
