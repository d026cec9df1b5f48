"""Text descriptions of images for the "black image + description" setting, resolved once per run.

Sources, in the order a run consults them: the run's own ``descriptions.jsonl`` (a resumed run never
re-describes), then the chosen source:

* None: the item's ``description`` field (mini-world tasks carry one);
* a JSONL path: rows ``{"id", "description"}`` (optionally ``"task"``), e.g. an earlier run's
  ``descriptions.jsonl``, so a whole study shares one set;
* a describer: an OpenAI-compatible endpoint (:class:`EndpointDescriber`) or a local model
  (:class:`LocalDescriber`), each with a cache keyed by describer and image content.

Every model of a run reads the same resolved text. Static sources must cover every image item (an
EvalError lists the missing ids before anything runs); a describer's per-item failure is kept and
turns that item's described record into a counted failure.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from frankenlab.errors import EvalError
from frankenlab.eval.endpoint import Endpoint, JsonlCache, image_data_url, stable_key
from frankenlab.io import write_text
from frankenlab.io.jsonl import iter_jsonl
from frankenlab.runtime.generate import GenerationSettings, Prompt
from frankenlab.tasks.schema import Task, TaskItem

__all__ = ["DEFAULT_DESCRIBE_PROMPT", "Describer", "DescriptionResult", "EndpointDescriber", "LocalDescriber",
           "read_descriptions", "resolve_descriptions"]

_CHUNK = 32  # items per describer call between progress reports (and store checkpoints via the caches)
DEFAULT_DESCRIBE_PROMPT = ("Describe this image in detail: every object, its color, shape and position, every "
                           "number, label and piece of text, so that someone who cannot see the image could "
                           "answer questions about it.")


@dataclass(frozen=True)
class DescriptionResult:
    text: str | None
    error: str | None = None


class Describer(Protocol):
    key: str

    def describe(self, items: Sequence[TaskItem]) -> list[DescriptionResult]: ...


def _image_key(item: TaskItem) -> str:
    image = item.load_image()
    return hashlib.sha256(f"{image.size}".encode() + image.tobytes()).hexdigest()[:32]


class EndpointDescriber:
    """One chat request per image (temperature 0), cached by (describer, image content)."""

    def __init__(self, endpoint: Endpoint, *, prompt: str = DEFAULT_DESCRIBE_PROMPT, max_tokens: int = 512,
                 cache_path: str | os.PathLike[str] | None = None) -> None:
        self.endpoint, self.prompt, self.max_tokens = endpoint, prompt, max_tokens
        self.key = "endpoint:" + stable_key(endpoint.identity(), prompt, max_tokens)
        self.cache = JsonlCache(cache_path)

    def describe(self, items: Sequence[TaskItem]) -> list[DescriptionResult]:
        out = []
        for item in items:
            ck = stable_key(self.key, _image_key(item))
            if ck in self.cache:
                out.append(DescriptionResult(self.cache.get(ck)))
                continue
            content = [{"type": "text", "text": self.prompt},
                       {"type": "image_url", "image_url": {"url": image_data_url(item.load_image())}}]
            try:
                text = self.endpoint.chat([{"role": "user", "content": content}], max_tokens=self.max_tokens).strip()
            except EvalError as exc:
                out.append(DescriptionResult(None, str(exc)))
                continue
            self.cache.put(ck, text)
            out.append(DescriptionResult(text))
        return out


class LocalDescriber:
    """Descriptions from a local model through a generation backend (e.g. ``HFBackend``), batched.

    Pass a ready ``backend``, or ``load`` (a callable returning one) to load the model only when an
    item needs describing; :meth:`close` releases a model loaded that way.
    """

    def __init__(self, backend: Any = None, *, identity: str, settings: GenerationSettings | None = None,
                 load: Callable[[], Any] | None = None, prompt: str = DEFAULT_DESCRIBE_PROMPT,
                 cache_path: str | os.PathLike[str] | None = None) -> None:
        if (backend is None) == (load is None):
            raise EvalError("LocalDescriber needs exactly one of backend= or load=.")
        self._backend, self._load, self.prompt = backend, load, prompt
        self.settings = backend.settings if backend is not None else (settings or GenerationSettings())
        self.key = "local:" + stable_key(identity, prompt, self.settings.to_dict())
        self.cache = JsonlCache(cache_path)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], *, settings: GenerationSettings, dtype: str | None = None,
                        device: str = "cpu", prompt: str = DEFAULT_DESCRIBE_PROMPT,
                        cache_path: str | os.PathLike[str] | None = None) -> LocalDescriber:
        from frankenlab.checkpoint import Checkpoint
        from frankenlab.runtime.generate import HFBackend
        from frankenlab.runtime.load import load

        with Checkpoint(path) as c:
            identity = f"{c.root}:{c.fingerprint}"

        def make() -> Any:
            model, processor = load(path, dtype=dtype, device=device)
            return HFBackend(model, processor, settings=settings)

        return cls(identity=identity, settings=settings, load=make, prompt=prompt, cache_path=cache_path)

    def close(self) -> None:
        if self._load is not None:
            self._backend = None

    def describe(self, items: Sequence[TaskItem]) -> list[DescriptionResult]:
        keys = [stable_key(self.key, _image_key(it)) for it in items]
        todo = [i for i, k in enumerate(keys) if k not in self.cache]
        results: dict[int, DescriptionResult] = {}
        if todo and self._backend is None:
            self._backend = self._load()  # type: ignore[misc]
        bs = max(1, self.settings.batch_size)
        for start in range(0, len(todo), bs):
            chunk = todo[start:start + bs]
            prompts = [Prompt(self.prompt, items[i].load_image()) for i in chunk]
            try:
                texts = self._backend.generate(prompts)
            except Exception as exc:  # recorded per item; those items' described runs count as failed
                for i in chunk:
                    results[i] = DescriptionResult(None, f"{type(exc).__name__}: {exc}")
                continue
            for i, text in zip(chunk, texts, strict=True):
                self.cache.put(keys[i], text)
        return [results.get(i) or DescriptionResult(self.cache.get(k)) for i, k in enumerate(keys)]


def read_descriptions(path: str | os.PathLike[str]) -> dict[tuple[str | None, str], str]:
    """``{(task or None, id): description}`` from a JSONL file of ``{"id", "description", "task"?}`` rows."""
    p = Path(path)
    if not p.is_file():
        raise EvalError(f"descriptions file {p} does not exist.")
    out: dict[tuple[str | None, str], str] = {}
    for lineno, row in iter_jsonl(p, error=EvalError, what="a descriptions .jsonl file"):
        if not isinstance(row.get("id"), (str, int)):
            raise EvalError(f"{p}, line {lineno}: expected an object with 'id' and 'description'.")
        text = row.get("description")
        if text is None and row.get("error"):
            continue  # a failed description in an earlier run's file
        if not isinstance(text, str) or not text.strip():
            raise EvalError(f"{p}, line {lineno}: 'description' must be a non-empty string.")
        task = row.get("task")
        out[(str(task) if task is not None else None, str(row["id"]))] = text
    return out


def source_key(source: str | os.PathLike[str] | Describer | None) -> str:
    """What results record about where descriptions came from."""
    if source is None:
        return "item-field"
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        digest = hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.is_file() else "missing"
        return f"jsonl:{p.name}:{digest}"
    return str(source.key)


def resolve_descriptions(tasks: Sequence[Task], source: str | os.PathLike[str] | Describer | None,
                         store: str | os.PathLike[str], *,
                         progress: Callable[[int, int], None] | None = None,
                         ) -> dict[tuple[str, str], DescriptionResult]:
    """One description per image item of ``tasks``, keyed by (task, id); successes are saved to ``store``."""
    wanted = [(t.name, it) for t in tasks for it in t.items if it.has_image]
    known = read_descriptions(store) if Path(store).is_file() else {}
    out: dict[tuple[str, str], DescriptionResult] = {}
    todo: list[tuple[str, TaskItem]] = []
    for task, it in wanted:
        text = known.get((task, it.id))
        if text is not None:
            out[(task, it.id)] = DescriptionResult(text)
        else:
            todo.append((task, it))
    if todo and (source is None or isinstance(source, (str, os.PathLike))):
        table = read_descriptions(source) if source is not None else {}
        missing = []
        for task, it in todo:
            text = table.get((task, it.id), table.get((None, it.id))) if source is not None else it.description
            if text is None:
                missing.append(f"{task}/{it.id}")
            else:
                out[(task, it.id)] = DescriptionResult(text)
        if missing:
            where = f"in {source}" if source is not None else "in the items' 'description' field"
            raise EvalError(f"no description {where} for {len(missing)} image item(s), e.g. {missing[:5]}; pass "
                            "--descriptions FILE (JSONL of id, description) or a describer (--describer-url + "
                            "--describer-model, or --describer-local PATH), or drop 'described' from --settings.")
    elif todo:
        describer: Describer = source  # type: ignore[assignment]
        for start in range(0, len(todo), _CHUNK):
            part = todo[start:start + _CHUNK]
            for (task, it), res in zip(part, describer.describe([it for _, it in part]), strict=True):
                out[(task, it.id)] = res
            if progress is not None:
                progress(min(start + _CHUNK, len(todo)), len(todo))
        close = getattr(describer, "close", None)
        if callable(close):
            close()  # a local describer's model is not needed while the evaluated models run
    rows = [{"task": task, "id": it.id, "description": out[(task, it.id)].text} for task, it in wanted
            if out[(task, it.id)].text is not None]
    write_text(store, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return out
