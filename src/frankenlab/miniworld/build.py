"""``miniworld build``: train the mini-world IN model (SFT), its RL model (GRPO), three frozen-block RLs and
planted-truth pairs.

The data design gives RL something real to improve. IN learns the parts -- the perception families
(count, color, shape, read_digit, locate) and arithmetic stated in words (text_arith) -- but half of
its targets for the families that chain them (count_arith, digit_arith) are the perceived value alone,
a perception shortcut: IN has every part and under-uses the reasoning step on what it sees. RL then
trains with an exact-match reward on a mix dominated by those two families. Every RL variant starts
from the same IN checkpoint with the same seed, data order and settings; the frozen ones differ only
in which third of the decoder cannot move, which :func:`frankenlab.freeze.verify_frozen` proves on the
saved files.

Planted pairs (``planted/``) have a difference from IN known by construction, to check the study's verdict
rules: ``null`` (a byte copy of IN), ``noise`` (the same small relative noise on every decoder matrix) and
``late-only`` / ``early-only`` (GRPO exactly like RL's, with everything outside that third frozen,
embeddings, final norm and lm_head included; :func:`frankenlab.planted.verify_confined` proves it).

Everything is written into a temporary sibling of the output directory and renamed at the end.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from frankenlab.errors import FreezeError, TaskError
from frankenlab.miniworld.evaluate import ItemResult, accuracy_rows, evaluate, gain_rows
from frankenlab.miniworld.tasks import FAMILIES, export_tasks, make_split
from frankenlab.tasks.schema import TaskItem

__all__ = [
    "ALWAYS_FROZEN",
    "NECESSITY_COLUMNS",
    "PLANTED",
    "PLANTED_TRAINED",
    "RESULT_COLUMNS",
    "RL_MIX",
    "SFT_MIX",
    "BuildConfig",
    "BuildResult",
    "build_miniworld",
    "necessity_rows",
    "perceived_value",
]

log = logging.getLogger(__name__)

#: Share of each family in the SFT data.
SFT_MIX: Mapping[str, float] = MappingProxyType({
    "count": 0.17, "color": 0.12, "shape": 0.12, "read_digit": 0.08, "locate": 0.14, "text_arith": 0.21,
    "count_arith": 0.08, "digit_arith": 0.08,
})
#: Share of each family in the RL prompts: mostly the compositions, the rest against forgetting.
RL_MIX: Mapping[str, float] = MappingProxyType({
    "count_arith": 0.35, "digit_arith": 0.35, "text_arith": 0.1, "count": 0.1, "read_digit": 0.05, "color": 0.05,
})
#: Families whose answer is arithmetic on a perceived value (count or digit).
COMPOSITE = ("count_arith", "digit_arith")
#: Never trained: the vision tower keeps its seeded initialisation (a fixed random "retina"). A tower
#: trained from scratch collapsed in SFT, and Adam's sign-like first steps on it in GRPO scrambled the
#: features the decoder had learned to read (read_digit fell from 1.00 to 0.69).
ALWAYS_FROZEN = "vision"
RESULT_COLUMNS = ("model", "family", "n", "strict_acc", "strict_lo", "strict_hi", "lenient_acc", "lenient_lo",
                  "lenient_hi", "strict_correct", "lenient_correct")
#: necessity.csv: each RL variant's paired gain over IN, and the frozen variants' gain over unfrozen RL.
NECESSITY_COLUMNS = ("model", "family", "n", "acc", "gain", "gain_low", "gain_high", "p_value", "in_acc",
                     "rl_acc", "gain_vs_rl", "gain_vs_rl_low", "gain_vs_rl_high", "p_value_vs_rl", "score")
REGIONS = ("early", "mid", "late")
#: Planted pairs trained with GRPO: name → the only region allowed to change.
PLANTED_TRAINED: Mapping[str, str] = MappingProxyType({"late-only": "late", "early-only": "early"})
PLANTED = ("null", "noise", *PLANTED_TRAINED)
#: How each planted.json names its IN: relative to the planted checkpoint directory (OUT/planted/<name>).
SOURCE_NAME = "../../in"

Progress = Callable[[str, Mapping[str, Any]], None]


class BuildConfig(BaseModel):
    """Everything that decides the mini-world checkpoints; recorded in ``build.json``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = Field(0, description="Seed of the data, the initial weights, SFT order and GRPO sampling.")
    fast: bool = Field(False, description="Few steps and items: a smoke-test build for tests (< 60 s).")
    sft_steps: int = Field(3000, ge=1, description="SFT optimizer steps for IN.")
    sft_batch_size: int = Field(16, ge=1, description="SFT examples per step.")
    sft_lr: float = Field(2e-3, gt=0, description="SFT peak learning rate (warmup, then cosine).")
    n_sft_items: int = Field(12000, ge=8, description="SFT examples drawn from the train split.")
    rl_steps: int = Field(100, ge=1, description="GRPO steps for RL and for each frozen variant.")
    rl_lr: float = Field(1e-4, gt=0, lt=1e-2, description="GRPO learning rate (constant).")
    rl_prompts_per_step: int = Field(16, ge=1, description="Prompts per GRPO step.")
    rl_generations: int = Field(4, ge=2, description="Completions sampled per prompt (the GRPO group).")
    n_rl_items: int = Field(1600, ge=4, description="RL prompts drawn from the train split.")
    n_eval: int = Field(2000, ge=8, le=2000, description="Held-out test items, spread evenly over the 8 families "
                        "(at most 2000: text_arith has ~260 distinct test questions).")
    n_probe_pairs: int = Field(50, ge=1, description="Probe pairs per probe task written to probe-pairs/.")
    frozen_regions: tuple[str, ...] = Field(REGIONS, description="Frozen-block RL variants to train.")
    sft_shortcut: float = Field(0.5, ge=0, le=1, description="Share of count_arith/digit_arith SFT targets "
                                "that are only the perceived value (the shortcut RL has to unlearn).")
    planted_scale: float = Field(1e-3, gt=0, description="Relative noise ‖ΔW‖/‖W‖ of the planted noise pair.")
    threads: int = Field(1, ge=1, description="torch threads for training; 1 (the default) makes the build "
                         "bit-identical across runs on one machine.")
    planted_rl_steps: int | None = Field(None, ge=1, description="GRPO steps of the planted late-only / "
                                         "early-only runs (default: rl_steps, i.e. exactly RL's recipe).")

    @field_validator("frozen_regions")
    @classmethod
    def _known_regions(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [r for r in v if r not in REGIONS]
        if bad:
            raise ValueError(f"frozen regions {bad} are not among {list(REGIONS)}")
        return v

    @classmethod
    def preset(cls, *, fast: bool = False, seed: int = 0, **overrides: Any) -> BuildConfig:
        """The default build, or with ``fast`` the smoke-test sizes (same pipeline, minutes → seconds)."""
        base: dict[str, Any] = {"seed": seed, "fast": fast}
        if fast:
            # The fast RL's 2 steps see only all-wrong groups (zero advantage): it changes no weight. The
            # planted runs take one pass over the 16 prompts, enough for groups with mixed rewards.
            base |= {"sft_steps": 30, "n_sft_items": 240, "rl_steps": 2, "n_rl_items": 16, "n_eval": 64,
                     "n_probe_pairs": 2, "rl_prompts_per_step": 2, "planted_rl_steps": 8}
        try:
            return cls(**(base | overrides))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise TaskError(f"invalid mini-world build settings ({problems}).") from exc


class BuildResult(BaseModel):
    """Paths and headline numbers of a finished build."""

    out: Path
    models: dict[str, Path]
    results: pd.DataFrame
    gains: pd.DataFrame
    seconds: dict[str, float]
    planted: dict[str, Path] = Field(default_factory=dict)

    model_config = ConfigDict(arbitrary_types_allowed=True)


def _mix_items(mix: Mapping[str, float], n: int, seed: int, split: str) -> list[TaskItem]:
    """``n`` items split over families by ``mix`` (largest remainders), interleaved in a seeded order."""
    import random

    total = sum(mix.values())
    raw = {f: n * w / total for f, w in mix.items()}
    counts = {f: int(v) for f, v in raw.items()}
    for f in sorted(raw, key=lambda f: raw[f] - counts[f], reverse=True)[: n - sum(counts.values())]:
        counts[f] += 1
    items: list[TaskItem] = []
    for k, (family, count) in enumerate(counts.items()):
        if count:
            # text-only families have a few hundred distinct questions per split: allow repeats
            items += make_split(count, seed * 1000 + k, [family], split, unique=family != "text_arith")
    random.Random(f"frankenlab.miniworld.mix:{seed}:{split}").shuffle(items)
    return items


_OP = re.compile(r"(plus|times) (\d+)\?$")


def perceived_value(item: TaskItem) -> str:
    """The count or digit a composite question starts from, recovered from its answer and operation."""
    m = _OP.search(item.question)
    if item.family not in COMPOSITE or m is None:
        raise TaskError(f"{item.id}: not a count_arith/digit_arith question ({item.question!r}).")
    k, answer = int(m.group(2)), int(item.answer)
    if m.group(1) == "plus":
        return str(answer - k)
    if answer % k:
        raise TaskError(f"{item.id}: answer {answer} is not a multiple of {k}; the item is inconsistent.")
    return str(answer // k)


def _with_shortcuts(items: list[TaskItem], share: float, seed: int) -> list[TaskItem]:
    """Replace ``share`` of the composite SFT targets by the perceived value alone.

    Why: cold-start data is imperfect. Here IN learns both the right composite answer and a perception
    shortcut (report what you see, skip the arithmetic), so it has every part the task needs but
    under-uses the reasoning step on what it perceives -- a gap that a verifiable reward can close.
    """
    import dataclasses
    import random

    rng = random.Random(f"frankenlab.miniworld.shortcut:{seed}")
    out = []
    for it in items:
        if it.family in COMPOSITE and rng.random() < share:
            it = dataclasses.replace(it, answer=perceived_value(it))
        out.append(it)
    return out


def _notify(progress: Progress | None, stage: str, **info: Any) -> None:
    log.info("%s %s", stage, info)
    if progress is not None:
        progress(stage, info)


def build_miniworld(
    out: str | os.PathLike[str],
    config: BuildConfig | None = None,
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> BuildResult:
    """Build the mini-world into ``out``: IN, RL, RL with early/mid/late frozen, planted pairs, tasks, probes, tables.

    Same config and seed → bit-identical checkpoints on the same machine (one thread, deterministic
    kernels, seeded everything). ``progress(stage, info)`` is called at stage boundaries and SFT/GRPO
    milestones; the CLI turns it into a progress display.
    """
    from frankenlab.io import atomic_dir, write_json, write_table
    from frankenlab.manifest import build_manifest
    from frankenlab.miniworld.probe_pairs import write_probe_pairs
    from frankenlab.rl.grpo import deterministic, quiet_transformers

    cfg = config or BuildConfig.preset()
    target = Path(out)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    with deterministic(cfg.threads), quiet_transformers(), atomic_dir(target, overwrite=overwrite) as tmp:
        t0 = time.perf_counter()
        sft_items = _with_shortcuts(_mix_items(SFT_MIX, cfg.n_sft_items, cfg.seed, "train"), cfg.sft_shortcut,
                                    cfg.seed)
        rl_items = _mix_items(RL_MIX, cfg.n_rl_items, cfg.seed + 1, "train")
        eval_items = make_split(cfg.n_eval, cfg.seed, FAMILIES, "test")
        export_tasks(eval_items, tmp / "tasks", "test")
        export_tasks(rl_items, tmp / "tasks", "rl-train")
        write_probe_pairs(tmp / "probe-pairs", cfg.n_probe_pairs, cfg.seed)
        seconds["data"] = time.perf_counter() - t0
        _notify(progress, "data", sft=len(sft_items), rl=len(rl_items), eval=len(eval_items))

        t0 = time.perf_counter()
        sft_losses = _train_in(cfg, sft_items, tmp / "in", progress)
        seconds["sft"] = time.perf_counter() - t0

        runs: dict[str, dict[str, Any]] = {}
        variants = [("rl", ALWAYS_FROZEN)] + [(f"rl-frozen-{r}", f"{ALWAYS_FROZEN},{r}") for r in cfg.frozen_regions]
        for name, region in variants:
            t0 = time.perf_counter()
            runs[name] = _train_rl(cfg, tmp / "in", tmp / name, rl_items, region, progress)
            seconds[name] = time.perf_counter() - t0

        t0 = time.perf_counter()
        results = _evaluate_all(tmp, ["in"] + [name for name, _ in variants], eval_items, progress)
        acc = pd.DataFrame([row for name, res in results.items() for row in accuracy_rows(name.upper(), res)])
        gains = pd.DataFrame(necessity_rows(results, "strict", cfg.seed))
        write_table(acc, tmp / "results", RESULT_COLUMNS)
        write_table(gains, tmp / "necessity", NECESSITY_COLUMNS)
        write_table(pd.DataFrame(necessity_rows(results, "lenient", cfg.seed)), tmp / "necessity_lenient",
                    NECESSITY_COLUMNS)
        seconds["eval"] = time.perf_counter() - t0

        planted = _plant_all(cfg, tmp, rl_items, eval_items, results["in"], seconds, progress)

        seconds["total"] = time.perf_counter() - start
        manifest = build_manifest(
            "miniworld build", args=cfg.model_dump(mode="json"), seed=cfg.seed,
            extra={"sft": {"final_loss": sft_losses[-1], "mean_loss_last_50": _tail_mean(sft_losses)},
                   "rl_runs": runs, "seconds": seconds, "sft_mix": dict(SFT_MIX), "rl_mix": dict(RL_MIX),
                   "checkpoints": {name: _fingerprint(tmp / name) for name in results},
                   "planted": planted},
        )
        write_json(tmp / "build.json", manifest)
    models = {name: target / name for name in ["in"] + [n for n, _ in variants]}
    return BuildResult(out=target, models=models, results=acc, gains=gains, seconds=seconds,
                       planted={name: target / "planted" / name for name in planted})


def _plant_all(cfg: BuildConfig, root: Path, rl_items: list[TaskItem], eval_items: list[TaskItem],
               in_results: list[ItemResult], seconds: dict[str, float],
               progress: Progress | None) -> dict[str, dict[str, Any]]:
    """Write ``planted/{null,noise,late-only,early-only}`` with their ``planted.json``; a summary for build.json.

    The noise and trained pairs are evaluated on the held-out items (``planted/results.csv``): how far
    each moved IN's answers is part of its truth (the null pair's answers are IN's, byte for byte).
    """
    from frankenlab.io import write_table
    from frankenlab.planted import plant_noise, plant_null, record_confined

    base, in_dir = root / "planted", root / "in"
    summary: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    records = {"null": plant_null(in_dir, base / "null", source_name=SOURCE_NAME),
               "noise": plant_noise(in_dir, base / "noise", scale=cfg.planted_scale, seed=cfg.seed,
                                    source_name=SOURCE_NAME)}
    seconds["planted-copies"] = time.perf_counter() - t0
    for name, record in records.items():
        _notify(progress, "planted", name=name, kind=record.kind, changed=len(record.changed))
    runs: dict[str, dict[str, Any]] = {}
    for name, region in PLANTED_TRAINED.items():
        t0 = time.perf_counter()
        frozen = ",".join([ALWAYS_FROZEN, "projector", *(r for r in REGIONS if r != region)])
        out = base / name
        run = _train_rl(cfg, in_dir, out, rl_items, frozen, progress, steps=cfg.planted_rl_steps, only=region)
        runs[name] = run
        records[name] = record_confined(
            in_dir, out, region, frozen=frozen, seed=cfg.seed, source_name=SOURCE_NAME, how="GRPO exactly like RL's",
            extra={"rl_steps": run["settings"]["steps"], "mean_reward": run["reward"].get("mean_reward"),
                   "freeze_verified": run["freeze_verified"]["ok"]},
        )
        if not records[name].changed:
            log.warning("planted/%s: GRPO changed no weight (every sampled group had equal rewards); the pair is "
                        "null in effect, as its planted.json says.", name)
        records[name].write(out)
        _notify(progress, "planted", name=name, kind="trained", changed=len(records[name].changed))
        seconds[f"planted-{name}"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    evaluated = _evaluate_all(base, ["noise", *PLANTED_TRAINED], eval_items, progress,
                              responses=root / "eval" / "planted")
    acc = pd.DataFrame([row for name, res in evaluated.items() for row in accuracy_rows(f"PLANTED-{name.upper()}",
                                                                                        res)])
    write_table(acc, base / "results", RESULT_COLUMNS)
    seconds["planted-eval"] = time.perf_counter() - t0
    for name, record in records.items():
        entry = {"path": f"planted/{name}", "kind": record.kind, "regions": list(record.regions),
                 "scale": record.scale, "seed": record.seed, "frozen": record.frozen,
                 "n_changed": len(record.changed), "fingerprint": record.fingerprint}
        res = evaluated.get(name)
        if res is not None:
            entry["strict_acc"] = sum(r.strict for r in res) / len(res)
            entry["same_response_as_in"] = sum(a.response == b.response for a, b in zip(res, in_results)) / len(res)
        if name in runs:
            entry["rl_run"] = runs[name]
        summary[name] = entry
    return summary


def _fingerprint(path: Path) -> str:
    from frankenlab.checkpoint import Checkpoint

    with Checkpoint(path) as c:
        return c.fingerprint


def _tail_mean(values: list[float], k: int = 50) -> float:
    tail = values[-k:]
    return sum(tail) / len(tail)


def _train_in(cfg: BuildConfig, items: list[TaskItem], out: Path, progress: Progress | None) -> list[float]:
    from frankenlab.miniworld.model import (
        build_miniworld_model,
        build_miniworld_processor,
        build_miniworld_tokenizer,
        save_pair_member,
    )
    from frankenlab.miniworld.sft import SFTConfig, encode_examples, train_sft

    tokenizer = build_miniworld_tokenizer()
    processor = build_miniworld_processor(tokenizer)
    model = build_miniworld_model(tokenizer, seed=cfg.seed)
    examples = encode_examples(processor, [(it.question, it.image, it.answer) for it in items])
    sft = SFTConfig(steps=cfg.sft_steps, batch_size=cfg.sft_batch_size, lr=cfg.sft_lr, seed=cfg.seed,
                    warmup=min(50, max(1, cfg.sft_steps // 10)))
    every = max(1, cfg.sft_steps // 20)

    def on_step(step: int, loss: float) -> None:
        if (step + 1) % every == 0 or step + 1 == cfg.sft_steps:
            _notify(progress, "sft", step=step + 1, steps=cfg.sft_steps, loss=loss)

    _notify(progress, "sft-start", steps=cfg.sft_steps, items=len(examples))
    losses = train_sft(model, examples, sft, pad_id=tokenizer.pad_token_id, on_step=on_step)
    save_pair_member(model, processor, out)
    tail = losses[-max(1, len(losses) // 20):]
    _notify(progress, "sft-done", steps=cfg.sft_steps, loss_first=float(losses[0]) if losses else float("nan"),
            loss_last=float(sum(tail) / len(tail)) if losses else float("nan"))
    return losses


def _train_rl(cfg: BuildConfig, in_dir: Path, out: Path, items: list[TaskItem], region: str,
              progress: Progress | None, *, steps: int | None = None, only: str | None = None) -> dict[str, Any]:
    """GRPO from IN with ``region`` frozen; with ``only``, every parameter outside that region is frozen too."""
    from frankenlab.freeze import verify_frozen
    from frankenlab.miniworld.model import save_pair_member
    from frankenlab.planted import freeze_outside
    from frankenlab.rl.grpo import GRPOSettings, train_grpo
    from frankenlab.runtime.load import load

    steps = steps or cfg.rl_steps
    _notify(progress, "rl", model=out.name, freeze=region, steps=steps)
    model, processor = load(in_dir, attn_implementation="eager")
    if only is not None:
        freeze_outside(model, only)  # train_grpo restores requires_grad afterwards from what it found
    settings = GRPOSettings(steps=steps, lr=cfg.rl_lr, prompts_per_step=cfg.rl_prompts_per_step,
                            num_generations=cfg.rl_generations, seed=cfg.seed, threads=cfg.threads)
    run = train_grpo(model, processor, items, settings, freeze=region)
    save_pair_member(model, processor, out)
    record = run.to_dict()
    if region:
        check = verify_frozen(str(in_dir), str(out), region)
        record["freeze_verified"] = {"ok": check.ok, "frozen_identical": len(check.frozen_identical),
                                     "frozen_changed": check.frozen_changed,
                                     "other_changed": len(check.other_changed),
                                     "other_unchanged": len(check.other_unchanged)}
        if not check.ok:
            raise FreezeError(f"{out.name}: frozen tensors changed during GRPO ({check.frozen_changed[:3]}).")
    _notify(progress, "rl-done", model=out.name, reward=run.reward.get("mean_reward"))
    return record


def _evaluate_all(root: Path, names: list[str], items: list[TaskItem], progress: Progress | None,
                  responses: Path | None = None) -> dict[str, list[ItemResult]]:
    from frankenlab.miniworld.evaluate import write_responses
    from frankenlab.runtime.load import load

    eval_items = list(items)
    results: dict[str, list[ItemResult]] = {}
    for name in names:
        model, processor = load(root / name)
        results[name] = evaluate(model, processor, eval_items)
        write_responses((responses or root / "eval") / f"{name}.jsonl", name.upper(), results[name])
        _notify(progress, "eval", model=name, strict=sum(r.strict for r in results[name]) / len(eval_items))
    if not results:
        raise TaskError("no model was evaluated.")
    return results


def necessity_rows(results: Mapping[str, list[ItemResult]], score: str, seed: int) -> list[dict[str, Any]]:
    """One row per RL variant and family: its paired gain over IN and, for frozen variants, over RL.

    Needs results under the names ``in`` and ``rl``; intervals are paired bootstrap 95% intervals.
    """
    if "in" not in results or "rl" not in results:
        raise TaskError("the necessity table needs the IN and RL evaluations.")
    rows: list[dict[str, Any]] = []
    for name, res in results.items():
        if name == "in":
            continue
        vs_in = gain_rows(name.upper(), res, "IN", results["in"], score=score, seed=seed)
        vs_rl = {r["family"]: r for r in gain_rows(name.upper(), res, "RL", results["rl"], score=score, seed=seed)}
        for g in vs_in:
            r = vs_rl[g["family"]]
            frozen = name != "rl"
            rows.append({
                "model": g["model"], "family": g["family"], "n": g["n"], "acc": g["acc"], "gain": g["gain"],
                "gain_low": g["gain_lo"], "gain_high": g["gain_hi"], "p_value": g["p_value"],
                "in_acc": g["versus_acc"], "rl_acc": r["versus_acc"],
                "gain_vs_rl": r["gain"] if frozen else None, "gain_vs_rl_low": r["gain_lo"] if frozen else None,
                "gain_vs_rl_high": r["gain_hi"] if frozen else None,
                "p_value_vs_rl": r["p_value"] if frozen else None, "score": score,
            })
    return rows
