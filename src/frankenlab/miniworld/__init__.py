"""The mini-world: procedural visual-reasoning tasks and built-in probe pairs for the demo study."""

from frankenlab.miniworld.probe_pairs import (
    PROBE_TASKS,
    load_probe_pairs,
    make_probe_pairs,
    write_probe_pairs,
)
from frankenlab.miniworld.tasks import (
    ABILITY_OF,
    ANSWER_TYPES,
    FAMILIES,
    SPLITS,
    TaskItem,
    export_tasks,
    make_item,
    make_split,
    miniworld_task,
)

__all__ = [
    "ABILITY_OF",
    "ANSWER_TYPES",
    "FAMILIES",
    "PROBE_TASKS",
    "SPLITS",
    "TaskItem",
    "export_tasks",
    "load_probe_pairs",
    "make_item",
    "make_split",
    "make_probe_pairs",
    "miniworld_task",
    "write_probe_pairs",
]
