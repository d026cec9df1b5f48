"""`frankenlab rl`: GRPO (TRL) on a checkpoint, optionally with blocks frozen, verified after saving."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console


def rl_cmd(
    model: Annotated[str, typer.Argument(help="Checkpoint directory to start from (model + processor).")],
    tasks: Annotated[list[str], typer.Option("--tasks", help="Task file(s) (.jsonl/.parquet, frankenlab task "
                                                            "format; image and text-only rows may mix) or built-in "
                                                            "task names; repeatable or comma-separated.")],
    out: Annotated[Path, typer.Option("--out", help="Output directory for the trained checkpoint.")],
    freeze: Annotated[str | None, typer.Option("--freeze", help="Region(s) kept frozen: early, mid, late, vision, "
                                                              "projector, llm:2-3, ... (comma-separated).")] = None,
    cuts: Annotated[str | None, typer.Option(help="LLM partition cuts, e.g. '2,4' (default: thirds).")] = None,
    steps: Annotated[int, typer.Option(help="GRPO steps.")] = 100,
    lr: Annotated[float, typer.Option(help="Learning rate (constant); tiny models collapse above ~3e-4.")] = 1e-4,
    prompts_per_step: Annotated[int, typer.Option(help="Prompts per step (one kind, image or text, per step).")]
    = 16,
    num_generations: Annotated[int, typer.Option(help="Completions per prompt (the GRPO group).")] = 4,
    max_completion_length: Annotated[int, typer.Option(help="Longest completion in tokens.")] = 6,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 1.0,
    beta: Annotated[float, typer.Option(help="KL coefficient (0: no reference model).")] = 0.0,
    reward: Annotated[str, typer.Option(help="'strict' (exact string) or 'lenient' (frankenlab grading).")]
    = "strict",
    seed: Annotated[int, typer.Option(help="Seed of sampling and data order.")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out if it exists.")] = False,
    threads: Annotated[int, typer.Option("--threads", min=1, help="torch threads for training (default 1: the run "
                                                               "is then bit-reproducible on one machine).")] = 1,
    device: Annotated[str, typer.Option("--device", help="auto (the GPU when there is one), cpu, cuda or cuda:N; "
                                                         "training is fp32 on every device.")] = "auto",
) -> None:
    """Run GRPO with a verifiable exact-match reward; frozen tensors are checked bit-identical on disk."""
    import json

    from frankenlab.rl import GRPOSettings, run_rl
    from frankenlab.runtime.devices import resolve_device

    device = resolve_device(device)  # a missing GPU fails before the model is read

    settings = GRPOSettings(steps=steps, lr=lr, prompts_per_step=prompts_per_step, num_generations=num_generations,
                            max_completion_length=max_completion_length, temperature=temperature, beta=beta,
                            seed=seed, reward=reward, threads=threads)
    con = Console(stderr=True)
    with con.status(f"GRPO on {model}: {steps} steps" + (f", {freeze} frozen" if freeze else "")
                    + ("" if device == "cpu" else f" on {device}")):
        path = run_rl(model, tasks, out, settings, freeze=freeze, cuts=cuts, overwrite=overwrite, device=device)
    record = json.loads((path / "rl_run.json").read_text(encoding="utf-8"))
    rew = record["reward"]
    mean = rew["mean_reward"]
    con.print(f"wrote {path}: {rew['scored']} completions scored, mean reward "
              f"{'n/a' if mean is None else f'{mean:.3f}'}, {rew['ungradable']} ungradable")
    check = record.get("freeze_verified")
    if check:
        con.print(f"freeze verified: {check['frozen_identical']} frozen tensors bit-identical, "
                  f"{check['other_changed']} trainable tensors changed")
