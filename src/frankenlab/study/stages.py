"""The study's stages, each a thin call into one analysis with the study's settings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from frankenlab.errors import FrankenlabError
from frankenlab.io.atomic import write_json
from frankenlab.io.tables import write_table
from frankenlab.study.config import RecipeInputs, StudyConfig
from frankenlab.study.pipeline import DATA_DIR, StageSpec

ROLES = ("IN", "RL")
NECESSITY_COLUMNS = ["model", "family", "n", "acc", "gain", "gain_low", "gain_high"]


def data_dir(cfg: StudyConfig) -> Path:
    return Path(cfg.out) / DATA_DIR


def builtin_pairs(cfg: StudyConfig) -> Path:
    """The procedural probe set, written once per (n, seed) and shared by the probes."""
    from frankenlab.miniworld.probe_pairs import write_probe_pairs

    folder = data_dir(cfg) / f"pairs-n{cfg.probe.n_per_task}-s{cfg.probe.seed}"
    path = folder / "pairs.jsonl"
    if not path.exists():
        write_probe_pairs(folder, n_per_task=cfg.probe.n_per_task, seed=cfg.probe.seed)
    return path


def builtin_tasks(cfg: StudyConfig) -> list[str]:
    """Held-out mini-world items (every family) when the study names no eval tasks."""
    from frankenlab.miniworld.tasks import export_tasks, make_split

    n = cfg.eval.limit or 120
    folder = data_dir(cfg) / f"tasks-n{n}-s{cfg.eval.seed}"
    path = folder / "miniworld.jsonl"
    if not path.exists():
        export_tasks(make_split(n * 8, cfg.eval.seed, split="test", unique=False), folder, "miniworld")
    return [str(path)]


def pairs_path(cfg: StudyConfig) -> str:
    return cfg.probe.pairs or str(builtin_pairs(cfg))


def _role_paths(recipe: RecipeInputs) -> dict[str, str]:
    return {"IN": recipe.in_, "RL": recipe.rl}


# -- compare -----------------------------------------------------------------------------------
def _compare_key(cfg: StudyConfig, recipe: RecipeInputs, fps: dict[str, str]) -> dict[str, Any]:
    return {"svd": cfg.compare.svd, "top_k": cfg.compare.top_k, "cuts": cfg.cuts, "device": cfg.device}


def _compare_run(cfg: StudyConfig, recipe: RecipeInputs, out: Path, fps: dict[str, str]) -> None:
    from frankenlab.compare import compare_checkpoints

    compare_checkpoints(recipe.in_, recipe.rl, recipe.base, out_dir=out, svd=cfg.compare.svd,
                        top_k=cfg.compare.top_k, cuts=cfg.cuts, device="auto" if cfg.device == "auto" else cfg.device,
                        overwrite=True)


# -- probes ------------------------------------------------------------------------------------
def _vision_only(cfg: StudyConfig, recipe: RecipeInputs) -> str | None:
    from frankenlab.checkpoint import Checkpoint

    with Checkpoint(recipe.in_) as c:
        return None if c.adapter.has_vision else "text-only model: no visual tokens to probe"


#: Probe settings read only by probe_kl / probe_lens: changing them leaves the other probes' results valid.
BEHAVIOUR_FIELDS = {"kl", "lens", "behaviour_tasks", "behaviour_limit", "system_prompt"}


def _probe_key(cfg: StudyConfig, recipe: RecipeInputs, fps: dict[str, str]) -> dict[str, Any]:
    return {"probe": cfg.probe.model_dump(exclude=BEHAVIOUR_FIELDS), "cuts": cfg.cuts}


def _vision_run(cfg: StudyConfig, recipe: RecipeInputs, out: Path, fps: dict[str, str]) -> None:
    from frankenlab.probe import VisionProbeSettings, run_vision_probe

    settings = VisionProbeSettings(max_new_tokens=cfg.probe.max_new_tokens, seed=cfg.probe.seed)
    for role, path in _role_paths(recipe).items():
        run_vision_probe(path, pairs_path(cfg), out / role, settings, limit=cfg.probe.n_per_task, **_placement(cfg))


CONTROL_NAME = "perception_control"


def ablate_control(cfg: StudyConfig, recipe: RecipeInputs) -> str | None:
    """The perception task ablated beside reasoning (a file path), or None for a text-only model."""
    if cfg.probe.ablate_control:
        return cfg.probe.ablate_control
    if _vision_only(cfg, recipe) is not None:
        return None
    from frankenlab.miniworld.tasks import export_tasks, make_split

    n = cfg.probe.ablate_limit
    folder = data_dir(cfg) / f"control-n{n}-s{cfg.probe.seed}"
    path = folder / f"{CONTROL_NAME}.jsonl"
    if not path.exists():
        export_tasks(make_split(n, cfg.probe.seed, families=["count"], split="test"), folder, CONTROL_NAME)
    return str(path)


def control_task_names(cfg: StudyConfig) -> list[str]:
    """Task names the claims treat as the ablation's perception control (the task file's stem)."""
    return [Path(cfg.probe.ablate_control).stem if cfg.probe.ablate_control else CONTROL_NAME]


def _ablate_run(cfg: StudyConfig, recipe: RecipeInputs, out: Path, fps: dict[str, str]) -> None:
    from frankenlab.probe import AblationSettings, run_ablation

    tasks = [cfg.probe.ablate_tasks] if cfg.probe.ablate_tasks else ["miniworld:text_arith"]
    control = ablate_control(cfg, recipe)
    if control is not None:
        tasks.append(control)
    settings = AblationSettings(max_new_tokens=cfg.probe.max_new_tokens, seed=cfg.probe.seed)
    for role, path in _role_paths(recipe).items():
        run_ablation(path, tasks, out / role, settings, limit=cfg.probe.ablate_limit, **_placement(cfg))


def _attention_applicable(cfg: StudyConfig, recipe: RecipeInputs) -> str | None:
    if not cfg.probe.attention:
        return "disabled in the study config (probe.attention: false)"
    return _vision_only(cfg, recipe)


def _attention_run(cfg: StudyConfig, recipe: RecipeInputs, out: Path, fps: dict[str, str]) -> None:
    from frankenlab.probe import AttentionProbeSettings, run_attention_probe

    settings = AttentionProbeSettings(max_new_tokens=cfg.probe.max_new_tokens, seed=cfg.probe.seed)
    run_attention_probe(recipe.in_, recipe.rl, out, settings, pairs=pairs_path(cfg), limit=cfg.probe.n_per_task,
                        **_placement(cfg))


def behaviour_tasks(cfg: StudyConfig) -> list[str]:
    """Tasks of probe_kl / probe_lens: probe.behaviour_tasks, else the eval tasks, else the built-in items."""
    return list(cfg.probe.behaviour_tasks or cfg.eval.tasks or builtin_tasks(cfg))


def _behaviour_key(cfg: StudyConfig, recipe: RecipeInputs, fps: dict[str, str]) -> dict[str, Any]:
    p = cfg.probe
    tasks = p.behaviour_tasks or cfg.eval.tasks or {"builtin": [cfg.eval.limit, cfg.eval.seed]}
    return {"tasks": tasks, "limit": p.behaviour_limit, "seed": p.seed, "system_prompt": p.system_prompt,
            "max_new_tokens": p.max_new_tokens, "cuts": cfg.cuts}


def _kl_applicable(cfg: StudyConfig, recipe: RecipeInputs) -> str | None:
    return None if cfg.probe.kl else "disabled in the study config (probe.kl: false)"


def _lens_applicable(cfg: StudyConfig, recipe: RecipeInputs) -> str | None:
    return None if cfg.probe.lens else "disabled in the study config (probe.lens: false)"


def _kl_run(cfg: StudyConfig, recipe: RecipeInputs, out: Path, fps: dict[str, str]) -> None:
    from frankenlab.probe import KLSettings, run_kl

    settings = KLSettings(max_new_tokens=cfg.probe.max_new_tokens, seed=cfg.probe.seed,
                          system_prompt=cfg.probe.system_prompt)
    run_kl(recipe.in_, recipe.rl, behaviour_tasks(cfg), out, settings, limit=cfg.probe.behaviour_limit,
           **_placement(cfg))


def _lens_run(cfg: StudyConfig, recipe: RecipeInputs, out: Path, fps: dict[str, str]) -> None:
    from frankenlab.probe import LensSettings, run_lens

    settings = LensSettings(seed=cfg.probe.seed, system_prompt=cfg.probe.system_prompt)
    run_lens(behaviour_tasks(cfg), out, settings, in_model=recipe.in_, rl_model=recipe.rl,
             limit=cfg.probe.behaviour_limit, **_placement(cfg))


def _device(cfg: StudyConfig) -> str:
    from frankenlab.runtime.devices import resolve_device

    return resolve_device(cfg.device)


def _placement(cfg: StudyConfig) -> dict[str, Any]:
    """Where the probes load a model: the study's device, or (device_map) accelerate's split with device auto."""
    if cfg.device_map is None:
        return {"device": _device(cfg)}
    return {"device": "auto", "device_map": cfg.device_map}


# -- merge + eval ------------------------------------------------------------------------------
def variant_recipes(cfg: StudyConfig) -> dict[str, Any]:
    """Label → Recipe for every merged variant (standard and custom), validated up front."""
    from frankenlab.merge import Recipe

    out: dict[str, Any] = {v: Recipe.parse(v, cuts=cfg.cuts) for v in cfg.variants}
    for cv in cfg.custom_variants:
        out[cv.name] = Recipe.parse(cv.recipe, cuts=cfg.cuts, alpha=cv.alpha or None, rank=cv.rank or None,
                                    name=cv.name)
    return out


def _eval_key(cfg: StudyConfig, recipe: RecipeInputs, fps: dict[str, str]) -> dict[str, Any]:
    return {"eval": cfg.eval.model_dump(exclude_defaults=True), "variants": cfg.variants,
            "custom": [c.model_dump() for c in cfg.custom_variants], "cuts": cfg.cuts, "backend": cfg.backend}


def _eval_run(cfg: StudyConfig, recipe: RecipeInputs, out: Path, fps: dict[str, str]) -> None:
    """IN, RL and every variant on the eval tasks. With the HF backend a variant is assembled in memory; with
    vLLM (which loads checkpoints from disk) it is written once to a temporary checkpoint beside the study,
    evaluated, and removed."""
    import tempfile

    from frankenlab.eval import evaluate
    from frankenlab.merge import assemble, merge
    from frankenlab.runtime.load import load_processor
    from frankenlab.runtime.vllm import pick_backend

    # a device map is the HF backend's way to split a model (config refuses it with vllm), so auto means HF then
    backend = "hf" if cfg.device_map is not None else pick_backend(cfg.backend)
    placement = {"device": cfg.device, **({"device_map": cfg.device_map} if cfg.device_map is not None else {})}
    tasks = cfg.eval.tasks or builtin_tasks(cfg)
    common = dict(settings=cfg.eval.settings, limit=cfg.eval.limit, seed=cfg.eval.seed,
                  system_prompt=cfg.eval.system_prompt, backend=backend, **placement)
    gen = {"max_new_tokens": cfg.eval.max_new_tokens, "batch_size": cfg.eval.batch_size}
    from frankenlab.runtime.generate import GenerationSettings

    generation = GenerationSettings(**gen)
    recipes = variant_recipes(cfg)
    e = cfg.eval
    passk = dict(settings=e.sample_settings, limit=e.sample_limit or e.limit, seed=e.seed,
                 system_prompt=e.system_prompt, backend=backend, **placement, samples=e.samples,
                 sample_temperature=e.sample_temperature, sample_top_p=e.sample_top_p, sample_seed=e.seed)

    def run(label: str, model: Any) -> None:
        evaluate({label: model}, tasks, out_dir=out, generation=generation, **common)
        if e.samples:  # pass@k beside the greedy eval: its own directory, fewer items and settings
            evaluate({label: model}, tasks, out_dir=out / "passk", generation=generation, **passk)

    for role, path in _role_paths(recipe).items():
        run(role, path)
    write_json(out / "variants.json", {label: r.to_dict() for label, r in recipes.items()})
    if backend == "vllm":
        for label, r in recipes.items():
            with tempfile.TemporaryDirectory(dir=cfg.out, prefix=".variant-") as tmp:
                path = Path(tmp) / "ckpt"
                merge(recipe.in_, recipe.rl, r, path)
                run(label, str(path))
        return
    processor = load_processor(recipe.in_)
    model = None
    for label, r in recipes.items():
        model = assemble(r, recipe.in_, recipe.rl, model=model)
        run(label, (model, processor))


# -- freeze ------------------------------------------------------------------------------------
def _necessity_source(cfg: StudyConfig, recipe: RecipeInputs) -> Path | None:
    if cfg.freeze.table:
        return Path(cfg.freeze.table)
    sibling = Path(recipe.rl).parent / "necessity.csv"
    return sibling if sibling.exists() else None


def _freeze_applicable(cfg: StudyConfig, recipe: RecipeInputs) -> str | None:
    if cfg.freeze.train is None and _necessity_source(cfg, recipe) is None:
        return ("no freezing results: give freeze.table (e.g. the necessity.csv written by `frankenlab miniworld "
                "build`), or train frozen variants with `frankenlab rl --freeze`")
    return None


def _freeze_key(cfg: StudyConfig, recipe: RecipeInputs, fps: dict[str, str]) -> dict[str, Any]:
    if cfg.freeze.train is not None:
        return {"train": cfg.freeze.train.model_dump(), "eval_tasks": cfg.eval.tasks, "cuts": cfg.cuts}
    src = _necessity_source(cfg, recipe)
    return {"table": str(src), "mtime": src.stat().st_mtime if src and src.exists() else None}


def _train_frozen(cfg: StudyConfig, recipe: RecipeInputs, out: Path) -> None:
    """RL from IN unfrozen and with each region frozen, then paired gains over IN on held-out items."""
    from frankenlab.miniworld.build import NECESSITY_COLUMNS as BUILD_COLUMNS
    from frankenlab.miniworld.build import necessity_rows
    from frankenlab.miniworld.evaluate import evaluate, write_responses
    from frankenlab.rl.grpo import GRPOSettings, run_rl
    from frankenlab.runtime.load import load
    from frankenlab.tasks import load_tasks

    t = cfg.freeze.train
    assert t is not None
    eval_specs = t.eval_tasks or cfg.eval.tasks
    if not eval_specs:
        raise FrankenlabError("freeze.train needs held-out items: set freeze.train.eval_tasks or eval.tasks.")
    items = [it for task in load_tasks(list(eval_specs)) for it in task.items][: t.eval_limit]
    settings = GRPOSettings(steps=t.steps, lr=t.lr, prompts_per_step=t.prompts_per_step,
                            num_generations=t.num_generations, seed=t.seed)
    runs = {"rl": t.always_frozen}
    runs |= {f"rl-frozen-{r}": ",".join(x for x in (t.always_frozen, r) if x) for r in t.regions}
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, frozen in [("in", None), *runs.items()]:
        path = recipe.in_ if name == "in" else out / name
        if name != "in" and not (path / "rl_run.json").exists():
            run_rl(recipe.in_, t.tasks, path, settings, freeze=frozen or None, cuts=cfg.cuts, overwrite=True)
        model, processor = load(path)
        # one answer length per item kind unless eval.max_new_tokens is set: as the eval stage does
        results[name] = evaluate(model, processor, items, max_new_tokens=cfg.eval.max_new_tokens)
        write_responses(out / "items" / f"{name}.jsonl", name.upper(), results[name])
    df = pd.DataFrame(necessity_rows(results, "strict", t.seed))
    write_table(df, out / "necessity", columns=list(BUILD_COLUMNS))


def _freeze_run(cfg: StudyConfig, recipe: RecipeInputs, out: Path, fps: dict[str, str]) -> None:
    if cfg.freeze.train is not None:
        _train_frozen(cfg, recipe, out)
        return
    src = _necessity_source(cfg, recipe)
    assert src is not None
    if not src.exists():
        raise FrankenlabError(f"freeze.table {src} does not exist.")
    df = pd.read_csv(src)
    missing = [c for c in NECESSITY_COLUMNS if c not in df.columns]
    if missing:
        raise FrankenlabError(f"{src}: necessity table lacks columns {missing}; expected {NECESSITY_COLUMNS}.")
    write_table(df, out / "necessity", columns=NECESSITY_COLUMNS)
    for responses in sorted((src.parent / "eval").glob("*.jsonl")):  # per-item results: paired claim tests
        (out / "items").mkdir(parents=True, exist_ok=True)
        shutil.copy2(responses, out / "items" / responses.name)
    for png in src.parent.glob("necessity*.png"):
        shutil.copy2(png, out / png.name)
    write_json(out / "source.json", {"table": str(src.resolve()), "rows": len(df)})


STAGE_SPECS: dict[str, StageSpec] = {
    "compare": StageSpec("compare", _compare_key, _compare_run),
    "probe_vision": StageSpec("probe_vision", _probe_key, _vision_run, _vision_only),
    "probe_ablate": StageSpec("probe_ablate", _probe_key, _ablate_run),
    "probe_attention": StageSpec("probe_attention", _probe_key, _attention_run, _attention_applicable),
    "probe_kl": StageSpec("probe_kl", _behaviour_key, _kl_run, _kl_applicable),
    "probe_lens": StageSpec("probe_lens", _behaviour_key, _lens_run, _lens_applicable),
    "merge_eval": StageSpec("merge_eval", _eval_key, _eval_run),
    "freeze": StageSpec("freeze", _freeze_key, _freeze_run, _freeze_applicable),
}


def dump_config(cfg: StudyConfig) -> str:
    return json.dumps(cfg.model_dump(by_alias=True), indent=2)
