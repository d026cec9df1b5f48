"""An OpenAI-compatible chat endpoint (stdlib urllib, no new dependency) and an append-only answer cache.

Describers and the LLM judge call a server (vLLM, SGLang, llama.cpp, OpenAI, ...) by URL + model
name at temperature 0, and remember every answer in a JSONL cache, so a rerun or a second model in
the same study never asks again and always sees the same text.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from frankenlab.errors import EvalError
from frankenlab.io.store import JsonlStore

__all__ = ["Endpoint", "JsonlCache", "image_data_url", "stable_key"]


def stable_key(*parts: Any) -> str:
    """A short hash of JSON-able parts: cache keys that survive restarts."""
    blob = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def image_data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@dataclass(frozen=True)
class Endpoint:
    """``url`` is the API base (``http://host:8000/v1``) or the full ``.../chat/completions`` address.

    The API key, if any, is read from the environment variable named by ``api_key_env`` at call time
    and never recorded.
    """

    url: str
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"
    timeout_s: float = 120.0

    @property
    def chat_url(self) -> str:
        base = self.url.rstrip("/")
        return base if base.endswith("/chat/completions") else base + "/chat/completions"

    def identity(self) -> dict[str, str]:
        return {"url": self.chat_url, "model": self.model}

    def chat(self, messages: list[dict[str, Any]], *, max_tokens: int = 512) -> str:
        """The first choice's message text at temperature 0; EvalError (with "timeout" when it is one)."""
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0.0,
                           "max_tokens": max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(self.chat_url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                payload = json.loads(resp.read().decode("utf-8"))
        except TimeoutError as exc:
            raise EvalError(f"timeout: {self.chat_url} did not answer within {self.timeout_s:g} s.") from exc
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:300]
            raise EvalError(f"{self.chat_url} answered HTTP {exc.code}: {detail}") from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise EvalError(f"timeout: {self.chat_url} did not answer within {self.timeout_s:g} s.") from exc
            raise EvalError(f"cannot reach {self.chat_url} ({exc.reason}); is the server running?") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise EvalError(f"{self.chat_url} did not return JSON ({exc}).") from exc
        try:
            content = payload["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise EvalError(f"{self.chat_url} returned no choices[0].message.content: {str(payload)[:300]}") from exc
        if not isinstance(content, str):
            raise EvalError(f"{self.chat_url} returned non-text content: {str(content)[:200]}")
        return content


class JsonlCache:
    """``{"key": ..., "value": ...}`` lines (a :class:`frankenlab.io.store.JsonlStore`), each made durable as it is
    put; a torn last line is dropped and that entry simply recomputed. ``path`` None keeps it in memory."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path is not None else None
        self._store = JsonlStore(self.path, key=lambda r: r["key"]) if self.path is not None else None
        self._data: dict[str, Any] = {r["key"]: r.get("value") for r in self._store} if self._store else {}

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> Any:
        return self._data.get(key)

    def put(self, key: str, value: Any) -> None:
        self._data[key] = value
        if self._store is None:
            return
        if key in self._store:
            self._store.drop([key])
        self._store.append([{"key": key, "value": value}])
