"""The same freeze as parameter-name regexes or lists, for trainers that take those (TRL, verl, ...)."""

from __future__ import annotations

import re

from frankenlab.arch.base import Adapter
from frankenlab.freeze.spec import FreezeSpec


def emit_list(spec: FreezeSpec, adapter: Adapter, names: list[str], layout: str = "transformers5") -> list[str]:
    """Frozen parameter names in the requested layout (in-memory names by default)."""
    return [adapter.to_layout(n, layout) for n in spec.select(adapter, names)]


def emit_regex(spec: FreezeSpec, adapter: Adapter, names: list[str], layout: str = "transformers5") -> str:
    """One anchored regex matching exactly the frozen parameters (and no other listed name)."""
    chosen = emit_list(spec, adapter, names, layout)
    prefixes: dict[str, None] = {}
    block = re.compile(r"^(.*\.(?:layers|blocks)\.\d+)\.")
    for name in chosen:
        m = block.match(name)
        prefixes[re.escape(m.group(1)) + r"\." if m else re.escape(name) + "$"] = None
    pattern = "^(?:" + "|".join(prefixes) + ")"
    rx = re.compile(pattern)
    all_names = [adapter.to_layout(n, layout) for n in names]
    matched = {n for n in all_names if rx.match(n)}
    if matched != set(chosen):  # a block prefix would also catch an unfrozen tensor: list names exactly
        pattern = "^(?:" + "|".join(re.escape(n) for n in chosen) + ")$"
    return pattern
