"""The study configuration: one YAML (or CLI flags) that says which checkpoints, which stages, how big.

Validated once at the boundary; every error names the key and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from frankenlab.errors import FrankenlabError

STANDARD_VARIANTS = ("IN:RL:RL", "RL:IN:IN", "IN:IN:RL", "RL:RL:IN", "IN:RL:IN", "RL:IN:RL")
STAGES = ("compare", "probe_vision", "probe_ablate", "probe_attention", "probe_kl", "probe_lens", "merge_eval",
          "freeze")


class StudyConfigError(FrankenlabError):
    """A study configuration that cannot be run as written."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class RecipeInputs(_Frozen):
    """One IN/RL pair (optionally with BASE) to study."""

    name: str = Field("default", description="Label of this pair in the report.")
    in_: str = Field(alias="in", description="IN checkpoint (directory or hub id).")
    rl: str = Field(description="RL checkpoint (directory or hub id).")
    base: str | None = Field(None, description="Optional BASE checkpoint; enables ΔIN = IN − BASE.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or any(c in v for c in "/\\ "):
            raise ValueError("recipe names must be non-empty, without spaces or slashes")
        return v


class CustomVariant(_Frozen):
    name: str
    recipe: str = Field(description="Block sources early:mid:late, e.g. IN:RL:RL.")
    alpha: dict[str, float] = Field(default_factory=dict, description="α per region, W = IN + α(RL − IN).")
    rank: dict[str, int] = Field(default_factory=dict, description="K per region, W = IN + SVD_K(RL − IN).")


class CompareSettings(_Frozen):
    svd: Literal["auto", "exact", "lowrank", "none"] = "auto"
    top_k: int = 32


class ProbeSettings(_Frozen):
    pairs: str | None = Field(None, description="Probe pairs JSONL; default: the built-in procedural set.")
    n_per_task: int = Field(12, ge=1, description="Pairs per probe task (counting, ocr, grounding, recognition).")
    ablate_tasks: str | None = Field(None, description="Text-only task file for layer ablation; default built-in.")
    ablate_limit: int = Field(40, ge=1)
    ablate_control: str | None = Field(
        None, description="Perception task file ablated alongside, so the reasoning layer is the one whose skip "
        "hurts reasoning more than perception; default: built-in mini-world counting items for a VLM, none for "
        "a text model (then layers that break reasoning entirely are excluded).")
    attention: bool = True
    attention_tokens: Literal["response", "answer"] = Field(
        "response", description="Tokens whose attention the attention claim tests: each model's own response "
        "(its reasoning), or only the shared gold answer.")
    seed: int = 0
    max_new_tokens: int | None = Field(
        None, ge=1, description="Answer length limit of every probe; null = per item kind (perception 256, "
        "reasoning 1024: runtime.generate.DEFAULT_MAX_NEW_TOKENS).")
    kl: bool = Field(True, description="Run probe_kl: per-token KL between IN and RL on RL's own responses.")
    lens: bool = Field(True, description="Run probe_lens: logit lens of IN and RL, the gold answer's emergence layer.")
    behaviour_tasks: list[str] | None = Field(
        None, description="Task files (or gsm8k, math500, miniworld[:family]) for probe_kl and probe_lens; "
        "default: eval.tasks, else the built-in mini-world items.")
    behaviour_limit: int = Field(100, ge=1, description="Items per task for probe_kl and probe_lens.")
    system_prompt: str | None = Field(None, description="System prompt of probe_kl and probe_lens (e.g. 'Answer "
                                      "with the final number only.' so that the lens reads the answer token).")


class EvalSettings(_Frozen):
    tasks: list[str] = Field(default_factory=list, description="Task files or registered names.")
    limit: int | None = Field(120, description="Items per task (deterministic subsample); null = all.")
    seed: int = 0
    settings: list[str] = Field(default_factory=lambda: ["image", "black", "described"])
    system_prompt: str | None = None
    max_new_tokens: int | None = Field(
        None, ge=1, description="Answer length limit of every item; null = per item kind (perception 256, "
        "reasoning 1024: runtime.generate.DEFAULT_MAX_NEW_TOKENS).")
    batch_size: int = 16
    samples: int = Field(0, ge=0, description="pass@k: sampled answers per item for IN, RL and every variant "
                         "(0 = off); k = 1, 2, 4, …, samples.")
    sample_temperature: float = Field(1.0, gt=0, description="Temperature of the pass@k samples.")
    sample_top_p: float = Field(1.0, gt=0, le=1, description="Nucleus of the pass@k samples.")
    sample_settings: list[str] = Field(default_factory=lambda: ["image"], description="Eval settings sampled "
                                       "for pass@k (text-only items always use their text setting).")
    sample_limit: int | None = Field(100, ge=1, description="Items per task for pass@k; null = eval.limit.")


class FreezeTrain(_Frozen):
    """GRPO runs from IN: unfrozen, and with each region frozen (TRL; see `frankenlab rl`)."""

    tasks: list[str] = Field(description="RL prompt task files (frankenlab task format).")
    eval_tasks: list[str] = Field(default_factory=list, description="Held-out items; default: eval.tasks.")
    regions: list[str] = Field(default_factory=lambda: ["early", "mid", "late"])
    always_frozen: str | None = Field(None, description="Frozen in every run, e.g. 'vision'.")
    steps: int = Field(100, ge=1)
    lr: float = Field(1e-4, gt=0, lt=1e-2)
    prompts_per_step: int = Field(16, ge=1)
    num_generations: int = Field(4, ge=2)
    eval_limit: int = Field(400, ge=1, description="Held-out items evaluated per model.")
    seed: int = 0


class FreezeSettings(_Frozen):
    table: str | None = Field(None, description="A necessity table (e.g. miniworld build's necessity.csv).")
    train: FreezeTrain | None = Field(None, description="Train the frozen RL variants inside the study.")

    @model_validator(mode="after")
    def _one(self) -> FreezeSettings:
        if self.table and self.train:
            raise ValueError("give either freeze.table or freeze.train, not both")
        return self


class StudyConfig(_Frozen):
    out: str = Field(description="Output directory.")
    recipes: list[RecipeInputs]
    cuts: str | None = Field(None, description="LLM partition cuts, e.g. '8,20' (default: thirds).")
    variants: list[str] = Field(default_factory=lambda: list(STANDARD_VARIANTS))
    custom_variants: list[CustomVariant] = Field(default_factory=list)
    compare: CompareSettings = CompareSettings()
    probe: ProbeSettings = ProbeSettings()
    eval: EvalSettings = EvalSettings()
    freeze: FreezeSettings = FreezeSettings()
    backend: Literal["auto", "hf", "vllm"] = "auto"
    device: str = Field("auto", description="auto (the GPU when there is one, bf16 there), cpu, cuda or cuda:N; "
                        "every stage.")
    device_map: Literal["auto"] | None = Field(None, description="auto: the probes and the HF eval split each model "
                                               "across the visible GPUs (accelerate), for a model larger than one "
                                               "GPU; null: one device. No result depends on it.")
    stages: list[str] = Field(default_factory=lambda: list(STAGES))
    seed: int = 0
    threads: int | None = Field(None, ge=1, description="torch CPU threads for every stage (default: "
                                "$FRANKENLAB_THREADS, else the cores this process may run on).")

    @field_validator("stages")
    @classmethod
    def _stages(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if s not in STAGES]
        if bad:
            raise ValueError(f"unknown stage(s) {bad}; available: {', '.join(STAGES)}")
        return v

    @model_validator(mode="after")
    def _placement(self) -> StudyConfig:
        if self.device_map is not None and self.device.strip().lower() != "auto":
            raise ValueError(f"device_map: {self.device_map} places every model itself; it needs device: auto, not "
                             f"{self.device!r} (or drop device_map)")
        if self.device_map is not None and self.backend == "vllm":
            raise ValueError("device_map splits models for the HF backend; vLLM has its own tensor parallelism: use "
                             "backend: hf (or auto) with device_map, or drop device_map")
        return self

    @model_validator(mode="after")
    def _unique(self) -> StudyConfig:
        names = [r.name for r in self.recipes]
        if not names:
            raise ValueError("give at least one recipe (an IN/RL pair)")
        if len(set(names)) != len(names):
            raise ValueError(f"recipe names must be unique, got {names}")
        vnames = [v.name for v in self.custom_variants]
        if len(set(vnames)) != len(vnames) or set(vnames) & set(self.variants):
            raise ValueError("custom variant names must be unique and differ from the standard variants")
        return self

    def stage_dir(self, stage: str, recipe: str) -> Path:
        """DIR/<stage> for one recipe; DIR/<stage>/<recipe> when the study compares several."""
        base = Path(self.out) / stage
        return base if len(self.recipes) == 1 else base / recipe


def _format_errors(exc: ValidationError, where: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        parts.append(f"{loc}: {err['msg']}")
    return f"{where}: invalid study configuration — " + "; ".join(parts)


def parse_config(data: dict[str, Any], where: str = "config") -> StudyConfig:
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as exc:
        raise StudyConfigError(_format_errors(exc, where)) from exc


def load_config(path: str | os.PathLike[str]) -> StudyConfig:
    """Read a study YAML; relative checkpoint and task paths resolve against the YAML's folder."""
    p = Path(path)
    if not p.exists():
        raise StudyConfigError(f"study config {p} not found.")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise StudyConfigError(f"{p}: not valid YAML ({exc}).") from exc
    if not isinstance(data, dict):
        raise StudyConfigError(f"{p}: the top level must be a mapping with keys out, recipes, ...")
    base = p.parent

    def rel(x: str | None) -> str | None:
        if x is None:
            return None
        q = Path(x).expanduser()
        return str(q if q.is_absolute() or not (base / q).exists() else base / q)

    for r in data.get("recipes", []) or []:
        if isinstance(r, dict):
            for key in ("in", "rl", "base"):
                if key in r:
                    r[key] = rel(r[key])
    if isinstance(data.get("eval"), dict) and data["eval"].get("tasks"):
        data["eval"]["tasks"] = [rel(t) for t in data["eval"]["tasks"]]
    if "out" in data and not Path(str(data["out"])).is_absolute():
        data["out"] = str(base / str(data["out"]))
    return parse_config(data, str(p))
