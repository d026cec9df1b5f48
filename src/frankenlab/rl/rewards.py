"""Verifiable rewards for GRPO, built on :mod:`frankenlab.grading`, in TRL's reward-function shape.

TRL calls a reward function with the prompts, the sampled completions and every other dataset column
as keyword lists, and reads ``None`` as "cannot grade this one" (left out of the mean rather than
scored 0). A missing gold answer is such a case; an empty or rambling completion is simply wrong.
Counters live on the instance so a run can report how many completions were ungradable.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from frankenlab.errors import FrankenlabError, GradingError
from frankenlab.grading import grade

__all__ = ["MODES", "ExactMatchReward", "completion_text"]

log = logging.getLogger(__name__)

MODES = ("strict", "lenient")
# Mini-world answer types → the grading vocabulary; grading's own names pass through, anything else infers.
_GRADE_TYPE = {"int": "numeric", "str": "text", "choice": "mcq", "mcq": "mcq", "numeric": "numeric",
               "text": "text", "math": "math"}


def completion_text(completion: Any) -> str:
    """The text of one TRL completion: a plain string, or chat messages (conversational datasets)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence):
        parts = []
        for message in completion:
            content = message.get("content", "") if isinstance(message, dict) else message
            if isinstance(content, list):  # structured parts
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            parts.append(str(content or ""))
        return "".join(parts)
    raise FrankenlabError(f"cannot read a completion of type {type(completion).__name__}; expected str or messages.")


@dataclass
class ExactMatchReward:
    """1.0 for a correct answer, 0.0 for a wrong one, None when there is no usable gold answer.

    ``strict``: the completion, whitespace-stripped, equals the gold exactly (the mini-world's
    format is the bare answer, so this also rewards the format). ``lenient``: :func:`grade` decides
    (answer extraction and normalisation, so "The answer is 5." earns the reward).
    """

    mode: str = "strict"
    n_scored: int = 0
    n_correct: int = 0
    n_ungradable: int = 0
    per_family: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise FrankenlabError(f"unknown reward mode {self.mode!r}; choose one of {list(MODES)}.")
        # TRL names reward columns in its logs after the callable's __name__.
        self.__name__ = f"exact_match_{self.mode}"

    def score(self, response: str, answer: Any, answer_type: str | None = None,
              choices: list[str] | None = None) -> float | None:
        if answer is None or not str(answer).strip():
            return None
        gold = str(answer).strip()
        text = response.strip()
        if self.mode == "strict":
            return float(text == gold)
        try:
            verdict = grade(text, gold, list(choices) if choices else None,
                            answer_type=_GRADE_TYPE.get(answer_type or ""), use_math_verify=False)
        except GradingError as exc:
            log.warning("ungradable completion for gold %r: %s", gold, exc)
            return None
        return float(verdict.correct)

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[Any] | None = None,
                 answer_type: Sequence[str | None] | None = None, family: Sequence[str] | None = None,
                 choices: Sequence[list[str] | None] | None = None, **_: Any) -> list[float | None]:
        if answer is None:
            raise FrankenlabError("the RL dataset has no 'answer' column; every row needs its gold answer.")
        n = len(completions)
        types = answer_type if answer_type is not None else [None] * n
        fams = family if family is not None else ["all"] * n
        opts = choices if choices is not None else [None] * n
        rewards: list[float | None] = []
        for completion, gold, kind, fam, opt in zip(completions, answer, types, fams, opts, strict=True):
            r = self.score(completion_text(completion), gold, kind, opt)
            rewards.append(r)
            if r is None:
                self.n_ungradable += 1
                continue
            self.n_scored += 1
            self.n_correct += int(r > 0)
            tally = self.per_family.setdefault(str(fam), [0, 0])
            tally[0] += int(r > 0)
            tally[1] += 1
        return rewards

    def summary(self) -> dict[str, Any]:
        """Counts for the run manifest: scored, correct, ungradable, per-family mean reward."""
        return {
            "mode": self.mode,
            "scored": self.n_scored,
            "correct": self.n_correct,
            "ungradable": self.n_ungradable,
            "mean_reward": self.n_correct / self.n_scored if self.n_scored else None,
            "per_family": {f: k / n for f, (k, n) in sorted(self.per_family.items()) if n},
        }
