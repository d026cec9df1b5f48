"""Load tasks from JSONL, Parquet or a built-in Hugging Face dataset, by path or by name.

A spec is a path (``tasks/test.jsonl``, ``data.parquet``), a built-in name (``mathvista``, ``gsm8k``,
... see :mod:`frankenlab.tasks.registry`), or either prefixed with a name (``counting=data/c.jsonl``).
A task is named by its prefix, else its registered name, else the file stem; names must be unique in
one evaluation because results are keyed by them. ``datasets`` is imported only for built-ins, and
an offline machine or a missing dataset gives a TaskError saying what to download and where it goes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from frankenlab.errors import TaskError
from frankenlab.io.jsonl import iter_jsonl
from frankenlab.tasks.registry import DEFAULT_GENERATED_ITEMS, HFTaskSpec, expand, generator_for, get_spec
from frankenlab.tasks.schema import Task, TaskItem, item_from_row

__all__ = ["load_generated", "load_hf", "load_jsonl", "load_parquet", "load_task", "load_tasks", "parse_task_specs"]

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def _file_version(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()[:16]


def _build(name: str, source: str, version: str, rows: Iterable[tuple[str, dict[str, Any]]],
           base: Path | None) -> Task:
    items: list[TaskItem] = []
    first_seen: dict[str, str] = {}
    for index, (where, row) in enumerate(rows):
        item = item_from_row(row, base=base, where=where, index=index)
        if item.id in first_seen:
            raise TaskError(f"{where}: id {item.id!r} already used ({first_seen[item.id]}); ids must be unique.")
        first_seen[item.id] = where
        items.append(item)
    if not items:
        raise TaskError(f"task {name!r} ({source}) has no items.")
    return Task(name=name, items=tuple(items), source=source, version=version)


def load_jsonl(path: str | os.PathLike[str], name: str | None = None) -> Task:
    """One object a line; image paths are relative to the file (the mini-world's export format as-is)."""
    p = Path(path)
    if not p.is_file():
        raise TaskError(f"task file {p} does not exist; pass a .jsonl/.parquet path or a built-in task name.")

    def rows() -> Iterable[tuple[str, dict[str, Any]]]:
        for lineno, row in iter_jsonl(p, error=TaskError, what="a task file"):
            yield f"{p}, line {lineno}", row

    return _build(name or p.stem, str(p.resolve()), _file_version(p), rows(), p.resolve().parent)


def load_parquet(path: str | os.PathLike[str], name: str | None = None) -> Task:
    """Columns as in JSONL; ``image`` may be a relative path, bytes, or a datasets-style {bytes, path} struct."""
    p = Path(path)
    if not p.is_file():
        raise TaskError(f"task file {p} does not exist; pass a .jsonl/.parquet path or a built-in task name.")
    import pyarrow.parquet as pq

    try:
        records = pq.read_table(p).to_pylist()
    except (OSError, ValueError) as exc:
        raise TaskError(f"{p} cannot be read as Parquet ({exc}).") from exc
    rows = ((f"{p}, row {i}", r) for i, r in enumerate(records))
    return _build(name or p.stem, str(p.resolve()), _file_version(p), rows, p.resolve().parent)


def _offline_hint(spec: HFTaskSpec) -> str:
    config = f", {spec.config!r}" if spec.config else ""
    home = os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface"))
    return (f"To use it offline: on a machine with internet run `python -c \"import datasets; datasets.load_dataset("
            f"'{spec.dataset_id}'{config}, split='{spec.split}')\"`, then copy that machine's Hugging Face cache "
            f"(its $HF_HOME, by default ~/.cache/huggingface) to {home} here; or save the split as JSONL/Parquet "
            f"(see {spec.url}) and pass that path instead of {spec.name!r}.")


def _hf_rows(spec: HFTaskSpec, load_dataset: Callable[..., Any] | None) -> Any:
    if load_dataset is None:
        try:
            from datasets import load_dataset
        except ImportError as exc:
            raise TaskError(f"task {spec.name!r} needs the `datasets` package (pip install datasets). "
                            + _offline_hint(spec)) from exc
    offline = any(os.environ.get(v, "").lower() in ("1", "true", "yes")
                  for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    try:
        return load_dataset(spec.dataset_id, spec.config, split=spec.split)
    except Exception as exc:  # datasets raises connection, not-found and cache errors of many types
        state = " with HF_HUB_OFFLINE set" if offline else ""
        raise TaskError(f"task {spec.name!r}: dataset {spec.dataset_id} (config {spec.config}, split {spec.split}) "
                        f"is not available{state} ({type(exc).__name__}: {str(exc)[:200]}). "
                        + _offline_hint(spec)) from exc


def load_hf(names: Sequence[str], *, load_dataset: Callable[..., Any] | None = None) -> list[Task]:
    """Built-in tasks; tasks sharing a dataset split (MathVista's two categories) load it once.

    ``load_dataset`` replaces ``datasets.load_dataset`` (tests, or a custom loader with the same signature).
    """
    specs = [get_spec(n) for n in names]
    loaded: dict[tuple[str, str | None, str], Any] = {}
    tasks = []
    for spec in specs:
        key = (spec.dataset_id, spec.config, spec.split)
        if key not in loaded:
            loaded[key] = _hf_rows(spec, load_dataset)
        data = loaded[key]
        fingerprint = getattr(data, "_fingerprint", None) or "unversioned"
        rows = []
        for index, raw in enumerate(data):
            row = spec.convert(raw, index)
            if row is not None:
                rows.append((f"{spec.dataset_id} {spec.split}, row {index}", row))
        source = f"hf:{spec.dataset_id}" + (f":{spec.config}" if spec.config else "") + f":{spec.split}"
        tasks.append(_build(spec.name, source, f"datasets:{fingerprint}", rows, None))
    return tasks


def parse_task_specs(specs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[tuple[str | None, str]]:
    """``"a.jsonl,gsm8k,name=b.parquet"`` → [(None, "a.jsonl"), (None, "gsm8k"), ("name", "b.parquet")]."""
    parts: list[str] = []
    for s in [specs] if isinstance(specs, (str, os.PathLike)) else list(specs):
        parts.extend(p.strip() for p in str(s).split(",") if p.strip())
    if not parts:
        raise TaskError("no tasks given; pass --tasks with a .jsonl/.parquet path or a built-in name.")
    out: list[tuple[str | None, str]] = []
    for part in parts:
        name, sep, rest = part.partition("=")
        if sep and name and set(name) <= _NAME_CHARS and not Path(part).exists():
            out.append((name, rest))
        else:
            out.append((None, part))
    return out


def _is_file_spec(spec: str) -> bool:
    """A task file by its suffix or because it is one; a *directory* named like a task (a `miniworld/`
    build folder in the working directory) does not shadow the built-in or generated name."""
    return spec.endswith((".jsonl", ".json", ".parquet")) or Path(spec).is_file()


def load_generated(spec: str, *, n: int | None = None, seed: int = 0, name: str | None = None) -> Task | None:
    """A generated task (``miniworld``, ``miniworld:FAMILY``, or a plugin's prefix) of ``n`` items, or None
    when ``spec`` names no generator."""
    found = generator_for(spec)
    if found is None:
        return None
    gen, variant = found
    count = DEFAULT_GENERATED_ITEMS if n is None else n
    if count < 1:
        raise TaskError(f"{spec}: a generated task needs at least 1 item, got {count}.")
    task = gen.make(variant, count, seed)
    return task if name is None else Task(name, task.items, task.source, task.version)


def load_task(spec: str | os.PathLike[str], *, name: str | None = None, n_generated: int | None = None,
              seed: int = 0) -> Task:
    """One task from a path, a generator spec or a built-in (non-group) name."""
    text = str(spec)
    generated = None if _is_file_spec(text) else load_generated(text, n=n_generated, seed=seed, name=name)
    if generated is not None:
        return generated
    if _is_file_spec(text):
        return load_parquet(text, name) if text.endswith(".parquet") else load_jsonl(text, name)
    (task,) = load_hf([get_spec(text).name])
    return task if name is None else Task(name, task.items, task.source, task.version)


def load_tasks(specs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *,
               load_dataset: Callable[..., Any] | None = None, n_generated: int | None = None,
               seed: int = 0) -> list[Task]:
    """Every task of a comma-separated spec list, groups expanded; TaskError on duplicate task names.

    Generated tasks (``miniworld:digit_arith``) make ``n_generated`` items (default
    :data:`~frankenlab.tasks.registry.DEFAULT_GENERATED_ITEMS`) from ``seed``.
    """
    tasks: list[Task] = []
    hf_names: list[tuple[str | None, str]] = []
    order: list[tuple[str, int]] = []  # ("file", index into tasks) or ("hf", index into hf_names)
    for name, spec in parse_task_specs(specs):
        generated = None if _is_file_spec(spec) else load_generated(spec, n=n_generated, seed=seed, name=name)
        if generated is not None:
            tasks.append(generated)
            order.append(("file", len(tasks) - 1))
        elif _is_file_spec(spec):
            tasks.append(load_task(spec, name=name))
            order.append(("file", len(tasks) - 1))
        else:
            parts = expand(spec)
            if name is not None and len(parts) > 1:
                raise TaskError(f"{name}={spec}: {spec!r} is a group of {len(parts)} tasks and cannot take one name.")
            for part in parts:
                hf_names.append((name, part))
                order.append(("hf", len(hf_names) - 1))
    hf_tasks = load_hf([n for _, n in hf_names], load_dataset=load_dataset) if hf_names else []
    out: list[Task] = []
    for kind, i in order:
        if kind == "file":
            out.append(tasks[i])
        else:
            alias, _ = hf_names[i]
            t = hf_tasks[i]
            out.append(t if alias is None else Task(alias, t.items, t.source, t.version))
    names = [t.name for t in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise TaskError(f"task names {dupes} are used twice (file stems collide?); name them, e.g. "
                        f"'{dupes[0]}_a=path/{dupes[0]}.jsonl'.")
    return out
