"""`freeze emit --emit verl|easyr1|openrlhf|trl-deepspeed`: each fragment, read back the way its trainer reads it,
freezes by name exactly the set `freeze show --json` reports, in the in-memory names of the loaded model."""

from __future__ import annotations

import json
import shlex

import pytest
import yaml

from frankenlab.checkpoint import Checkpoint
from frankenlab.cli.app import main
from frankenlab.freeze import parse_freeze
from frankenlab.testing.models import auto_model_class, save_tiny_checkpoint

TRAINERS = ("verl", "easyr1", "openrlhf", "trl-deepspeed")
SPECS = {
    "qwen2_5_vl": ("late", "vision,projector", "vision", "projector,llm:1", "early,vision:1"),
    "llava": ("mid", "vision,projector", "projector"),
    "qwen2": ("late", "llm:2", "early,mid"),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Per family: the saved checkpoint (hub names on disk) and the model loaded from it (in-memory names)."""
    root = tmp_path_factory.mktemp("emit-trainers")
    out = {}
    for family in SPECS:
        ckpt = save_tiny_checkpoint(family, root / family, n_llm_layers=6, n_vision_blocks=2, with_processor=False)
        out[family] = (ckpt, auto_model_class(family).from_pretrained(str(ckpt)))
    return out


def _cli(capsys, *args: str) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    captured = capsys.readouterr()
    assert exc.value.code == 0, captured.err
    return captured.out


def _show_names(capsys, ckpt, spec: str) -> set[str]:
    d = json.loads(_cli(capsys, "freeze", "show", str(ckpt), "--frozen", spec, "--json"))
    return set(d["frozen_names"])


def _frozen_by(trainer: str, text: str, model) -> set[str]:
    """Apply the fragment as the trainer would (its own code copied from its source) and list what it froze."""
    model.requires_grad_(True)
    body = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if trainer in ("verl", "easyr1") and body[0].endswith(":"):
        cfg = yaml.safe_load(text)
        actor = cfg["actor_rollout_ref"]["actor"] if trainer == "verl" else cfg["worker"]["actor"]["model"]
        assert actor == {"freeze_vision_tower": True}
        # verl/workers/fsdp_workers.py get_vl_model_vision_tower / EasyR1 _build_model_optimizer
        if hasattr(model, "model") and hasattr(model.model, "visual"):
            model.model.visual.requires_grad_(False)
    elif trainer == "openrlhf" and body[0].startswith("--"):
        assert shlex.split(" ".join(body)) == ["--actor.freeze_visual_encoder"]
        for name, param in model.named_parameters():  # openrlhf/models/actor.py, VLM branch
            if "language_model" not in name and "lm_head" not in name:
                param.requires_grad = False
    else:
        ns: dict = {}
        exec(compile(text, f"<{trainer} hook>", "exec"), ns)
        assert ns["freeze"](model) == len(ns["FROZEN_NAMES"])
    return {n for n, p in model.named_parameters() if not p.requires_grad}


@pytest.mark.parametrize("family", list(SPECS))
def test_every_trainer_fragment_freezes_exactly_the_show_set(family, models, capsys):
    ckpt, model = models[family]
    with Checkpoint(ckpt) as c:
        all_names = c.canonical_names()
        adapter = c.adapter
    loaded = {n for n, _ in model.named_parameters()}
    assert {adapter.to_layout(n, "transformers5") for n in all_names} == loaded  # in-memory names, both ways
    for spec in SPECS[family]:
        expected = _show_names(capsys, ckpt, spec)
        assert expected == set(parse_freeze(spec, adapter).select(adapter, all_names))
        assert expected and expected < loaded
        for trainer in TRAINERS:
            text = _cli(capsys, "freeze", "emit", str(ckpt), "--frozen", spec, "--emit", trainer)
            assert _frozen_by(trainer, text, model) == expected, (family, spec, trainer)
    model.requires_grad_(True)


def test_native_option_only_where_it_freezes_the_same_set(models, capsys):
    def kind(family: str, spec: str, trainer: str) -> str:
        text = _cli(capsys, "freeze", "emit", str(models[family][0]), "--frozen", spec, "--emit", trainer)
        return "hook" if "def freeze(model):" in text else "native"

    # Qwen-VL: vision tower + merger is exactly model.model.visual and exactly "not language_model / lm_head"
    assert [kind("qwen2_5_vl", "vision,projector", t) for t in TRAINERS] == ["native"] * 3 + ["hook"]
    # the merger alone is not the whole tower: every native option would freeze too much
    assert {kind("qwen2_5_vl", "vision", t) for t in TRAINERS} == {"hook"}
    # LLaVA has no model.visual (verl/EasyR1 print "No vision tower found"); OpenRLHF's name rule still fits
    assert [kind("llava", "vision,projector", t) for t in TRAINERS] == ["hook", "hook", "native", "hook"]
    assert {kind("qwen2", "late", t) for t in TRAINERS} == {"hook"}


def test_hook_refuses_a_model_whose_names_differ(models, capsys):
    import torch

    ckpt, model = models["qwen2_5_vl"]
    text = _cli(capsys, "freeze", "emit", str(ckpt), "--frozen", "late", "--emit", "trl-deepspeed")
    ns: dict = {}
    exec(text, ns)
    wrapped = torch.nn.ModuleDict({"module": model})  # names gain a "module." prefix, as under a wrapper
    model.requires_grad_(True)
    with pytest.raises(RuntimeError, match="names differ"):
        ns["freeze"](wrapped)
    assert all(p.requires_grad for p in model.parameters())  # nothing half-frozen


def test_bad_emit_options_exit_2(models, capsys):
    ckpt = str(models["qwen2"][0])
    for extra in (["--emit", "deepspeed"], ["--emit", "verl", "--layout", "hub"]):
        with pytest.raises(SystemExit) as exc:
            main(["freeze", "emit", ckpt, "--frozen", "late", *extra])
        assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err
    # regex and list are unchanged by the new formats
    rx = _cli(capsys, "freeze", "emit", ckpt, "--frozen", "late", "--emit", "regex").strip()
    assert rx == r"^(?:model\.layers\.4\.|model\.layers\.5\.)"
