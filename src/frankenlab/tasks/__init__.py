"""Evaluation tasks: typed items, loaders (JSONL, Parquet, Hugging Face datasets, generators) and built-in names."""

from frankenlab.tasks.loaders import (
    load_generated,
    load_hf,
    load_jsonl,
    load_parquet,
    load_task,
    load_tasks,
    parse_task_specs,
)
from frankenlab.tasks.pairs import PROBE_TASKS, load_probe_pairs
from frankenlab.tasks.registry import GROUPS, TASKS, GeneratedTaskSpec, HFTaskSpec, known_names, register_generator
from frankenlab.tasks.schema import Task, TaskItem, item_from_row, normalize_answer_type

__all__ = [
    "GROUPS",
    "PROBE_TASKS",
    "TASKS",
    "GeneratedTaskSpec",
    "HFTaskSpec",
    "Task",
    "TaskItem",
    "item_from_row",
    "known_names",
    "load_generated",
    "load_hf",
    "load_jsonl",
    "load_parquet",
    "load_probe_pairs",
    "load_task",
    "load_tasks",
    "normalize_answer_type",
    "parse_task_specs",
    "register_generator",
]
