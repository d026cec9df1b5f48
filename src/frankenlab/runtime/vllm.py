"""Optional vLLM generation backend (GPU, tensor parallel), imported only when selected.

Prompts are the same text as the Hugging Face backend's: the processor's own chat template rendered by
:func:`frankenlab.runtime.generate.render_prompt`, with the explicit system prompt, and the image passed
as multi-modal data. Greedy decoding is ``temperature=0``. Differences that remain: vLLM cannot suppress
vision special tokens as the HF backend does (real checkpoints do not emit them), and it has no
per-batch time limit. Untested in CI (no GPU there); kept deliberately small.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Sequence
from typing import Any

from frankenlab.errors import EvalError
from frankenlab.runtime.generate import GenerationSettings, Prompt, render_prompt, stop_ids

__all__ = ["VLLMBackend", "cuda_available", "pick_backend", "vllm_available"]


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return bool(torch.cuda.is_available())


def pick_backend(name: str) -> str:
    """"auto" → "vllm" when vLLM is installed and a GPU is present, else "hf"; "vllm" is checked."""
    if name == "hf":
        return "hf"
    if name == "auto":
        return "vllm" if vllm_available() and cuda_available() else "hf"
    if name == "vllm":
        if not vllm_available():
            raise EvalError("--backend vllm: vLLM is not installed; `pip install 'frankenlab[vllm]'` on a GPU machine, "
                            "or use --backend hf.")
        if not cuda_available():
            raise EvalError("--backend vllm needs a CUDA GPU and none is visible; use --backend hf.")
        return "vllm"
    raise EvalError(f"unknown backend {name!r}; use auto, hf or vllm.")


class VLLMBackend:
    """``generate(prompts)`` through ``vllm.LLM`` on a checkpoint directory (in-memory models: use HF)."""

    name = "vllm"

    def __init__(self, path: str | os.PathLike[str], processor: Any, *, settings: GenerationSettings | None = None,
                 tensor_parallel_size: int = 1, dtype: str | None = None, gpu_memory_utilization: float = 0.9,
                 max_model_len: int | None = None) -> None:
        pick_backend("vllm")
        from vllm import LLM

        self.settings = settings or GenerationSettings()
        self.processor = processor
        kwargs: dict[str, Any] = {"model": str(path), "tensor_parallel_size": tensor_parallel_size,
                                  "dtype": dtype or "auto", "seed": self.settings.seed,
                                  "gpu_memory_utilization": gpu_memory_utilization,
                                  "limit_mm_per_prompt": {"image": 1}}
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        self.llm = LLM(**kwargs)

    def sampling_params(self) -> Any:
        from vllm import SamplingParams

        s = self.settings
        return SamplingParams(max_tokens=s.max_new_tokens, temperature=s.temperature if s.do_sample else 0.0,
                              top_p=s.top_p if s.do_sample else 1.0, seed=s.seed,
                              stop_token_ids=stop_ids(self.processor))

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
        return [o.outputs[0].text.strip() for o in outputs]

    def sample(self, prompts: Sequence[Prompt], seeds: Sequence[int], *, temperature: float, top_p: float = 1.0,
               progress: Callable[[int], None] | None = None) -> list[str]:
        """One sampled answer per prompt, request ``i`` seeded with ``seeds[i]`` (as the HF backend's rows).

        One request per (item, sample index), ``SamplingParams(n=1, seed=...)``, rather than ``n=N`` with one
        seed per item: then sample i depends on its own seed only, so a resumed run or a larger N redraws
        nothing already drawn. vLLM's prefix cache shares the repeated prompts' prefill.
        """
        from vllm import SamplingParams

        if len(seeds) != len(prompts):
            raise EvalError(f"sample: {len(prompts)} prompts but {len(seeds)} seeds; give one seed a prompt.")
        stops = stop_ids(self.processor)
        params = [SamplingParams(n=1, max_tokens=self.settings.max_new_tokens, temperature=temperature, top_p=top_p,
                                 seed=int(seed), stop_token_ids=stops) for seed in seeds]
        outputs = self.llm.generate(self._requests(prompts), sampling_params=params, use_tqdm=False)
        if progress is not None:
            progress(len(prompts))
        return [o.outputs[0].text.strip() for o in outputs]
