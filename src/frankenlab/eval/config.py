"""Evaluation settings as one frozen, validated record: everything that changes an answer is here and recorded."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from frankenlab.errors import EvalError
from frankenlab.runtime.generate import GenerationSettings

__all__ = ["DEFAULT_DESCRIPTION_TEMPLATE", "SETTINGS", "TEXT_SETTING", "EvalConfig", "parse_settings"]

#: Per-item variants of an image item; text-only items always run once, as TEXT_SETTING.
SETTINGS = ("image", "black", "described")
TEXT_SETTING = "text"
DEFAULT_DESCRIPTION_TEMPLATE = "Image description: {description}\n\n{question}"


def default_generation() -> GenerationSettings:
    """Greedy, answer length per item kind (`runtime.generate.DEFAULT_MAX_NEW_TOKENS`), 16 prompts a batch."""
    return GenerationSettings(max_new_tokens=None, batch_size=16)


def parse_settings(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """"image,black" → ("image", "black"), in canonical order; EvalError on unknown or empty."""
    parts = [p.strip() for p in (value.split(",") if isinstance(value, str) else value) if p.strip()]
    unknown = [p for p in parts if p not in SETTINGS]
    if unknown or not parts:
        raise EvalError(f"settings {unknown or parts!r} not understood; choose from {list(SETTINGS)} "
                        "(comma-separated; text-only items always run without an image).")
    return tuple(s for s in SETTINGS if s in parts)


class EvalConfig(BaseModel):
    """What `evaluate` does, apart from which models and tasks; recorded in run.json and manifest.json."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True, extra="forbid")

    settings: tuple[str, ...] = Field(SETTINGS, description="Variants of image items: image, black, described.")
    limit: int | None = Field(None, ge=1, description="Items per task, chosen by a seeded hash (None: all).")
    seed: int = Field(0, description="Seed of the item subsample.")
    system_prompt: str | None = Field(None, description="System prompt for every model (never inferred).")
    prompt_suffix: str = Field("", description="Text appended to every question (e.g. an answer-format hint).")
    description_template: str = Field(DEFAULT_DESCRIPTION_TEMPLATE,
                                      description="User text of the described setting ({description}, {question}).")
    generation: GenerationSettings = Field(
        default_factory=lambda: default_generation(),
        description="Decoding settings (greedy by default; max_new_tokens None = per item kind).")
    use_generation_config: bool = Field(False, description="Apply each checkpoint's generation_config.json.")
    backend: Literal["auto", "hf", "vllm"] = Field("auto", description="auto: vLLM when installed with a GPU.")
    dtype: str | None = Field(None, description="Model dtype (bf16, fp16, fp32; None: as stored).")
    device: str = Field("auto", description="auto (cuda when available), cpu, cuda, cuda:N.")
    device_map: Literal["auto"] | None = Field(None, description="HF only: auto splits each model across the visible "
                                               "GPUs (accelerate); not in the answer key, answers do not depend on it.")
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM tensor parallel size.")
    timeout_s: float | None = Field(None, gt=0, description="HF: wall-clock limit per generation batch; items of "
                                                            "a batch that hits it are recorded as timeouts.")
    n_boot: int = Field(2000, ge=100, description="Bootstrap resamples for intervals.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Interval coverage.")
    ci_seed: int = Field(0, description="Seed of the bootstrap.")
    retry_failed: bool = Field(False, description="On resume, redo items recorded as failed.")
    plots: bool = Field(True, description="Write summary.png and metrics.png (and plots/passk.png).")
    samples: int = Field(0, ge=0, description="Sampled answers per item and setting for pass@k, besides the greedy "
                                              "one (0: none).")
    sample_temperature: float = Field(1.0, ge=0, description="Temperature of the samples (0 only with samples=1).")
    sample_top_p: float = Field(1.0, gt=0, le=1, description="Nucleus (top-p) of the samples.")
    sample_seed: int = Field(0, description="Seed of the samples; sample i of an item is seeded from (seed, task, "
                                            "item, setting, i).")

    @model_validator(mode="before")
    @classmethod
    def _one_system_prompt(cls, data: Any) -> Any:
        """`system_prompt` and `generation.system_prompt` are one setting: adopt whichever is given, refuse two."""
        if not isinstance(data, dict):
            return data
        gen = data.get("generation") or default_generation()
        gen = GenerationSettings(**gen) if isinstance(gen, dict) else gen
        top, inner = data.get("system_prompt"), gen.system_prompt
        if top is not None and inner is not None and top != inner:
            raise ValueError("system_prompt and generation.system_prompt differ; give it once")
        prompt = top if top is not None else inner
        return {**data, "system_prompt": prompt, "generation": dataclasses.replace(gen, system_prompt=prompt)}

    @field_validator("settings", mode="before")
    @classmethod
    def _settings(cls, v: Any) -> tuple[str, ...]:
        return parse_settings(v)

    @field_validator("description_template")
    @classmethod
    def _template(cls, v: str) -> str:
        if "{description}" not in v or "{question}" not in v:
            raise ValueError("description_template needs both {description} and {question}")
        return v

    @model_validator(mode="after")
    def _sampling(self) -> EvalConfig:
        if self.samples > 1 and self.sample_temperature == 0:
            raise EvalError(f"samples={self.samples} at temperature 0 would be {self.samples} copies of the greedy "
                            "answer; give a temperature > 0 (e.g. --temperature 1.0) or --samples 1.")
        return self

    def sampling_key(self) -> dict[str, Any] | None:
        """What decides the samples beyond :meth:`answer_key` (None without samples); N is not in it, since
        sample i does not depend on N: a larger N adds samples, a smaller one uses the first N."""
        if not self.samples:
            return None
        return {"temperature": self.sample_temperature, "top_p": self.sample_top_p, "seed": self.sample_seed}

    def answer_key(self) -> dict[str, Any]:
        """The fields that decide answers and grades (a resumed run must match them)."""
        return {"settings": list(self.settings), "system_prompt": self.system_prompt,
                "prompt_suffix": self.prompt_suffix, "description_template": self.description_template,
                "use_generation_config": self.use_generation_config}
