"""`run_study`: every stage for every recipe, then the findings and the report."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import frankenlab
from frankenlab.checkpoint import Checkpoint
from frankenlab.errors import FrankenlabError
from frankenlab.io.atomic import write_json, write_text
from frankenlab.regions import Partition
from frankenlab.runtime.threads import torch_threads
from frankenlab.study.claims import decide_all
from frankenlab.study.config import StudyConfig
from frankenlab.study.pipeline import StageOutcome, StudyResult, claim_study_dir, run_stage
from frankenlab.study.stages import STAGE_SPECS, control_task_names

EventFn = Callable[[str, StageOutcome | None], None]


def _inputs(cfg: StudyConfig) -> dict[str, dict[str, dict[str, Any]]]:
    """Open every checkpoint once up front: bad paths and mismatched architectures fail before any stage."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in cfg.recipes:
        roles = {"IN": r.in_, "RL": r.rl} | ({"BASE": r.base} if r.base else {})
        info: dict[str, dict[str, Any]] = {}
        for role, path in roles.items():
            with Checkpoint(path, label=role) as c:
                info[role] = {"path": str(c.root), "fingerprint": c.fingerprint, "model_type": c.model_type,
                              "n_llm_layers": c.adapter.n_llm_layers, "n_vision_blocks": c.adapter.n_vision_blocks}
        shapes = {(v["model_type"], v["n_llm_layers"], v["n_vision_blocks"]) for v in info.values()}
        if len(shapes) != 1:
            found = ", ".join(f"{k}={v['model_type']}/{v['n_llm_layers']} layers" for k, v in info.items())
            raise FrankenlabError(f"recipe {r.name!r}: IN, RL (and BASE) are not the same architecture: {found}.")
        out[r.name] = info
    return out


def _partition(cfg: StudyConfig, n_llm_layers: int) -> Partition:
    """The study's early/mid/late split; cuts that do not make three parts fall back to thirds."""
    part = Partition.make(n_llm_layers, cfg.cuts)
    return part if len(part.cuts) == 2 else Partition.make(n_llm_layers)


def write_report(cfg: StudyConfig, result: StudyResult, inputs: dict[str, dict[str, dict[str, Any]]]) -> Path:
    """findings.json, report.md and report.html from the stage outputs alone."""
    from frankenlab.report import collect_recipe, render_html, render_markdown

    root = Path(cfg.out)
    recipes, claims, findings = [], {}, {}
    for r in cfg.recipes:
        dirs = {s: cfg.stage_dir(s, r.name) for s in STAGE_SPECS}
        data = collect_recipe(r.name, dirs, inputs[r.name])
        n_layers = next(iter(inputs[r.name].values()))["n_llm_layers"]
        decided = [c.to_dict() for c in decide_all(data.tables, _partition(cfg, n_layers), data.items,
                                                   n_layers=n_layers, control_tasks=control_task_names(cfg),
                                                   attention_tokens=cfg.probe.attention_tokens,
                                                   rank_variants=data.notes.get("rank_variants"))]
        recipes.append(data)
        claims[r.name] = decided
        findings[r.name] = decided
    payload: Any = findings[cfg.recipes[0].name] if len(cfg.recipes) == 1 else findings
    write_json(root / "findings.json", payload)
    meta = {"frankenlab": frankenlab.__version__, "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cuts": cfg.cuts or "thirds"}
    outcomes = [o.__dict__ for o in result.outcomes]
    write_text(root / "report.md", render_markdown("frankenlab study report", meta, outcomes, recipes, claims, root))
    path = write_text(root / "report.html", render_html("frankenlab study report", meta, outcomes, recipes, claims))
    return path


def run_study(cfg: StudyConfig, on_event: EventFn | None = None) -> StudyResult:
    """Run (or resume) the study; failed stages are reported, the others' results kept."""
    root = Path(cfg.out)
    claim_study_dir(cfg)  # an unrelated --out is refused before any checkpoint is opened
    inputs = _inputs(cfg)
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / "study.json", cfg.model_dump(by_alias=True))
    result = StudyResult(out=str(root))
    with torch_threads(cfg.threads):
        for r in cfg.recipes:
            fps = {role: v["fingerprint"] for role, v in inputs[r.name].items()}
            for stage in cfg.stages:
                result.outcomes.append(run_stage(STAGE_SPECS[stage], cfg, r, fps, on_event))
    write_json(root / "stages.json", result.to_dict())
    write_report(cfg, result, inputs)
    return result
