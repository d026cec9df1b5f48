"""Optional LLM judge: an OpenAI-compatible model at temperature 0 reads the full response and the gold.

Rule-based grading (:func:`frankenlab.grading.grade`) stays the default and is always recorded; with a
judge, the judge's verdict decides (``decided_by = "llm_judge"``) and the rule verdict is kept next to
it, so the two can be compared item by item. Verdicts are cached by (judge, question, gold, response).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from frankenlab.errors import EvalError
from frankenlab.eval.endpoint import Endpoint, JsonlCache, stable_key

__all__ = ["JUDGE_PROMPT", "JudgeVerdict", "LLMJudge", "parse_judgement"]

JUDGE_PROMPT = """You are grading a model's response to a question against the reference answer.

Question:
{question}
{choices}
Reference answer: {answer}

Model response (complete):
<<<
{response}
>>>

Decide whether the final answer in the model response is equivalent to the reference answer (the same
value, option or meaning; formatting and units written differently do not matter; a response that gives
several different final answers is incorrect). Reply with one word: CORRECT or INCORRECT."""

_VERDICT_RE = re.compile(r"\b(INCORRECT|CORRECT)\b", re.IGNORECASE)


@dataclass(frozen=True)
class JudgeVerdict:
    correct: bool
    raw: str


def parse_judgement(text: str) -> bool:
    """The last CORRECT/INCORRECT in the judge's reply (judges that think first end with the verdict)."""
    found = _VERDICT_RE.findall(text)
    if not found:
        raise EvalError(f"the judge answered neither CORRECT nor INCORRECT: {text[:200]!r}")
    return found[-1].upper() == "CORRECT"


class LLMJudge:
    """``judge(question, answer, response, choices)`` → JudgeVerdict; EvalError when it cannot decide."""

    def __init__(self, endpoint: Endpoint, *, prompt: str = JUDGE_PROMPT, max_tokens: int = 256,
                 cache_path: str | os.PathLike[str] | None = None) -> None:
        self.endpoint, self.prompt, self.max_tokens = endpoint, prompt, max_tokens
        self.key = "judge:" + stable_key(endpoint.identity(), prompt, max_tokens)
        self.cache = JsonlCache(cache_path)

    def judge(self, question: str, answer: str, response: str,
              choices: Sequence[str] | None = None) -> JudgeVerdict:
        ck = stable_key(self.key, question, answer, response, list(choices or []))
        raw = self.cache.get(ck)
        if raw is None:
            options = ""
            if choices:
                options = "Options:\n" + "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(choices)) + "\n"
            text = self.prompt.format(question=question, choices=options, answer=answer, response=response)
            raw = self.endpoint.chat([{"role": "user", "content": text}], max_tokens=self.max_tokens)
            correct = parse_judgement(raw)  # only parseable verdicts are cached
            self.cache.put(ck, raw)
            return JudgeVerdict(correct, raw)
        return JudgeVerdict(parse_judgement(raw), raw)
