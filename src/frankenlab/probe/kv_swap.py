"""Visual-token K/V swapping for one (target, source, prompt) triple, batched over layers.

One prefill of the source keeps its post-RoPE keys/values at the image-token positions for every
decoder layer. The target prompt is then answered in batches whose rows are layer variants (the
prompt is the same for every variant): row "base" is the unswapped target, row "source" the
unswapped source (same length, so it rides along for free), and row L swaps the image-token K/V at
layers ≥ L ("suffix", the paper's semantics) or at L only ("single"). The swap rewrites the prefill,
and with it the cache; decode steps neither append nor re-swap anything.

The source must give the target's visual layout: the same image-token positions *and* the same patch
grid (`image_grid_thw` for Qwen-VL, whose multimodal rotary positions follow the grid; two images of
different aspect ratios can have the same token count on different grids). Otherwise the source is
resized to the target's size and re-encoded (`resized`).

Each pair's two images are encoded once, in one vision-tower pass, and every row (and the source
prefill) reuses those visual embeddings through transformers' ``mm_encoder_outputs`` instead of
re-encoding its pixels; the text model sees the same embeddings, so answers and margins are
unchanged (bit-identical on the test models; in general up to fp32 rounding of a vision pass over a
different number of patches). Families whose model cannot take pre-encoded images (`Adapter.image_features` gives None)
fall back to pixels per row, as does ``reuse_vision=False``.

Decoding is eval's: greedy, the checkpoint's generation_config neutralised, answer length
``max_new_tokens`` or the per-kind default (probe tasks are perception items).

Decoding-free score: the log-probability margin log p(source answer) − log p(target answer) at the
first answer token where the two answers' tokenizations differ (teacher-forcing their shared
prefix, if any, under the same swap).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from frankenlab.arch.base import Adapter
from frankenlab.errors import ProbeError
from frankenlab.probe.hooks import VisualKV, capture_kv, swap_visual_kv
from frankenlab.probe.run import append_tokens, repeat_rows
from frankenlab.runtime.generate import (
    GenerationSettings,
    HFBackend,
    Prompt,
    encode,
    resolve_max_new_tokens,
    to_model,
    tokenizer_of,
    without_checkpoint_generation_config,
)

__all__ = [
    "SwapResult",
    "VisionProbeSettings",
    "capture_source",
    "image_token_id",
    "layer_variants",
    "marker_token_ids",
    "parse_layers",
    "select_images",
    "swap_pair",
]

log = logging.getLogger(__name__)
#: Processor outputs that describe an image's patch layout; source and target must agree on each present.
GRID_KEYS = ("image_grid_thw", "image_sizes")
#: Fields of an image-encoder output that VLM forwards read back from `mm_encoder_outputs`: one entry per
#: image (a sequence, or an image-major tensor), and per layer such a sequence (Qwen3-VL DeepStack).
_PER_IMAGE, _PER_LAYER = "pooler_output", "deepstack_features"
#: Fields of the encoder run no forward reads back; a row selection drops them.
_UNREAD = frozenset({"last_hidden_state", "hidden_states", "attentions"})


class VisionProbeSettings(BaseModel):
    """Everything that changes a vision-probe result (recorded in the manifest and the resume key)."""

    model_config = ConfigDict(frozen=True)

    mode: Literal["suffix", "single"] = Field("suffix", description="suffix: swap at layers >= L; single: at L only.")
    layers: tuple[int, ...] | None = Field(None, description="Decoder layers L to probe (0-based); None = all.")
    max_new_tokens: int | None = Field(None, ge=1, description="Greedy answer length limit; None = the per-kind "
                                       "default (runtime.generate.DEFAULT_MAX_NEW_TOKENS).")
    layer_batch: int = Field(8, ge=1, description="Rows (layer variants) per batched target pass.")
    system_prompt: str | None = Field(None, description="System prompt for every question (None: the template's).")
    n_boot: int = Field(1000, ge=1, description="Bootstrap resamples for the margin interval.")
    seed: int = Field(0, description="Seed of the bootstrap.")
    # Excluded from model_dump, hence from the manifest and the resume key, like the device: both paths feed
    # the rows the same embeddings (bit-identical answers and margins on the test models, CPU fp32; elsewhere
    # fp32 GEMM rounding, which depends on the patches per vision pass, as `layer_batch` already did).
    reuse_vision: bool = Field(True, exclude=True, description="Encode target and source once per pair and "
                               "reuse the embeddings in every row; False re-encodes the pixels per row.")


def parse_layers(spec: str | None, n_layers: int) -> tuple[int, ...] | None:
    """'all' / None, '0,4,8', '0-27', '0-27:4' (every 4th) → sorted decoder-layer numbers."""
    if spec is None or spec.strip().lower() in ("", "all"):
        return None
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        step = 1
        if ":" in part:
            part, step_s = part.split(":", 1)
            step = int(step_s)
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                out.update(range(lo, hi + 1, max(1, step)))
            else:
                out.add(int(part))
        except ValueError as exc:
            raise ProbeError(f"cannot read layer spec {spec!r}; use e.g. '0,4,8', '0-27' or '0-27:4'.") from exc
    bad = sorted(i for i in out if not 0 <= i < n_layers)
    if bad:
        raise ProbeError(f"layers {bad} are out of range; the model has decoder layers 0..{n_layers - 1}.")
    return tuple(sorted(out))


def image_token_id(model: Any) -> int:
    cfg = model.config
    for key in ("image_token_id", "image_token_index"):
        value = getattr(cfg, key, None)
        if isinstance(value, int):
            return value
    raise ProbeError(f"{type(model).__name__} declares no image token id (image_token_id / image_token_index); the "
                     "vision probes need a vision-language model.")


def marker_token_ids(model: Any) -> list[int]:
    """Vision start/end marker ids (Qwen-VL); empty for families without markers (LLaVA)."""
    cfg = model.config
    return [v for k in ("vision_start_token_id", "vision_end_token_id") if isinstance(v := getattr(cfg, k, None), int)]


def layer_variants(n_layers: int, layers: Sequence[int] | None, mode: str) -> list[tuple[int, frozenset[int]]]:
    """(L, decoder layers swapped) for each probed L."""
    chosen = range(n_layers) if layers is None else layers
    if mode == "suffix":
        return [(L, frozenset(range(L, n_layers))) for L in chosen]
    if mode == "single":
        return [(L, frozenset({L})) for L in chosen]
    raise ProbeError(f"unknown swap mode {mode!r}; use 'suffix' or 'single'.")


def capture_source(model: Any, adapter: Adapter, inputs: dict[str, Any], positions: torch.Tensor) -> VisualKV:
    """One source prefill (no cache kept, last-position logits only) → its image-token K/V per layer."""
    with torch.inference_mode(), capture_kv(model, adapter, positions) as kept:
        model(**inputs, use_cache=False, logits_to_keep=1)
    n = len(adapter.decoder_layers(model))
    return VisualKV(positions=positions.cpu(), keys=tuple(kept[i][0][0] for i in range(n)),
                    values=tuple(kept[i][1][0] for i in range(n)), prompt_len=int(inputs["input_ids"].shape[1]))


@dataclass(frozen=True)
class SwapResult:
    """Answers and margins for one pair: keys "base", "source" and str(L) for each probed layer."""

    answers: dict[str, str]
    margins: dict[str, float]
    resized: bool
    n_image_tokens: int
    margin_prefix: int  # answer tokens shared by both answers (teacher-forced); -1: no margin (prefix answers)
    reused_vision: bool = False  # one vision pass served every row (False: pixels re-encoded per row)


def _image_positions(inputs: dict[str, Any], image_id: int) -> torch.Tensor:
    return (inputs["input_ids"][0] == image_id).nonzero().flatten()


def _same_layout(a: dict[str, Any], b: dict[str, Any], image_id: int) -> bool:
    """Same prompt length, image-token positions and patch grid (every key of GRID_KEYS either has)."""
    if a["input_ids"].shape != b["input_ids"].shape:
        return False
    if not torch.equal(_image_positions(a, image_id), _image_positions(b, image_id)):
        return False
    for key in GRID_KEYS:
        x, y = a.get(key), b.get(key)
        if (x is None) != (y is None):
            return False
        if isinstance(x, torch.Tensor) and not (isinstance(y, torch.Tensor) and torch.equal(x.cpu(), y.cpu())):
            return False
        if x is not None and not isinstance(x, torch.Tensor) and x != y:
            return False
    return True


def select_images(encoded: Any, index: Sequence[int]) -> Any | None:
    """The image-encoder output `encoded` narrowed to images `index`, in that order (repeats allowed).

    None when `encoded` has a field whose per-image layout is not known here: the caller then passes
    pixels. Tensors are shared, not copied (forwards only read them).
    """
    fields = {k: v for k, v in encoded.items() if v is not None}
    per_image = fields.get(_PER_IMAGE)
    if per_image is None or set(fields) - _UNREAD - {_PER_IMAGE, _PER_LAYER}:
        return None
    n = len(per_image)
    if any(not 0 <= i < n for i in index):
        raise ProbeError(f"image rows {list(index)} asked of an encoding of {n} images.")

    def pick(seq: Any) -> Any:
        return seq[list(index)] if isinstance(seq, torch.Tensor) else [seq[i] for i in index]

    out = {_PER_IMAGE: pick(per_image)}
    if _PER_LAYER in fields:
        layers = fields[_PER_LAYER]
        if not all(isinstance(layer, (list, tuple)) and len(layer) == n for layer in layers):
            return None
        out[_PER_LAYER] = [pick(layer) for layer in layers]
    return type(encoded)(**out)


def _encode_pair(model: Any, adapter: Adapter, target: dict[str, Any], source: dict[str, Any]) -> Any | None:
    """Target (image 0) and source (image 1) encoded in one vision pass; None: this family takes pixels."""
    with torch.inference_mode():
        encoded = adapter.image_features(model, repeat_rows([target, source]))
    if encoded is None or select_images(encoded, [0, 1]) is None:
        log.debug("%s cannot reuse image encodings; re-encoding the pixels per row", type(model).__name__)
        return None
    if len(encoded[_PER_IMAGE]) != 2:
        raise ProbeError(f"encoding the target and source images gave {len(encoded[_PER_IMAGE])} images, not 2; "
                         "each prompt must hold exactly one image.")
    return encoded


def _with_images(inputs: dict[str, Any], encoded: Any, index: Sequence[int]) -> dict[str, Any]:
    """`inputs` with its pixels replaced by images `index` of `encoded` (grid and token types kept for RoPE)."""
    out = {k: v for k, v in inputs.items() if k != "pixel_values"}
    out["mm_encoder_outputs"] = {"image": select_images(encoded, index)}
    return out


def _answer_ids(tok: Any, target: str, source: str) -> tuple[list[int], int, int] | None:
    """(shared prefix ids, first differing target id, first differing source id); None if one answer's
    tokens are a prefix of the other's ("1" vs "12": no single token decides between them)."""
    t = tok(target, add_special_tokens=False)["input_ids"]
    s = tok(source, add_special_tokens=False)["input_ids"]
    k = 0
    while k < min(len(t), len(s)) and t[k] == s[k]:
        k += 1
    if k == len(t) or k == len(s):
        return None
    return t[:k], t[k], s[k]


def swap_pair(model: Any, processor: Any, adapter: Adapter, target_image: Image.Image, source_image: Image.Image,
              prompt: str, target_answer: str, source_answer: str, settings: VisionProbeSettings, *,
              kind: str = "perception") -> SwapResult:
    """Answer `prompt` about the target with the source's image K/V swapped in, for every layer variant.

    ``kind`` (perception / reasoning) picks the answer length when ``settings.max_new_tokens`` is None.
    """
    image_id = image_token_id(model)
    tok = tokenizer_of(processor)
    n_layers = len(adapter.decoder_layers(model))
    gen = HFBackend(model, processor, settings=GenerationSettings(
        max_new_tokens=resolve_max_new_tokens(settings.max_new_tokens, kind), system_prompt=settings.system_prompt))
    kw = {**gen.generate_kwargs(), "return_dict_in_generate": True, "output_logits": True}

    def enc(image: Image.Image) -> dict[str, Any]:
        return to_model(model, encode(processor, [Prompt(prompt, image)], settings.system_prompt))

    target = enc(target_image)
    source = enc(source_image)
    t_pos = _image_positions(target, image_id)
    if t_pos.numel() == 0:
        raise ProbeError("the target prompt holds no image tokens; check the processor and chat template.")
    resized = False
    if not _same_layout(source, target, image_id):  # token count or patch grid differ: match the target's size
        source = enc(source_image.resize(target_image.size, Image.Resampling.BICUBIC))
        resized = True
    if not _same_layout(source, target, image_id):
        raise ProbeError("source and target prompts place their image tokens (or patch grids) differently even "
                         "after resizing the source to the target's size; use images of the same size and one "
                         "prompt.")
    encoded = _encode_pair(model, adapter, target, source) if settings.reuse_vision else None
    src = capture_source(model, adapter, source if encoded is None else _with_images(source, encoded, [1]), t_pos)
    scored = _answer_ids(tok, target_answer, source_answer)
    prefix = scored[0] if scored is not None else []

    rows: list[tuple[str, frozenset[int]]] = [("base", frozenset()), ("source", frozenset())]
    rows += [(str(L), swapped) for L, swapped in layer_variants(n_layers, settings.layers, settings.mode)]
    answers: dict[str, str] = {}
    margins: dict[str, float] = {}
    P = int(target["input_ids"].shape[1])
    for start in range(0, len(rows), settings.layer_batch):
        chunk = rows[start:start + settings.layer_batch]
        if encoded is None:
            inputs = repeat_rows([source if name == "source" else target for name, _ in chunk])
        else:
            no_pixels = [{k: v for k, v in (source if name == "source" else target).items() if k != "pixel_values"}
                         for name, _ in chunk]
            inputs = _with_images(repeat_rows(no_pixels), encoded, [int(name == "source") for name, _ in chunk])
        plan = [swapped for _, swapped in chunk]
        with (torch.inference_mode(), without_checkpoint_generation_config(model),
              swap_visual_kv(model, adapter, src, plan) as state):
            out = model.generate(**inputs, **kw)
            if any(v != 1 for v in state.applied.values()):
                raise ProbeError(f"the swap ran {state.applied} times per layer in one generation; expected once.")
            if scored is None:
                first = None
            elif prefix:
                first = model(**append_tokens(inputs, prefix), use_cache=False, logits_to_keep=1).logits[:, -1]
            else:
                first = out.logits[0]
        logp = torch.log_softmax(first.float(), dim=-1) if first is not None else None
        texts = tok.batch_decode(out.sequences[:, P:], skip_special_tokens=True)
        for r, (name, _) in enumerate(chunk):
            answers[name] = texts[r].strip()
            margins[name] = float(logp[r, scored[2]] - logp[r, scored[1]]) if logp is not None and scored else math.nan
    return SwapResult(answers, margins, resized, int(t_pos.numel()), len(prefix) if scored is not None else -1,
                      reused_vision=encoded is not None)
