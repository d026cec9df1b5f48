"""RL with verifiable rewards (TRL's GRPOTrainer), with block freezing proven on the saved checkpoint.

TRL is an optional dependency (``pip install 'frankenlab[rl]'``); it is imported only when training runs.
"""

from frankenlab.rl.grpo import GRPORun, GRPOSettings, deterministic, rl_dataset, run_rl, train_grpo
from frankenlab.rl.rewards import ExactMatchReward, completion_text

__all__ = [
    "ExactMatchReward",
    "GRPORun",
    "GRPOSettings",
    "completion_text",
    "deterministic",
    "rl_dataset",
    "run_rl",
    "train_grpo",
]
