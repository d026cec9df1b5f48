"""Every intervention the probes make, as context managers that always undo themselves.

This is the only module that installs forward hooks or attention functions. Three interventions:

* `skip_layers` — a forward hook on a decoder layer returns the layer's input hidden states, so
  the layer's attention and MLP contribute nothing while the residual stream passes. The layer
  still runs and writes its cache slot (its keys/values are read by nobody), which keeps every
  cache length, `layer_idx` and mask consistent; the result equals the model with the layer
  deleted (tested).
* `swap_visual_kv` — a text-model attention function (`transformers.AttentionInterface`) that, on
  a fresh prefill only, overwrites the keys/values at the image-token positions with the source's
  *in the tensors the cache returned*, so the cache holds the swapped block and decode steps reuse
  it without re-swapping or appending anything.
* `record_attention` — a text-model attention function that recomputes softmax(QKᵀ) only for the
  requested query rows and keeps their mass per key group; the model's own (sdpa/eager) function
  still produces the output.

Attention functions are registered under a fresh name, selected for the text sub-config only
(`set_attn_implementation({"text_config": name})`), and on exit the previous implementation is
restored and the name unregistered, also when the block raises.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from frankenlab.arch.base import Adapter
from frankenlab.errors import ProbeError

__all__ = [
    "AttentionRecord",
    "SwapState",
    "VisualKV",
    "capture_kv",
    "capture_residual",
    "record_attention",
    "skip_layers",
    "swap_visual_kv",
    "text_attention_function",
    "text_attn_implementation",
]

_NAMES = itertools.count()
AttentionFn = Callable[..., tuple[torch.Tensor, torch.Tensor | None]]


# -- attention-function plumbing -------------------------------------------------------------------
def _text_config(model: Any) -> Any:
    cfg = model.config
    if "text_config" in (getattr(cfg, "sub_configs", None) or {}) and getattr(cfg, "text_config", None) is not None:
        return cfg.text_config
    return cfg


def text_attn_implementation(model: Any) -> str:
    """The attention implementation the text decoder uses now ("sdpa", "eager", or a registered name)."""
    return str(_text_config(model)._attn_implementation)


def _set_text_attn(model: Any, name: str) -> None:
    if _text_config(model) is model.config:
        model.set_attn_implementation(name)
    else:
        model.set_attn_implementation({"text_config": name})
    if text_attn_implementation(model) != name:
        raise ProbeError(f"{type(model).__name__} did not switch its text attention to {name!r}; this model does "
                         "not support AttentionInterface dispatch, so it cannot be probed.")


def _eager(module: Any) -> AttentionFn:
    """The model family's own eager attention (same math as `output_attentions`), or a plain one."""
    fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    return fn if fn is not None else _plain_eager


def _plain_eager(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0,
                 **_: Any) -> tuple[torch.Tensor, torch.Tensor]:
    k, v = _repeat_kv(key, query.shape[1]), _repeat_kv(value, query.shape[1])
    scores = torch.matmul(query, k.transpose(2, 3)) * scaling
    scores = _apply_mask(scores, attention_mask)
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    return torch.matmul(weights, v).transpose(1, 2).contiguous(), weights


def _delegate(base: str) -> Callable[[Any], AttentionFn]:
    """Resolve the implementation we wrap at call time (eager is family-specific, the rest global)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if base == "eager":
        return _eager
    if base not in ALL_ATTENTION_FUNCTIONS:
        raise ProbeError(f"text attention implementation {base!r} is not registered; load the model with "
                         "attn_implementation='sdpa' or 'eager'.")
    fn = ALL_ATTENTION_FUNCTIONS[base]
    return lambda _module: fn


@contextlib.contextmanager
def text_attention_function(model: Any, wrap: Callable[[AttentionFn], AttentionFn],
                            prefix: str = "frankenlab") -> Iterator[str]:
    """Run the text decoder through `wrap(current attention function)` inside the block.

    Nested uses compose (the inner wrapper delegates to the outer one). Yields the registered name.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    from frankenlab.compat import unregister_attention

    base = text_attn_implementation(model)
    if base not in ALL_MASK_ATTENTION_FUNCTIONS:
        raise ProbeError(f"text attention implementation {base!r} has no mask function; load the model with "
                         "attn_implementation='sdpa' or 'eager'.")
    resolve = _delegate(base)

    def attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        return wrap(resolve(module))(module, query, key, value, attention_mask, **kwargs)

    name = f"{prefix}_{next(_NAMES)}"
    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
    try:
        _set_text_attn(model, name)
        yield name
    finally:
        try:
            if text_attn_implementation(model) != base:
                _set_text_attn(model, base)
        finally:
            unregister_attention(name)


def _repeat_kv(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    rep = n_heads // x.shape[1]
    return x if rep == 1 else x.repeat_interleave(rep, dim=1)


def _apply_mask(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return scores
    mask = mask[..., : scores.shape[-1]]
    if mask.dtype == torch.bool:
        return scores.masked_fill(~mask, float("-inf"))
    return scores + mask


# -- layer skipping ----------------------------------------------------------------------------------
@contextlib.contextmanager
def skip_layers(model: Any, adapter: Adapter,
                layers: Iterable[int] | Mapping[int, Sequence[int] | None]) -> Iterator[None]:
    """Skip decoder layers (output := input) inside the block.

    `layers` is a collection of decoder-layer numbers (every batch row skips them) or a mapping
    layer → batch rows that skip it (None = all rows), so one batch can ablate a different layer
    in each row.
    """
    stack = adapter.decoder_layers(model)
    plan: dict[int, list[int] | None] = (
        {int(k): (None if v is None else [int(r) for r in v]) for k, v in layers.items()}
        if isinstance(layers, Mapping) else dict.fromkeys((int(i) for i in layers), None)
    )
    for i in plan:
        if not 0 <= i < len(stack):
            raise ProbeError(f"cannot skip decoder layer {i}: the model has layers 0..{len(stack) - 1}.")
    handles = []
    try:
        for i, rows in plan.items():
            handles.append(stack[i].register_forward_hook(_skip_hook(rows), with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


def _skip_hook(rows: list[int] | None) -> Callable[..., Any]:
    def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        hidden_in = args[0] if args else kwargs["hidden_states"]
        out = output[0] if isinstance(output, tuple) else output
        if rows is None:
            new = hidden_in.to(out.device)  # a no-op unless the model is split across devices
        else:
            new = out.clone()
            index = torch.tensor(rows, device=out.device)
            new[index] = hidden_in.to(out.device)[index]  # a split model's layer input may sit elsewhere
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return hook


# -- visual K/V swap -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class VisualKV:
    """A source prompt's post-RoPE keys/values at its image-token positions, per decoder layer."""

    positions: torch.Tensor  # 1-D long, positions of the image tokens in the prompt
    keys: tuple[torch.Tensor, ...]  # per layer: [kv_heads, n_image_tokens, head_dim]
    values: tuple[torch.Tensor, ...]
    prompt_len: int


@dataclass
class SwapState:
    """What the swap did: per decoder layer, how many prefill passes it rewrote (diagnostics, tests)."""

    applied: dict[int, int] = field(default_factory=dict)
    decode_calls: int = 0


@contextlib.contextmanager
def swap_visual_kv(model: Any, adapter: Adapter, source: VisualKV,
                   layers_per_row: Sequence[Iterable[int]]) -> Iterator[SwapState]:
    """Replace image-token K/V by the source's at prefill, per batch row and decoder layer.

    Row r of every batch run inside the block swaps at the decoder layers in `layers_per_row[r]`
    (empty: the row is the unswapped baseline). Only a fresh prefill (as many queries as keys, the
    prompt's length) is rewritten; the rewrite lands in the cache's own tensors, so later decode
    steps see the swapped block once, as the paper intends. Swapped rows must share the source's
    prompt layout (image tokens at `source.positions`); a prefill may extend the prompt (teacher
    forcing an answer prefix).
    """
    n_layers = len(adapter.decoder_layers(model))
    if len(source.keys) != n_layers:
        raise ProbeError(f"source K/V covers {len(source.keys)} layers but the model has {n_layers}.")
    rows_at: dict[int, torch.Tensor] = {}
    for layer in range(n_layers):
        rows = [r for r, ls in enumerate(layers_per_row) if layer in set(ls)]
        if rows:
            rows_at[layer] = torch.tensor(rows, dtype=torch.long)
    for r, ls in enumerate(layers_per_row):
        bad = [x for x in ls if not 0 <= x < n_layers]
        if bad:
            raise ProbeError(f"row {r} asks to swap at decoder layers {bad}; the model has 0..{n_layers - 1}.")
    state = SwapState()
    n_rows = len(layers_per_row)
    pos = source.positions.long()
    cached: dict[tuple[int, torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def source_for(layer: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        key = (layer, like.device, like.dtype)
        if key not in cached:
            cached[key] = (source.keys[layer].to(like.device, like.dtype),
                           source.values[layer].to(like.device, like.dtype), pos.to(like.device))
        return cached[key]

    def wrap(inner: AttentionFn) -> AttentionFn:
        def attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, **kwargs: Any) -> Any:
            layer = int(module.layer_idx)
            prefill = query.shape[-2] == key.shape[-2]
            if not prefill:
                state.decode_calls += 1
            elif layer in rows_at:
                if key.shape[0] != n_rows or key.shape[-2] < source.prompt_len:
                    raise ProbeError(
                        f"swap expected a prefill of {n_rows} rows × at least {source.prompt_len} tokens, got "
                        f"{key.shape[0]} × {key.shape[-2]}; every swapped row must start with the source's prompt "
                        "layout.")
                k_src, v_src, p = source_for(layer, key)
                for r in rows_at[layer].tolist():
                    # In place: `key`/`value` are the cache's own tensors at prefill (DynamicCache/StaticCache).
                    key[r].index_copy_(1, p, k_src)
                    value[r].index_copy_(1, p, v_src)
                state.applied[layer] = state.applied.get(layer, 0) + 1
            return inner(module, query, key, value, attention_mask, **kwargs)

        return attention

    with text_attention_function(model, wrap, prefix="frankenlab_swap"):
        yield state


@contextlib.contextmanager
def capture_kv(model: Any, adapter: Adapter,
               positions: torch.Tensor) -> Iterator[dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """Keep each decoder layer's post-RoPE keys/values at `positions` from the next full forward.

    These are exactly the tensors the cache would hold there (keys after rotary embedding), for
    every batch row: per layer ([batch, kv_heads, n, head_dim], same for values), detached.
    """
    n_layers = len(adapter.decoder_layers(model))
    kept: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    pos = positions.long()

    def wrap(inner: AttentionFn) -> AttentionFn:
        def attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, **kwargs: Any) -> Any:
            layer = int(module.layer_idx)
            if query.shape[-2] == key.shape[-2] and layer not in kept:
                p = pos.to(key.device)
                kept[layer] = (key.index_select(2, p).detach().clone(), value.index_select(2, p).detach().clone())
            return inner(module, query, key, value, attention_mask, **kwargs)

        return attention

    with text_attention_function(model, wrap, prefix="frankenlab_capture"):
        yield kept
    if len(kept) != n_layers:
        raise ProbeError(f"captured keys/values at {len(kept)} of {n_layers} decoder layers; the forward inside "
                         "capture_kv must run the whole text model once.")


# -- attention recording -----------------------------------------------------------------------------
@dataclass
class AttentionRecord:
    """Per decoder layer: attention mass [batch, heads, queries, groups + 1] (last column: all keys)."""

    mass: dict[int, torch.Tensor] = field(default_factory=dict)


@contextlib.contextmanager
def record_attention(model: Any, adapter: Adapter, query_positions: torch.Tensor, key_groups: torch.Tensor,
                     layers: Iterable[int] | None = None) -> Iterator[AttentionRecord]:
    """Record the attention mass that chosen query rows put on chosen key groups, per layer and head.

    `query_positions` is [batch, Q] (query positions in the forward's input; rows may repeat a
    position as padding), `key_groups` is [batch, keys, G] booleans (e.g. image tokens; image
    tokens plus vision markers). Only full forwards (queries == keys) are recorded; softmax(QKᵀ)
    is recomputed for the Q rows alone, with the model's own mask, in float32.
    """
    n_layers = len(adapter.decoder_layers(model))
    wanted = set(range(n_layers)) if layers is None else {int(i) for i in layers}
    record = AttentionRecord()
    qpos = query_positions.long()
    groups = key_groups.bool()

    def wrap(inner: AttentionFn) -> AttentionFn:
        def attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, **kwargs: Any) -> Any:
            layer = int(module.layer_idx)
            if layer in wanted and query.shape[-2] == key.shape[-2]:
                record.mass[layer] = _rows_mass(query, key, attention_mask, kwargs.get("scaling"),
                                                qpos.to(query.device), groups.to(query.device))
            return inner(module, query, key, value, attention_mask, **kwargs)

        return attention

    with text_attention_function(model, wrap, prefix="frankenlab_attn"):
        yield record


def _rows_mass(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, scaling: float | None,
               qpos: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    b, h, s, d = query.shape
    if qpos.shape[0] != b or groups.shape[0] != b or groups.shape[1] != key.shape[-2]:
        raise ProbeError(f"attention recording got positions for {qpos.shape[0]} rows / {groups.shape[1]} keys, but "
                         f"the forward has {b} rows / {key.shape[-2]} keys.")
    scale = scaling if scaling is not None else d ** -0.5
    q = query.gather(2, qpos[:, None, :, None].expand(b, h, qpos.shape[1], d)).float()
    k = _repeat_kv(key, h).float()
    scores = torch.matmul(q, k.transpose(2, 3)) * scale  # [b, h, Q, keys]
    if mask is None:  # sdpa's causal fast path passes no mask
        causal = torch.arange(key.shape[-2], device=q.device)[None, None, :] <= qpos[:, :, None]
        scores = scores.masked_fill(~causal[:, None], float("-inf"))
    else:
        rows = mask.gather(2, qpos[:, None, :, None].expand(b, mask.shape[1], qpos.shape[1], mask.shape[-1]))
        scores = _apply_mask(scores, rows.float() if rows.dtype != torch.bool else rows)
    probs = torch.softmax(scores, dim=-1)
    g = groups.float()
    per_group = torch.einsum("bhqk,bkg->bhqg", probs, g)
    return torch.cat([per_group, probs.sum(-1, keepdim=True)], dim=-1).cpu()


@contextlib.contextmanager
def capture_residual(model: Any, adapter: Adapter, position: int = -1) -> Iterator[list[torch.Tensor | None]]:
    """Inside the block, slot i holds decoder layer i's output hidden state at ``position`` ([batch, hidden]).

    The hooks only read (they return nothing, so the forward is unchanged) and are removed on exit, also on
    error. Batches are left-padded, so position −1 is every row's last prompt token.
    """
    stack = adapter.decoder_layers(model)
    slots: list[torch.Tensor | None] = [None] * len(stack)

    def hook_for(i: int) -> Any:
        def hook(_module: Any, _args: Any, output: Any) -> None:
            hidden = output[0] if isinstance(output, tuple) else output
            slots[i] = hidden[:, position].detach().clone()
        return hook

    handles = [layer.register_forward_hook(hook_for(i)) for i, layer in enumerate(stack)]
    try:
        yield slots
    finally:
        for h in handles:
            h.remove()
