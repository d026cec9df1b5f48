"""Evaluation: image / black / described settings, resumable batched runs, M_vis, M_v2r, M_rea, pass@k.

``datasets``, ``vllm`` and HTTP endpoints are touched only when a task, backend or describer needs them.
"""

from frankenlab.eval.config import SETTINGS, TEXT_SETTING, EvalConfig, parse_settings
from frankenlab.eval.describe import (
    DEFAULT_DESCRIBE_PROMPT,
    DescriptionResult,
    EndpointDescriber,
    LocalDescriber,
    read_descriptions,
    resolve_descriptions,
)
from frankenlab.eval.endpoint import Endpoint, JsonlCache
from frankenlab.eval.judge import JudgeVerdict, LLMJudge
from frankenlab.eval.metrics import Comparison, MetricResult, accuracy, compare_paired, m_rea, m_v2r, m_vis
from frankenlab.eval.models import label_models
from frankenlab.eval.passk import PASSK_COLUMNS, k_values, pass_at_k, passk_table, sample_seed
from frankenlab.eval.run import EvalResult, ProgressEvent, evaluate
from frankenlab.eval.settings import black_like, build_prompt, question_text, settings_for

__all__ = [
    "DEFAULT_DESCRIBE_PROMPT",
    "PASSK_COLUMNS",
    "SETTINGS",
    "TEXT_SETTING",
    "Comparison",
    "DescriptionResult",
    "Endpoint",
    "EndpointDescriber",
    "EvalConfig",
    "EvalResult",
    "JsonlCache",
    "JudgeVerdict",
    "LLMJudge",
    "LocalDescriber",
    "MetricResult",
    "ProgressEvent",
    "accuracy",
    "black_like",
    "build_prompt",
    "compare_paired",
    "evaluate",
    "k_values",
    "label_models",
    "m_rea",
    "m_v2r",
    "m_vis",
    "parse_settings",
    "pass_at_k",
    "passk_table",
    "question_text",
    "read_descriptions",
    "resolve_descriptions",
    "sample_seed",
    "settings_for",
]
