"""The one place for transformers / torchvision version gates and shims.

Why this exists: in transformers 5.x the Qwen-VL processors (``Qwen2VLProcessor``, ``Qwen2_5_VLProcessor``,
``Qwen3VLProcessor``) declare a ``video_processor`` attribute, and every video processor needs torchvision.
Without a usable torchvision such a processor can be neither constructed (``ProcessorMixin.__init__`` checks
each attribute against ``VideoProcessorMixin``, whose lazy mapping is a dummy) nor loaded with
``AutoProcessor.from_pretrained`` (it calls ``AutoVideoProcessor``, which raises ``OSError``).

``ProcessorMixin.get_attributes()`` derives the attribute list from the ``__init__`` signature, so the shim
is a same-named subclass whose ``__init__`` takes only ``image_processor`` and ``tokenizer``: the parent
``__init__`` still runs (it passes ``video_processor=None`` positionally, which ``zip`` drops), image+text
processing is unchanged, and ``save_pretrained`` writes the upstream class name into
``processor_config.json`` so the directory stays a normal Hugging Face checkpoint.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import transformers
from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer
from transformers.processing_utils import ProcessorMixin

#: Video processor class to pair with each Qwen-VL processor when torchvision works.
_VIDEO_PROCESSOR_FOR = {
    "Qwen2VLProcessor": "Qwen2VLVideoProcessor",
    "Qwen2_5_VLProcessor": "Qwen2VLVideoProcessor",
    "Qwen3VLProcessor": "Qwen3VLVideoProcessor",
}


def unregister_attention(name: str) -> None:
    """Remove an attention function (and its mask function) registered under ``name``.

    transformers has `AttentionInterface.register` but no public unregister; the private mapping is touched
    here only, so a change in transformers breaks one function, not the probes.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    for interface in (AttentionInterface, AttentionMaskInterface):
        interface._global_mapping.pop(name, None)


@functools.lru_cache(maxsize=1)
def torchvision_usable() -> bool:
    """True only if torchvision imports *and* works.

    A torchvision built for another torch imports with ``RuntimeError: operator torchvision::nms does not
    exist``; transformers' own ``is_torchvision_available()`` only checks package metadata and says True.
    """
    try:
        import torchvision  # noqa: F401
        from torchvision.transforms.v2 import functional  # noqa: F401
    except (ImportError, RuntimeError, OSError, AttributeError):
        return False
    return bool(transformers.utils.is_torchvision_available())


def model_type_available(model_type: str) -> bool:
    """Whether the installed transformers knows ``model_type`` (e.g. ``qwen3_vl`` needs transformers >= 4.57)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return model_type in CONFIG_MAPPING_NAMES


def needs_video_processor(processor_cls: type[ProcessorMixin]) -> bool:
    """Whether ``processor_cls`` declares a ``video_processor`` attribute (so needs torchvision as is)."""
    return "video_processor" in processor_cls.get_attributes()


@functools.cache
def image_text_only(processor_cls: type[ProcessorMixin]) -> type[ProcessorMixin]:
    """A same-named subclass of ``processor_cls`` whose attributes are only image processor + tokenizer.

    Cached so that every shimmed processor of one upstream class shares one class object.
    """
    if not needs_video_processor(processor_cls):
        return processor_cls

    def __init__(
        self: Any, image_processor: Any = None, tokenizer: Any = None, chat_template: Any = None, **kwargs: Any
    ) -> None:
        processor_cls.__init__(
            self,
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=None,
            chat_template=chat_template,
            **kwargs,
        )

    shim = type(
        processor_cls.__name__,
        (processor_cls,),
        {
            "__init__": __init__,
            "__module__": __name__,
            "__qualname__": processor_cls.__name__,
            "__doc__": f"{processor_cls.__name__} without a video processor (torchvision is not usable).",
        },
    )
    return shim


def __getattr__(name: str) -> type[ProcessorMixin]:
    """Resolve ``frankenlab.compat.Qwen2_5_VLProcessor`` & co. to the shim, so shimmed processors pickle."""
    if name in _VIDEO_PROCESSOR_FOR:
        return image_text_only(getattr(transformers, name))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _default_video_processor(processor_cls: type[ProcessorMixin], image_processor: Any) -> Any:
    name = _VIDEO_PROCESSOR_FOR.get(processor_cls.__name__)
    if name is None:
        raise RuntimeError(
            f"compat.make_vl_processor: no default video processor known for {processor_cls.__name__}; "
            "pass video_processor= explicitly"
        )
    video_cls = getattr(transformers, name)
    return video_cls(
        patch_size=image_processor.patch_size,
        temporal_patch_size=image_processor.temporal_patch_size,
        merge_size=image_processor.merge_size,
        image_mean=image_processor.image_mean,
        image_std=image_processor.image_std,
    )


def make_vl_processor(
    processor_cls: type[ProcessorMixin],
    image_processor: Any,
    tokenizer: Any,
    chat_template: str | None = None,
    *,
    video_processor: Any = None,
    **kw: Any,
) -> ProcessorMixin:
    """Build a vision-language processor, shimmed to image+text only when torchvision is unusable.

    With torchvision, a Qwen-VL processor gets ``video_processor`` (or a default one sized like the image
    processor). Processors without a video attribute (e.g. ``LlavaProcessor``) are built as they are.
    """
    if chat_template is None:
        chat_template = getattr(tokenizer, "chat_template", None)
    if not needs_video_processor(processor_cls):
        return processor_cls(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **kw)
    if torchvision_usable():
        if video_processor is None:
            video_processor = _default_video_processor(processor_cls, image_processor)
        return processor_cls(
            image_processor=image_processor,
            tokenizer=tokenizer,
            video_processor=video_processor,
            chat_template=chat_template,
            **kw,
        )
    if video_processor is not None:
        raise RuntimeError(
            f"compat.make_vl_processor: a video_processor was given for {processor_cls.__name__}, "
            "but torchvision is not usable here; install a torchvision matching torch or drop video support"
        )
    shim = image_text_only(processor_cls)
    return shim(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **kw)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _processor_class_name(path: Path) -> str | None:
    for name in ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json"):
        cls_name = _read_json(path / name).get("processor_class")
        if isinstance(cls_name, str):
            return cls_name
    return None


def load_processor(path: str | os.PathLike[str], **kwargs: Any) -> Any:
    """Load a saved processor (or, for a text-only directory, its tokenizer) offline.

    Use this instead of ``AutoProcessor.from_pretrained``: without torchvision the latter fails on every
    Qwen-VL directory (``OSError: Can't load video processor``). Here such a processor is rebuilt through the
    image+text shim with the PIL image processor. Where torchvision works, and for every other processor
    (e.g. LLaVA), this is plain ``AutoProcessor.from_pretrained``; a directory without processor config
    gives ``AutoTokenizer.from_pretrained``.
    """
    path = Path(path)
    if not path.is_dir():
        return AutoProcessor.from_pretrained(str(path), **kwargs)
    if not ((path / "processor_config.json").exists() or (path / "preprocessor_config.json").exists()):
        return AutoTokenizer.from_pretrained(str(path), **kwargs)
    cls_name = _processor_class_name(path)
    processor_cls = getattr(transformers, cls_name, None) if cls_name else None
    if (
        torchvision_usable()
        or not isinstance(processor_cls, type)
        or not issubclass(processor_cls, ProcessorMixin)
        or not needs_video_processor(processor_cls)
    ):
        return AutoProcessor.from_pretrained(str(path), **kwargs)
    shim = image_text_only(processor_cls)
    # Same three steps as ProcessorMixin.from_pretrained, but the image processor is forced to the PIL
    # backend: the torchvision one is unusable here even where the package is installed (broken build).
    processor_dict, instantiation_kwargs = shim.get_processor_dict(str(path), **dict(kwargs))
    image_processor = AutoImageProcessor.from_pretrained(str(path), backend="pil", **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
    return shim.from_args_and_dict([image_processor, tokenizer], processor_dict, **instantiation_kwargs)
