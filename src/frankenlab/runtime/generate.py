"""Batched generation behind one small protocol, so eval, probes and the mini-world share prompts.

The Hugging Face backend renders the model's own chat template (the system prompt is explicit, never
guessed from a model name), left-pads batches, passes every tensor the processor returns (Qwen-VL
needs `mm_token_type_ids`, or it silently falls back to 1-D positions) and suppresses vision special
tokens, since a sampled `<|image_pad|>` crashes the next forward pass.

Answer length: an explicit ``max_new_tokens`` always wins; ``None`` means the per-kind default of
:data:`DEFAULT_MAX_NEW_TOKENS` (perception items answer in a few tokens, reasoning items only after
hundreds of reasoning tokens), resolved per item kind (`frankenlab.tasks.schema.kind_of`) by the caller.
Stops are the tokenizer's own end tokens, never the checkpoint's generation_config, so two checkpoints
of one model (IN and RL) stop on the same tokens.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from frankenlab.errors import FrankenlabError

if TYPE_CHECKING:
    from PIL import Image

    from frankenlab.tasks.schema import TaskItem

VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_pad|>",
                 "<image>", "<video>")
_CONFIG_TOKEN_IDS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id",
                     "image_token_index")

#: Default answer-length limit per item kind, used wherever ``max_new_tokens`` is None (the one table).
#: Perception: counting, OCR, grounding, recognition, colour, shape, locate, multiple choice — a short answer.
#: Reasoning: math word problems and anything whose item or task says it is reasoning — a 7B reasoning
#: model writes hundreds of tokens before its answer, and a cut-off answer is graded wrong.
DEFAULT_MAX_NEW_TOKENS: Mapping[str, int] = MappingProxyType({"perception": 256, "reasoning": 1024})


def resolve_max_new_tokens(explicit: int | None, kind: str) -> int:
    """``explicit`` when given, else the default of ``kind`` (a key of :data:`DEFAULT_MAX_NEW_TOKENS`)."""
    if explicit is not None:
        if int(explicit) != explicit or explicit < 1:
            raise FrankenlabError(f"max_new_tokens must be a positive integer or None (per-kind default), got "
                                  f"{explicit!r}.")
        return int(explicit)
    if kind not in DEFAULT_MAX_NEW_TOKENS:
        raise FrankenlabError(f"unknown item kind {kind!r}; expected one of {sorted(DEFAULT_MAX_NEW_TOKENS)}.")
    return DEFAULT_MAX_NEW_TOKENS[kind]


@dataclass(frozen=True)
class Prompt:
    """One question, optionally about one image."""

    text: str
    image: Image.Image | None = None

    @classmethod
    def of(cls, item: TaskItem) -> Prompt:
        """A task item's question with its image read (TaskError naming the item when it cannot be)."""
        return cls(item.question, item.load_image() if item.has_image else None)


@dataclass(frozen=True)
class GenerationSettings:
    """Everything that changes an answer; recorded with results.

    ``max_new_tokens=None`` stands for the per-kind default; resolve it with :meth:`for_kind` (or
    :func:`backend_for_kind`) before generating.
    """

    max_new_tokens: int | None = 16
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 16
    system_prompt: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def for_kind(self, kind: str) -> GenerationSettings:
        """These settings with ``max_new_tokens`` resolved for items of ``kind`` (an explicit value is kept)."""
        return dataclasses.replace(self, max_new_tokens=resolve_max_new_tokens(self.max_new_tokens, kind))


class Backend(Protocol):
    name: str
    settings: GenerationSettings

    def generate(self, prompts: Sequence[Prompt], progress: Callable[[int], None] | None = None) -> list[str]: ...


def tokenizer_of(processor: Any) -> Any:
    return getattr(processor, "tokenizer", processor)


def suppressed_ids(processor: Any, config: Any = None) -> list[int]:
    """Vision special-token ids from the vocabulary and the model config."""
    tok = tokenizer_of(processor)
    vocab = tok.get_vocab()
    ids = {vocab[t] for t in VISION_TOKENS if t in vocab}
    for cfg in (config, getattr(config, "text_config", None)):
        for key in _CONFIG_TOKEN_IDS:
            value = getattr(cfg, key, None) if cfg is not None else None
            if isinstance(value, int) and 0 <= value < len(vocab) + 1024:
                ids.add(value)
    return sorted(ids)


def stop_ids(processor: Any, model: Any = None) -> list[int]:
    """End tokens of the tokenizer (and, only when ``model`` is given, its generation_config's eos ids)."""
    tok = tokenizer_of(processor)
    vocab = tok.get_vocab()
    ids: set[int] = {vocab[t] for t in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>") if t in vocab}
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, list):
        ids.update(int(i) for i in gen_eos)
    return sorted(ids)


def build_messages(prompt: Prompt, system_prompt: str | None) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    if prompt.image is not None:
        messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt.text}]})
    else:
        messages.append({"role": "user", "content": prompt.text})
    return messages


def render_prompt(processor: Any, prompt: Prompt, system_prompt: str | None = None) -> str:
    """The exact text the model sees before generation (chat template + generation prompt)."""
    return processor.apply_chat_template(build_messages(prompt, system_prompt), tokenize=False,
                                         add_generation_prompt=True)


@contextlib.contextmanager
def left_padding(processor: Any) -> Iterator[None]:
    tok = tokenizer_of(processor)
    old = tok.padding_side
    tok.padding_side = "left"
    try:
        yield
    finally:
        tok.padding_side = old


def encode(processor: Any, prompts: Sequence[Prompt], system_prompt: str | None = None) -> Any:
    """Left-padded batch with every tensor the processor produces."""
    texts = [render_prompt(processor, p, system_prompt) for p in prompts]
    images = [p.image.convert("RGB") for p in prompts if p.image is not None]
    with left_padding(processor):
        if images:
            return processor(text=texts, images=images, padding=True, return_tensors="pt")
        if hasattr(processor, "tokenizer"):
            return processor(text=texts, padding=True, return_tensors="pt")
        return processor(texts, padding=True, return_tensors="pt")


def to_model(model: Any, batch: Any) -> dict[str, Any]:
    """The batch's tensors on the device the model reads inputs on (its input embeddings', also on a model split
    by a device_map), floating ones in the model's dtype."""
    import torch

    from frankenlab.runtime.devices import input_device

    device = input_device(model)
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device)
            if value.is_floating_point():
                value = value.to(model.dtype)
        out[key] = value
    return out


class HFBackend:
    """Batched `model.generate` on an already-loaded transformers model (in-memory merges welcome).

    Stops on the tokenizer's end tokens; ``checkpoint_eos=True`` adds the checkpoint generation_config's
    eos ids (only for runs that apply that config, e.g. eval's ``--use-generation-config``).
    """

    name = "hf"

    def __init__(self, model: Any, processor: Any, *, settings: GenerationSettings | None = None,
                 checkpoint_eos: bool = False, **overrides: Any) -> None:
        base = settings or GenerationSettings()
        self.settings = GenerationSettings(**{**base.to_dict(), **overrides})
        self.model = model
        self.processor = processor
        self._suppress = suppressed_ids(processor, getattr(model, "config", None))
        self._stop = stop_ids(processor, model if checkpoint_eos else None)
        tok = tokenizer_of(processor)
        self._pad = tok.pad_token_id if tok.pad_token_id is not None else (self._stop[0] if self._stop else 0)

    def generate_kwargs(self) -> dict[str, Any]:
        s = self.settings
        if s.max_new_tokens is None:
            raise FrankenlabError("max_new_tokens is None (the per-kind default) and was not resolved; use "
                                  "settings.for_kind(kind) or backend_for_kind(backend, kind) before generating.")
        kw: dict[str, Any] = {"max_new_tokens": s.max_new_tokens, "do_sample": s.do_sample,
                              "eos_token_id": self._stop, "pad_token_id": self._pad}
        if self._suppress:
            kw["suppress_tokens"] = self._suppress
        if s.do_sample:
            kw.update(temperature=s.temperature, top_p=s.top_p)
        else:
            kw.update(temperature=None, top_p=None, top_k=None)
        return kw

    def generate(self, prompts: Sequence[Prompt], progress: Callable[[int], None] | None = None) -> list[str]:
        import torch

        out: list[str] = []
        tok = tokenizer_of(self.processor)
        bs = max(1, self.settings.batch_size)
        with torch.inference_mode(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.settings.seed)
            for start in range(0, len(prompts), bs):
                chunk = prompts[start:start + bs]
                inputs = to_model(self.model, encode(self.processor, chunk, self.settings.system_prompt))
                ids = self.model.generate(**inputs, **self.generate_kwargs())
                new = ids[:, inputs["input_ids"].shape[1]:]
                out.extend(tok.batch_decode(new, skip_special_tokens=True))
                if progress is not None:
                    progress(len(chunk))
        return [s.strip() for s in out]

    def sample(self, prompts: Sequence[Prompt], seeds: Sequence[int], *, temperature: float, top_p: float = 1.0,
               progress: Callable[[int], None] | None = None) -> list[str]:
        """One sampled answer per prompt, row ``i`` drawn from its own generator seeded with ``seeds[i]``.

        `model.generate(do_sample=True)` draws every row from torch's one global generator, so a row's
        sample would depend on the rows batched with it, and a resumed run (other batches) would draw
        other samples. Here a :class:`RowSampler` picks each row's token from its own generator and
        generate's greedy step takes that pick, so a sample is a function of (prompt, seed) alone.
        Length, stops, suppressed tokens and batch size are the greedy settings'.
        """
        import torch
        from transformers import LogitsProcessorList

        if len(seeds) != len(prompts):
            raise FrankenlabError(f"sample: {len(prompts)} prompts but {len(seeds)} seeds; give one seed a prompt.")
        out: list[str] = []
        tok = tokenizer_of(self.processor)
        bs = max(1, self.settings.batch_size)
        kw = {**self.generate_kwargs(), "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        with torch.inference_mode():
            for start in range(0, len(prompts), bs):
                chunk = prompts[start:start + bs]
                inputs = to_model(self.model, encode(self.processor, chunk, self.settings.system_prompt))
                sampler = RowSampler(seeds[start:start + bs], temperature, top_p)
                ids = self.model.generate(**inputs, **kw, logits_processor=LogitsProcessorList([sampler]))
                new = ids[:, inputs["input_ids"].shape[1]:]
                out.extend(tok.batch_decode(new, skip_special_tokens=True))
                if progress is not None:
                    progress(len(chunk))
        return [s.strip() for s in out]


class RowSampler:
    """Logits processor: each row's next token drawn at ``temperature`` within the top-``top_p`` nucleus from
    that row's own seeded ``torch.Generator``; the returned scores keep only the drawn token, so greedy
    selection takes it. ``temperature=0`` leaves the scores alone (greedy)."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float = 1.0) -> None:
        if temperature < 0 or not 0 < top_p <= 1:
            raise FrankenlabError(f"sampling needs temperature >= 0 and 0 < top_p <= 1, got temperature="
                                  f"{temperature!r}, top_p={top_p!r}.")
        self.seeds = [int(s) for s in seeds]
        self.temperature, self.top_p = float(temperature), float(top_p)
        self._generators: list[Any] | None = None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if self.temperature == 0:
            return scores
        if scores.shape[0] != len(self.seeds):
            raise FrankenlabError(f"RowSampler has {len(self.seeds)} seeds for a batch of {scores.shape[0]} rows.")
        if self._generators is None:
            self._generators = [torch.Generator(device=scores.device).manual_seed(s) for s in self.seeds]
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            outside = sorted_p.cumsum(dim=-1) - sorted_p >= self.top_p  # mass before a token already >= top_p
            probs = probs.scatter(-1, order, sorted_p.masked_fill(outside, 0.0))
        picks = torch.cat([torch.multinomial(probs[r], 1, generator=g) for r, g in enumerate(self._generators)])
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(scores.shape[0], device=scores.device), picks] = 0.0
        return out


def backend_for_kind(backend: Any, kind: str) -> Any:
    """``backend`` itself when its ``max_new_tokens`` is explicit, else a shallow copy resolved for ``kind``.

    Works for any backend with a ``settings`` attribute read at generate time (HF, vLLM); the copy shares
    the model.
    """
    settings = backend.settings
    if settings.max_new_tokens is not None:
        return backend
    clone = copy.copy(backend)
    clone.settings = settings.for_kind(kind)
    return clone


def neutral_generation_config(config: Any) -> Any:
    """transformers' defaults with only the token ids (bos/eos/pad/decoder start) of ``config`` kept."""
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=getattr(config, "bos_token_id", None), eos_token_id=getattr(config, "eos_token_id", None),
        pad_token_id=getattr(config, "pad_token_id", None),
        decoder_start_token_id=getattr(config, "decoder_start_token_id", None))


def generation_config_dict(config: Any) -> dict[str, Any] | None:
    """The non-default fields of a GenerationConfig as plain JSON values (None for no config), without the
    transformers version that wrote it (the manifest records versions)."""
    if config is None:
        return None
    out = json.loads(config.to_json_string(use_diff=True))
    out.pop("transformers_version", None)
    return out


@contextlib.contextmanager
def without_checkpoint_generation_config(model: Any) -> Iterator[None]:
    """Generate with transformers' defaults plus explicit settings only, then restore the model's config.

    `model.generate` fills every argument left unset from `model.generation_config` (repetition penalty,
    top-k, suppressed tokens, ...), so a checkpoint's generation_config.json silently changes answers,
    and IN and RL may ship different ones. Inside this block only the token ids (bos/eos/pad) are kept
    from it (and the explicit ``eos_token_id`` every caller passes overrides those).
    """
    old = model.generation_config
    model.generation_config = neutral_generation_config(old)
    try:
        yield
    finally:
        model.generation_config = old


def decoding_record(generate_kwargs: Mapping[str, Any] | None, max_new_tokens: Mapping[str, int] | int | None,
                    checkpoint_config: Any) -> dict[str, Any]:
    """What decided the answers, for a manifest: greedy or not, lengths, stops, the configs used and ignored.

    ``checkpoint_config`` is the checkpoint's own GenerationConfig (None when it has none); the
    neutralised config is what `without_checkpoint_generation_config` installs in its place.
    """
    kw = dict(generate_kwargs or {})
    keep = ("do_sample", "eos_token_id", "pad_token_id", "suppress_tokens", "temperature", "top_p", "top_k")
    neutral = neutral_generation_config(checkpoint_config) if checkpoint_config is not None else None
    return {"greedy": not kw.get("do_sample", False),
            "max_new_tokens": dict(max_new_tokens) if isinstance(max_new_tokens, Mapping) else max_new_tokens,
            "max_new_tokens_defaults": dict(DEFAULT_MAX_NEW_TOKENS),
            "generate_kwargs": {k: kw[k] for k in keep if k in kw},
            "generation_config": generation_config_dict(neutral) or {},
            "checkpoint_generation_config": generation_config_dict(checkpoint_config),
            "checkpoint_generation_config_applied": False}
