"""`frankenlab demo`: the study on the built-in mini-world pair, from nothing, offline."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from frankenlab.study.config import StudyConfig, parse_config

DEFAULT_OUT = "frankenlab-demo"


def demo_config(out: Path, pair: Path, threads: int | None = None) -> StudyConfig:
    """Sample sizes chosen so the study takes a few minutes on two CPU cores."""
    return parse_config({
        "out": str(out / "study"),
        "recipes": [{"name": "miniworld", "in": str(pair / "in"), "rl": str(pair / "rl")}],
        # IN + the best rank-8 approximation of ΔRL in every decoder matrix (hidden size 64): does the gain survive?
        "custom_variants": [{"name": "rank8", "recipe": "IN:IN:IN", "rank": {"early": 8, "mid": 8, "late": 8}}],
        "probe": {"pairs": str(pair / "probe-pairs" / "pairs.jsonl"), "n_per_task": 16,
                  "ablate_tasks": None, "ablate_limit": 48, "max_new_tokens": 6},
        "eval": {"tasks": [str(pair / "tasks" / "test.jsonl")], "limit": 800, "max_new_tokens": 8,
                 "batch_size": 32, "samples": 8, "sample_limit": 64},
        "freeze": {"table": str(pair / "necessity.csv")},
        "threads": threads,
    }, "demo")


def ensure_pair(out: Path, progress: Any = None) -> Path:
    """The mini-world IN/RL pair under OUT/miniworld, trained once (reused on later runs)."""
    from frankenlab.miniworld.build import build_miniworld

    pair = out / "miniworld"
    if not (pair / "build.json").exists():
        build_miniworld(pair, overwrite=pair.exists(), progress=progress)
    return pair


def default_out() -> Path:
    return Path(os.environ.get("FRANKENLAB_DEMO_OUT", DEFAULT_OUT))
