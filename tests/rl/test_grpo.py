"""GRPO through TRL: frozen blocks stay bit-identical on the saved checkpoint, the rest moves, runs repeat exactly."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("trl", reason="GRPO needs TRL: pip install 'frankenlab[rl]'")

from frankenlab.errors import FrankenlabError, RegionError  # noqa: E402
from frankenlab.freeze import verify_frozen  # noqa: E402
from frankenlab.miniworld import export_tasks, make_split  # noqa: E402
from frankenlab.rl import GRPOSettings, rl_dataset, run_rl  # noqa: E402
from tests.rl._world import sft_world  # noqa: E402

# Count questions have six plausible answers: after a little SFT, sampled groups of four are mixed right and
# wrong, so every step has a non-zero advantage and every trainable tensor gets a gradient.
SETTINGS = GRPOSettings(steps=3, prompts_per_step=2, num_generations=4, lr=1e-4, max_completion_length=4)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root, tasks = sft_world(tmp_path_factory.mktemp("grpo"))
    text_tasks = export_tasks(make_split(4, 1, ["text_arith"]), root / "tasks", "text")
    return root, tasks, text_tasks


def _bytes(path) -> bytes:
    return (path / "model.safetensors").read_bytes()


def test_frozen_late_is_bit_identical_and_the_rest_changed(world):
    root, tasks, _ = world
    out = run_rl(root / "in", [tasks], root / "rl-late", SETTINGS, freeze="late")
    check = verify_frozen(str(root / "in"), str(out), "late")
    assert check.ok and check.frozen_identical
    assert all(".layers.4." in n or ".layers.5." in n for n in check.frozen_identical)
    changed = set(check.other_changed)
    for layer in range(4):  # early and mid thirds of 6 layers
        for module in ("self_attn.q_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
                       "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"):
            assert f"model.language_model.layers.{layer}.{module}" in changed
    assert any(n.startswith("model.visual.blocks.") for n in changed)  # RL trains the vision tower too
    record = json.loads((out / "rl_run.json").read_text())
    assert record["freeze_verified"]["ok"] and record["freeze"] == "late"
    assert record["reward"]["scored"] == SETTINGS.steps * SETTINGS.prompts_per_step * SETTINGS.num_generations
    assert record["trainable_params"] > 0 and record["frozen_params"] > 0


def test_grpo_is_bit_reproducible(world):
    root, tasks, _ = world
    a = run_rl(root / "in", [tasks], root / "rl-a", SETTINGS)
    b = run_rl(root / "in", [tasks], root / "rl-b", SETTINGS)
    assert _bytes(a) == _bytes(b)
    assert _bytes(a) != _bytes(root / "in")
    c = run_rl(root / "in", [tasks], root / "rl-c", GRPOSettings(**{**SETTINGS.__dict__, "seed": 1}))
    assert _bytes(c) != _bytes(a)


def test_freeze_that_matches_nothing_is_refused(world):
    root, tasks, _ = world
    with pytest.raises(RegionError):
        run_rl(root / "in", [tasks], root / "rl-bad", SETTINGS, freeze="llm:7-9")
    assert not (root / "rl-bad").exists()


def test_existing_output_is_refused(world):
    root, tasks, _ = world
    with pytest.raises(FrankenlabError, match="already exists"):
        run_rl(root / "in", [tasks], root / "in", SETTINGS)
    with pytest.raises(FrankenlabError, match="at least one"):
        rl_dataset([])


def test_dataset_blocks_never_mix_image_and_text_prompts():
    items = make_split(10, 0, ["count"]) + make_split(7, 0, ["text_arith"])
    ds = rl_dataset(items, block=3, seed=0)
    assert len(ds) == 9 + 6  # 10 image rows fill 3 blocks, 7 text rows fill 2
    kinds = [len(row) > 0 for row in ds["images"]]
    blocks = [kinds[i : i + 3] for i in range(0, len(kinds), 3)]
    assert all(len(set(b)) == 1 for b in blocks)
    assert sum(b[0] for b in blocks) == 3
    assert rl_dataset(items, block=3, seed=0)["answer"] == ds["answer"]  # seeded order
    with pytest.raises(FrankenlabError, match="cannot fill one step"):
        rl_dataset(items[:2], block=3)


def test_mixed_image_and_text_tasks_train(world):
    root, tasks, text_tasks = world
    settings = GRPOSettings(**{**SETTINGS.__dict__, "steps": 10})  # every block of 8 image + 2 text
    out = run_rl(root / "in", [tasks, text_tasks], root / "rl-mixed", settings)
    families = json.loads((out / "rl_run.json").read_text())["reward"]["per_family"]
    assert set(families) == {"count", "text_arith"}


def test_settings_are_validated():
    with pytest.raises(FrankenlabError, match=">= 2 samples"):
        GRPOSettings(num_generations=1)
    with pytest.raises(FrankenlabError, match="collapse"):
        GRPOSettings(lr=0.5)
    with pytest.raises(FrankenlabError, match="unknown reward"):
        GRPOSettings(reward="fuzzy")


def test_cli_rl_with_freeze(world, capsys):
    from frankenlab.cli.app import main

    root, tasks, _ = world
    with pytest.raises(SystemExit) as exc:
        main(["rl", str(root / "in"), "--tasks", str(tasks), "--freeze", "early", "--out", str(root / "cli-rl"),
              "--steps", "2", "--prompts-per-step", "2"])
    assert exc.value.code == 0, capsys.readouterr().err
    assert verify_frozen(str(root / "in"), str(root / "cli-rl"), "early").ok
    with pytest.raises(SystemExit) as exc:
        main(["rl", str(root / "in"), "--tasks", str(tasks), "--freeze", "nowhere", "--out", str(root / "x")])
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_train_grpo_restores_requires_grad(world):
    from frankenlab.miniworld import make_split as split
    from frankenlab.rl import train_grpo
    from frankenlab.runtime.load import load

    root, _, _ = world
    model, proc = load(root / "in", attn_implementation="eager")
    model.lm_head.weight.requires_grad_(False)
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    run = train_grpo(model, proc, split(8, 2, ["count"]), GRPOSettings(**{**SETTINGS.__dict__, "steps": 1}),
                     freeze="late")
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert run.frozen_names and all(".layers.4." in n or ".layers.5." in n for n in run.frozen_names)
    assert not model.training
