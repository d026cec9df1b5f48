"""Evaluation tasks: typed items, loaders (JSONL, Parquet, Hugging Face datasets) and built-in names."""

from frankenlab.tasks.loaders import load_hf, load_jsonl, load_parquet, load_task, load_tasks, parse_task_specs
from frankenlab.tasks.registry import GROUPS, TASKS, HFTaskSpec, known_names
from frankenlab.tasks.schema import Task, TaskItem, item_from_row, normalize_answer_type

__all__ = [
    "GROUPS",
    "TASKS",
    "HFTaskSpec",
    "Task",
    "TaskItem",
    "item_from_row",
    "known_names",
    "load_hf",
    "load_jsonl",
    "load_parquet",
    "load_task",
    "load_tasks",
    "normalize_answer_type",
    "parse_task_specs",
]
