"""`evaluate`: several models × tasks × settings, batched, graded, written as it goes, resumable.

Layout of ``out_dir``: ``run.json`` (what decides answers: settings, prompts, task versions, chosen
ids, per-model fingerprints and generation settings), ``selection.json`` (chosen ids per task),
``descriptions.jsonl`` (the one description per image item every model sees), ``items.jsonl``
(one record per model × task × item × setting, appended and flushed per batch), then the tables
``summary``, ``metrics`` and, with two or more models, ``comparisons`` (.csv + .parquet, atomic),
``summary.png`` / ``metrics.png`` and ``manifest.json``. With ``samples=N`` also ``samples.jsonl`` (one
record per model × task × item × setting × sample index, beside the unchanged greedy records),
``passk`` (.csv + .parquet) and ``plots/passk.png``.

A rerun with the same configuration skips every record already written, so an interrupted run
resumes; a different configuration is refused rather than mixed in. Per-item failures (a generation
error, a timeout, an ungradable gold, a failed description or judge call) are recorded with the
exception text and count as wrong, in ``n`` and in ``n_failed``; nothing is silently skipped.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
from pydantic import ValidationError

from frankenlab.errors import EvalError, FrankenlabError, GradingError
from frankenlab.eval.config import SETTINGS, EvalConfig
from frankenlab.eval.describe import Describer, DescriptionResult, resolve_descriptions, source_key
from frankenlab.eval.judge import LLMJudge
from frankenlab.eval.models import label_models, model_info, open_backend
from frankenlab.eval.passk import PASSK_COLUMNS, passk_table, sample_seed
from frankenlab.eval.records import RecordStore, sample_key
from frankenlab.eval.settings import build_prompt, question_text, settings_for
from frankenlab.eval.tables import (
    COMPARISON_COLUMNS,
    METRIC_COLUMNS,
    SUMMARY_COLUMNS,
    RunOrder,
    Stats,
    comparisons_table,
    metrics_table,
    summary_table,
)
from frankenlab.grading import grade, math_verify_available
from frankenlab.io import write_json, write_table
from frankenlab.io.store import claim_out_dir
from frankenlab.manifest import build_manifest, settings_key, write_manifest
from frankenlab.runtime.generate import backend_for_kind
from frankenlab.tasks import Task, TaskItem, load_tasks

__all__ = ["EvalResult", "ProgressEvent", "answer_items", "evaluate", "grade_record"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProgressEvent:
    """``kind``: "describe", "model_start" (total = records to make), "record", "model_done"; with samples
    then "samples_start", "sample" (one per sample record), "samples_done"."""

    kind: str
    model: str | None
    done: int
    total: int
    record: dict[str, Any] | None = None


@dataclass(frozen=True)
class EvalResult:
    out_dir: Path
    summary: pd.DataFrame
    metrics: pd.DataFrame
    comparisons: pd.DataFrame
    n_records: int
    n_new: int
    n_failed: int
    passk: pd.DataFrame | None = None  # None without samples
    n_sample_records: int = 0
    n_sample_new: int = 0
    n_sample_failed: int = 0


@dataclass(frozen=True)
class _Job:
    task: str
    item: TaskItem
    setting: str
    kind: str  # perception / reasoning: picks the default answer length


@dataclass(frozen=True)
class _SampleJob:
    job: _Job
    index: int
    seed: int

    @property
    def kind(self) -> str:
        return self.job.kind


def _config(config: EvalConfig | None, settings: str | Sequence[str], overrides: Mapping[str, Any]) -> EvalConfig:
    base = config.model_dump() if config is not None else {}
    try:
        return EvalConfig(**{**base, "settings": settings, **overrides})
    except ValidationError as exc:
        raise EvalError(f"invalid evaluation settings: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from exc


def _models(models: Mapping[str, Any] | Sequence[str]) -> dict[str, Any]:
    if isinstance(models, Mapping):
        if not models:
            raise EvalError("no models given.")
        return dict(models)
    return dict(label_models([str(m) for m in models]))


def _tasks(tasks: Any, load_dataset: Callable[..., Any] | None, limit: int | None = None) -> list[Task]:
    if isinstance(tasks, Task):
        return [tasks]
    if isinstance(tasks, Sequence) and not isinstance(tasks, str) and all(isinstance(t, Task) for t in tasks):
        return list(tasks)
    return load_tasks(tasks, load_dataset=load_dataset, n_generated=limit)  # a generated task makes --limit items


#: What an evaluation writes into its output directory (glob patterns); anything else there is not ours.
_OUTPUT_FILES = ("run.json", "selection.json", "descriptions.jsonl", "items.jsonl", "samples.jsonl", "manifest.json",
                 "summary.*", "metrics.*", "comparisons.*", "passk.*", "plots")


def _prepare_out(out: Path, overwrite: bool) -> dict[str, Any] | None:
    """The previous run.json (None for a fresh directory); refuses directories that are not eval outputs.

    ``overwrite`` clears an earlier run; otherwise :func:`_check_same` compares its settings with this one's.
    """
    return claim_out_dir(out, what="evaluation", ours=_OUTPUT_FILES, marker="run.json",
                         results=("items.jsonl", "samples.jsonl"), overwrite=overwrite).previous


def _check_same(prev: Mapping[str, Any], key_fields: Mapping[str, Any]) -> None:
    old = prev.get("key_fields", {})
    diff = sorted(k for k in set(old) | set(key_fields) if old.get(k) != key_fields.get(k))
    if diff:
        raise EvalError(f"the output directory holds a run with other {', '.join(diff)}; resume with the same "
                        "settings, choose another --out, or pass --overwrite to start again.")


def _check_model(prev_models: Mapping[str, Any], label: str, field: str, value: Any) -> None:
    old = prev_models.get(label, {}).get(field)
    if old is not None and value is not None and old != value:
        raise EvalError(f"model {label!r}: {field} differs from the earlier run in this directory ({old!r} vs "
                        f"{value!r}); use another label or --out.")


def grade_record(rec: dict[str, Any], item: TaskItem, judge: LLMJudge | None = None, prompt_suffix: str = "") -> None:
    """Grade ``rec["response"]`` against ``item`` in place (the rules, then the judge when one is given)."""
    v = grade(rec["response"], item.answer, list(item.choices) if item.choices else None,
              answer_type=item.answer_type)
    rec.update(extracted=v.extracted, extraction=v.extraction, rule=v.rule, rule_correct=v.correct,
               correct=v.correct, decided_by="rules")
    if judge is not None:
        jv = judge.judge(question_text(item, prompt_suffix), item.answer, rec["response"], item.choices)
        rec.update(judge=jv.raw, correct=jv.correct, decided_by="llm_judge")


def _new_record(label: str, job: _Job, max_new_tokens: int | None) -> dict[str, Any]:
    it = job.item
    return {"model": label, "task": job.task, "item_id": it.id, "setting": job.setting, "kind": job.kind,
            "max_new_tokens": max_new_tokens, "prompt": None,
            "answer": it.answer, "answer_type": it.answer_type, "choices": list(it.choices) if it.choices else None,
            "response": None, "extracted": None, "extraction": None, "rule": None, "rule_correct": None,
            "decided_by": None, "judge": None, "correct": False, "error": None, "elapsed_s": None}


def _prompts(chunk: Sequence[_Job], records: Sequence[dict[str, Any]], cfg: EvalConfig,
             descriptions: Mapping[tuple[str, str], DescriptionResult]) -> dict[int, Any]:
    """{position: prompt} for the jobs whose prompt could be built; the others get their error recorded."""
    prompts: dict[int, Any] = {}
    for i, (job, rec) in enumerate(zip(chunk, records)):
        desc = descriptions.get((job.task, job.item.id)) if job.setting == "described" else None
        try:
            if desc is not None and desc.text is None:
                raise EvalError(f"description failed: {desc.error}")
            prompts[i] = build_prompt(job.item, job.setting, description=desc.text if desc else None,
                                      prompt_suffix=cfg.prompt_suffix, description_template=cfg.description_template)
            if "prompt" in rec:
                rec["prompt"] = prompts[i].text
        except FrankenlabError as exc:
            rec["error"] = f"{type(exc).__name__}: {exc}"
    return prompts


def _generate(call: Callable[[list[int]], list[str]], order: list[int], records: list[dict]) -> dict[int, str]:
    """{position: response}; a failing batch is retried one item at a time, each failure recorded on its item."""
    try:
        return dict(zip(order, call(order), strict=True))
    except Exception as exc:  # a batch failed: isolate the items that fail on their own
        if len(order) == 1:
            records[order[0]]["error"] = f"{type(exc).__name__}: {exc}"
            return {}
        log.warning("batch of %d failed (%s); retrying one at a time", len(order), exc)
        responses: dict[int, str] = {}
        for i in order:
            try:
                (responses[i],) = call([i])
            except Exception as one_exc:  # recorded per item, never dropped
                records[i]["error"] = f"{type(one_exc).__name__}: {one_exc}"
        return responses


def _grade_all(records: list[dict], items: Sequence[TaskItem], responses: Mapping[int, str], elapsed: float,
               n: int, backend: Any, cfg: EvalConfig, judge: LLMJudge | None) -> None:
    timed_out = cfg.timeout_s is not None and elapsed >= cfg.timeout_s and getattr(backend, "name", "") == "hf"
    for i, response in responses.items():
        rec = records[i]
        rec["response"], rec["elapsed_s"] = response, round(elapsed / max(1, n), 4)
        if timed_out:
            rec["error"] = f"timeout: the generation batch hit the {cfg.timeout_s:g} s limit (response truncated)."
            continue
        try:
            grade_record(rec, items[i], judge, cfg.prompt_suffix)
        except (GradingError, EvalError) as exc:
            rec["error"] = f"{type(exc).__name__}: {exc}"
            rec["correct"] = False


def _run_chunk(label: str, backend: Any, chunk: Sequence[_Job], cfg: EvalConfig,
               descriptions: Mapping[tuple[str, str], DescriptionResult], judge: LLMJudge | None) -> list[dict]:
    limit = getattr(getattr(backend, "settings", None), "max_new_tokens", None)
    records = [_new_record(label, j, limit) for j in chunk]
    prompts = _prompts(chunk, records, cfg, descriptions)
    order = sorted(prompts)
    t0 = time.perf_counter()
    responses = _generate(lambda idx: backend.generate([prompts[i] for i in idx]), order, records)
    _grade_all(records, [j.item for j in chunk], responses, time.perf_counter() - t0, len(order), backend, cfg, judge)
    return records


def _new_sample_record(label: str, row: _SampleJob, cfg: EvalConfig, max_new_tokens: int | None) -> dict[str, Any]:
    rec = _new_record(label, row.job, max_new_tokens)
    del rec["prompt"]  # the greedy record in items.jsonl holds it, once
    return {**rec, "sample": row.index, "seed": row.seed, "temperature": cfg.sample_temperature,
            "top_p": cfg.sample_top_p}


def _run_sample_chunk(label: str, backend: Any, rows: Sequence[_SampleJob], cfg: EvalConfig,
                      descriptions: Mapping[tuple[str, str], DescriptionResult],
                      judge: LLMJudge | None) -> list[dict]:
    """One sampled answer per row, graded like the greedy ones (same grader, judge and failure rules)."""
    limit = getattr(getattr(backend, "settings", None), "max_new_tokens", None)
    records = [_new_sample_record(label, r, cfg, limit) for r in rows]
    prompts = _prompts([r.job for r in rows], records, cfg, descriptions)
    order = sorted(prompts)

    def call(idx: list[int]) -> list[str]:
        return backend.sample([prompts[i] for i in idx], [rows[i].seed for i in idx],
                              temperature=cfg.sample_temperature, top_p=cfg.sample_top_p)

    t0 = time.perf_counter()
    responses = _generate(call, order, records)
    _grade_all(records, [r.job.item for r in rows], responses, time.perf_counter() - t0, len(order), backend, cfg,
               judge)
    return records


_J = TypeVar("_J", _Job, _SampleJob)


def _batches(jobs: Sequence[_J], size: int) -> list[tuple[str, list[_J]]]:
    """Batches of at most ``size`` jobs of one kind each (one answer length per generate call), kinds in
    sorted order and the job order kept within a kind."""
    out: list[tuple[str, list[_J]]] = []
    for kind in sorted({j.kind for j in jobs}):
        mine = [j for j in jobs if j.kind == kind]
        out += [(kind, mine[i:i + size]) for i in range(0, len(mine), size)]
    return out


def _selection_hash(ids: Sequence[str]) -> str:
    return hashlib.sha256("\x00".join(ids).encode()).hexdigest()[:16]


def evaluate(models: Mapping[str, Any] | Sequence[str], tasks: Any, settings: str | Sequence[str] = SETTINGS,
             out_dir: str | os.PathLike[str] = "eval-out", *, config: EvalConfig | None = None,
             descriptions: str | os.PathLike[str] | Describer | None = None, judge: LLMJudge | None = None,
             progress: Callable[[ProgressEvent], None] | None = None, overwrite: bool = False,
             load_dataset: Callable[..., Any] | None = None, **overrides: Any) -> EvalResult:
    """Evaluate ``models`` ({label: checkpoint path | (model, processor) | backend}, or paths) on ``tasks``.

    ``tasks``: Task objects, or specs for :func:`frankenlab.tasks.load_tasks`. ``overrides`` are
    :class:`EvalConfig` fields (``limit=``, ``seed=``, ``generation=``, ``system_prompt=``, ...).
    ``progress`` receives :class:`ProgressEvent`s; an exception it raises stops the run, which resumes later.
    """
    cfg = _config(config, settings, overrides)
    sources = _models(models)
    selected = [t.subsample(cfg.limit, cfg.seed) for t in _tasks(tasks, load_dataset, cfg.limit)]
    out = Path(out_dir)
    prev = _prepare_out(out, overwrite)
    selection = {t.name: t.ids() for t in selected}
    needs_desc = "described" in cfg.settings and any(it.has_image for t in selected for it in t.items)
    key_fields = {
        **cfg.answer_key(),
        "tasks": {t.name: {"version": t.version, "n": len(t.items), "ids": _selection_hash(t.ids())}
                  for t in selected},
        "descriptions": source_key(descriptions) if needs_desc else None,
        "judge": judge.key if judge is not None else None,
    }
    if prev is not None:
        _check_same(prev, key_fields)
    if cfg.samples:
        unable = [label for label, src in sources.items()
                  if not isinstance(src, (str, os.PathLike, tuple)) and not hasattr(src, "sample")]
        if unable:
            raise EvalError(f"--samples {cfg.samples}: the backend of {', '.join(map(repr, unable))} has no "
                            "sample(prompts, seeds, temperature=, top_p=) method; use a checkpoint, an in-memory "
                            "model, or a backend that can sample.")
    samples = RecordStore(out / "samples.jsonl", key=sample_key)
    sampling = cfg.sampling_key() or (prev or {}).get("sampling")
    if cfg.samples and prev is not None and len(samples):
        _check_sampling(prev.get("sampling"), sampling, out)
    infos = {label: model_info(label, src) for label, src in sources.items()}
    prev_models: dict[str, Any] = dict(prev.get("models", {})) if prev else {}
    for label, info in infos.items():
        _check_model(prev_models, label, "fingerprint", info.fingerprint)
    run_models = {**prev_models, **{label: {**prev_models.get(label, {}), "kind": info.kind, "source": info.source,
                                            "fingerprint": info.fingerprint} for label, info in infos.items()}}
    desc: dict[tuple[str, str], DescriptionResult] = {}
    if needs_desc:  # before anything else is written: a missing description is a setup error
        def on_desc(done: int, total: int) -> None:
            if progress is not None:
                progress(ProgressEvent("describe", None, done, total))

        desc = resolve_descriptions(selected, descriptions, out / "descriptions.jsonl", progress=on_desc)
    out.mkdir(parents=True, exist_ok=True)

    def save_run() -> None:
        write_json(out / "run.json", {"key": settings_key(key_fields), "key_fields": key_fields,
                                      "config": cfg.model_dump(mode="json"), "selection": selection,
                                      "models": run_models, "sampling": sampling})

    save_run()
    write_json(out / "selection.json", {"limit": cfg.limit, "seed": cfg.seed, "tasks": selection})
    store = RecordStore(out / "items.jsonl")
    if cfg.retry_failed:
        store.drop([(r["model"], r["task"], r["item_id"], r["setting"]) for r in store.records()
                    if r.get("error") and r["model"] in sources])
        samples.drop([sample_key(r) for r in samples.records() if r.get("error") and r["model"] in sources])
    n_new = n_sample_new = 0
    for label, source in sources.items():
        every = [_Job(t.name, it, s, it.kind(t.name)) for t in selected for it in t.items
                 for s in settings_for(it, cfg.settings)]
        jobs = [j for j in every if (label, j.task, j.item.id, j.setting) not in store]
        rows = [_SampleJob(j, i, sample_seed(cfg.sample_seed, j.task, j.item.id, j.setting, i))
                for j in every for i in range(cfg.samples) if (label, j.task, j.item.id, j.setting, i) not in samples]
        if not jobs and not rows:
            continue
        with open_backend(label, source, cfg) as (backend, report):
            _check_model(prev_models, label, "generation", report["generation"])
            _check_model(prev_models, label, "backend", report["backend"])
            run_models[label].update(report)
            save_run()
            if progress is not None:
                progress(ProgressEvent("model_start", label, 0, len(jobs)))
            bs = max(1, backend.settings.batch_size)
            done = 0
            for kind, chunk in _batches(jobs, bs):
                records = _run_chunk(label, backend_for_kind(backend, kind), chunk, cfg, desc, judge)
                store.append(records)
                n_new += len(records)
                for rec in records:
                    done += 1
                    if progress is not None:
                        progress(ProgressEvent("record", label, done, len(jobs), rec))
            if progress is not None:
                progress(ProgressEvent("model_done", label, done, len(jobs)))
            if rows:
                n_sample_new += _draw_samples(label, backend, rows, cfg, desc, judge, samples, progress)
    return _finish(out, cfg, store, samples, run_models, selection, key_fields, n_new, n_sample_new)


def _check_sampling(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None, out: Path) -> None:
    """Samples drawn under other temperature / top-p / seed are never mixed with new ones."""
    if old is not None and old != new:
        raise EvalError(f"the samples in {out / 'samples.jsonl'} were drawn with {dict(old)}, not {dict(new or {})}; "
                        "resume with those sampling settings, choose another --out, or delete samples.jsonl to draw "
                        "new samples (the greedy records are kept).")


def _draw_samples(label: str, backend: Any, rows: Sequence[_SampleJob], cfg: EvalConfig,
                  desc: Mapping[tuple[str, str], DescriptionResult], judge: LLMJudge | None, samples: RecordStore,
                  progress: Callable[[ProgressEvent], None] | None) -> int:
    """Generate, grade and append the missing samples of one model, a batch at a time (resumable)."""
    if progress is not None:
        progress(ProgressEvent("samples_start", label, 0, len(rows)))
    done = 0
    for kind, chunk in _batches(rows, max(1, backend.settings.batch_size)):
        records = _run_sample_chunk(label, backend_for_kind(backend, kind), chunk, cfg, desc, judge)
        samples.append(records)
        for rec in records:
            done += 1
            if progress is not None:
                progress(ProgressEvent("sample", label, done, len(rows), rec))
    if progress is not None:
        progress(ProgressEvent("samples_done", label, done, len(rows)))
    return done


def _finish(out: Path, cfg: EvalConfig, store: RecordStore, samples: RecordStore, run_models: Mapping[str, Any],
            selection: Mapping[str, Sequence[str]], key_fields: Mapping[str, Any], n_new: int,
            n_sample_new: int) -> EvalResult:
    wanted = {(t, i) for t, ids in selection.items() for i in ids}
    records = [r for r in store.records() if r["model"] in run_models and (r["task"], r["item_id"]) in wanted]
    order = RunOrder(models=list(run_models), tasks=selection)
    stats = Stats(cfg.n_boot, cfg.confidence, cfg.ci_seed)
    summary = summary_table(records, order, stats)
    metrics = metrics_table(records, order, stats)
    comparisons = comparisons_table(records, order, stats)
    write_table(summary, out / "summary", columns=SUMMARY_COLUMNS)
    write_table(metrics, out / "metrics", columns=METRIC_COLUMNS)
    if len(run_models) > 1:
        write_table(comparisons, out / "comparisons", columns=COMPARISON_COLUMNS)
    if cfg.plots:
        from frankenlab.eval.plots import plot_metrics, plot_summary

        plot_summary(summary, out / "summary.png")
        plot_metrics(metrics, out / "metrics.png")
    passk, drawn = None, []
    if cfg.samples:
        drawn = [r for r in samples.records() if r["model"] in run_models and (r["task"], r["item_id"]) in wanted
                 and r["sample"] < cfg.samples]
        passk = passk_table(drawn, order, cfg.samples, stats)
        write_table(passk, out / "passk", columns=PASSK_COLUMNS)
        if cfg.plots:
            from frankenlab.eval.plots import plot_passk

            plot_passk(passk, out / "plots" / "passk.png")
    n_sample_failed = sum(1 for r in drawn if r.get("error"))
    n_failed = sum(1 for r in records if r.get("error"))
    write_manifest(out, build_manifest(
        "eval", args=cfg.model_dump(mode="json"), seed=cfg.seed,
        inputs={label: str(m.get("fingerprint")) for label, m in run_models.items()},
        extra={"key_fields": key_fields, "models": dict(run_models), "n_records": len(records),
               "n_failed": n_failed, "n_sample_records": len(drawn), "n_sample_failed": n_sample_failed,
               "sampling": {**cfg.sampling_key(), "samples": cfg.samples} if cfg.samples else None,
               "math_verify": math_verify_available(),
               "failed_items_policy": "failed = wrong; counted in n and n_failed"}))
    return EvalResult(out, summary, metrics, comparisons, len(records), n_new, n_failed, passk, len(drawn),
                      n_sample_new, n_sample_failed)


def answer_items(backend: Any, items: Sequence[TaskItem], *, label: str = "model", setting: str = "image",
                 config: EvalConfig | None = None,
                 progress: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """One record per item (the ``items.jsonl`` fields), in item order, from ``backend`` in memory.

    The loop of :func:`evaluate` without its output directory: prompts by
    :func:`~frankenlab.eval.settings.build_prompt` (``setting`` for image items, ``text`` for text-only
    ones), one answer length per item kind unless the backend's is explicit, a failing batch retried item
    by item, and the same grading. Callers that keep their own tables (the mini-world build, the study's
    freeze stage) score exactly as ``frankenlab eval`` does.
    """
    if not items:
        raise EvalError("nothing to evaluate: the task list is empty.")
    cfg = config if config is not None else EvalConfig(settings=(setting,))
    jobs = [_Job(it.task or "tasks", it, settings_for(it, (setting,))[0], it.kind(it.task)) for it in items]
    position = {id(j): i for i, j in enumerate(jobs)}
    out: list[dict[str, Any] | None] = [None] * len(jobs)
    done = 0
    for kind, chunk in _batches(jobs, max(1, backend.settings.batch_size)):
        for job, rec in zip(chunk, _run_chunk(label, backend_for_kind(backend, kind), chunk, cfg, {}, None),
                            strict=True):
            out[position[id(job)]] = rec
        done += len(chunk)
        if progress is not None:
            progress(done)
    return [r for r in out if r is not None]
