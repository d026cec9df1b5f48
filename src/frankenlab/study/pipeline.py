"""Resumable stages: each writes its own sub-directory and a done-marker keyed by inputs + settings.

A stage whose marker matches is skipped; one that fails is recorded (error text, the study summary)
without losing the others' results. A stage is never half-done in the eyes of the report: the
marker is written last. Markers, errors and stage manifests live in DIR/.stages/, so each stage
directory holds exactly what its analysis wrote.
"""

from __future__ import annotations

import logging
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from frankenlab.io.atomic import write_json, write_text
from frankenlab.io.store import claim_out_dir, read_marker
from frankenlab.manifest import build_manifest, is_current, settings_key
from frankenlab.study.config import STAGES, RecipeInputs, StudyConfig

log = logging.getLogger(__name__)


@dataclass
class StageOutcome:
    stage: str
    recipe: str
    status: str  # done / skipped / failed / not-applicable
    seconds: float
    out_dir: str
    error: str | None = None


@dataclass
class StudyResult:
    out: str
    outcomes: list[StageOutcome] = field(default_factory=list)

    @property
    def failed(self) -> list[StageOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    def to_dict(self) -> dict[str, Any]:
        return {"out": self.out, "outcomes": [asdict(o) for o in self.outcomes]}


@dataclass(frozen=True)
class StageSpec:
    """A named unit of work: `key` says when its output is current, `run` produces it."""

    name: str
    key: Callable[[StudyConfig, RecipeInputs, dict[str, str]], dict[str, Any]]
    run: Callable[[StudyConfig, RecipeInputs, Path, dict[str, str]], None]
    applicable: Callable[[StudyConfig, RecipeInputs], str | None] = lambda cfg, r: None


STATE_DIR = ".stages"
DATA_DIR = "_data"  # generated task and probe files the stages share
STUDY_MARKER = "study.json"  # the study's configuration, written before the first stage runs
#: What a study writes into its directory (glob patterns): stage folders, markers, shared data, the report.
STUDY_FILES = (STUDY_MARKER, "stages.json", "findings.json", "report.md", "report.html", DATA_DIR, STATE_DIR,
               ".variant-*", *STAGES)


def claim_study_dir(cfg: StudyConfig) -> None:
    """Refuse an output directory that holds files a study did not write, before any work is done.

    A missing or empty directory, or an earlier study's (resumed stage by stage), is accepted.
    """
    claim_out_dir(cfg.out, what="study", ours=STUDY_FILES, marker=STUDY_MARKER)


def state_dir(cfg: StudyConfig) -> Path:
    return Path(cfg.out) / STATE_DIR


def _state(cfg: StudyConfig, stage: str, recipe: str, what: str) -> Path:
    return state_dir(cfg) / f"{stage}.{recipe}.{what}"


def _prepare(out_dir: Path, started: Path, key: str) -> None:
    """Same key as an interrupted attempt: keep its partial outputs (stages resume); else start clean."""
    if out_dir.exists() and not is_current(started, key):
        shutil.rmtree(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)  # the analysis creates out_dir itself
    write_json(started, {"key": key})


def run_stage(spec: StageSpec, cfg: StudyConfig, recipe: RecipeInputs, fingerprints: dict[str, str],
              on_event: Callable[[str, StageOutcome | None], None] | None = None) -> StageOutcome:
    out_dir = cfg.stage_dir(spec.name, recipe.name)
    reason = spec.applicable(cfg, recipe)
    if reason is not None:
        outcome = StageOutcome(spec.name, recipe.name, "not-applicable", 0.0, str(out_dir), reason)
        if on_event:
            on_event("end", outcome)
        return outcome
    key_data = {"stage": spec.name, "inputs": fingerprints, **spec.key(cfg, recipe, fingerprints)}
    key = settings_key(key_data)
    marker = _state(cfg, spec.name, recipe.name, "done.json")
    error_file = _state(cfg, spec.name, recipe.name, "error.txt")
    if is_current(marker, key) and out_dir.exists():
        took = float((read_marker(marker) or {}).get("seconds", 0.0))
        outcome = StageOutcome(spec.name, recipe.name, "skipped", 0.0, str(out_dir),
                               f"current: computed earlier in {took:.1f} s")
        if on_event:
            on_event("end", outcome)
        return outcome
    if on_event:
        on_event("start", StageOutcome(spec.name, recipe.name, "running", 0.0, str(out_dir)))
    marker.unlink(missing_ok=True)
    error_file.unlink(missing_ok=True)
    _prepare(out_dir, _state(cfg, spec.name, recipe.name, "started.json"), key)
    t0 = time.perf_counter()
    try:
        spec.run(cfg, recipe, out_dir, fingerprints)
    except Exception as exc:  # noqa: BLE001 - a failing stage is recorded, and the study goes on
        seconds = time.perf_counter() - t0
        write_text(error_file, "".join(traceback.format_exception(exc)))
        # logged when nobody listens; a listener (the CLI's printer) reports the outcome itself, once
        (log.debug if on_event else log.error)("stage %s (%s) failed: %s", spec.name, recipe.name, exc)
        outcome = StageOutcome(spec.name, recipe.name, "failed", seconds, str(out_dir), f"{type(exc).__name__}: {exc}")
    else:
        seconds = time.perf_counter() - t0
        manifest = build_manifest(f"study:{spec.name}", args=key_data, inputs=fingerprints, seed=cfg.seed,
                                  extra={"seconds": seconds})
        write_json(_state(cfg, spec.name, recipe.name, "manifest.json"), manifest)
        write_json(marker, {"key": key, "seconds": seconds, "time": time.time()})
        outcome = StageOutcome(spec.name, recipe.name, "done", seconds, str(out_dir))
    if on_event:
        on_event("end", outcome)
    return outcome
