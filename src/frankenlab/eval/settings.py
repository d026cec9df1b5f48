"""The three variants of an image item behind M_vis and M_v2r, built the same way for every model.

* ``image``      the real image and the question;
* ``black``      an all-black RGB image of the same size and the same question (does the answer need
                 the pixels?);
* ``described``  the black image, with a text description of the real image before the question
                 (can the model reason from what it would have seen?).

Text-only items have no variants: they run once as ``text`` (the M_rea items). The black image keeps
the size so that the number of visual tokens, and so the prompt length, is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from frankenlab.errors import EvalError
from frankenlab.eval.config import DEFAULT_DESCRIPTION_TEMPLATE, TEXT_SETTING
from frankenlab.runtime.generate import Prompt
from frankenlab.tasks.schema import TaskItem

__all__ = ["black_like", "build_prompt", "question_text", "settings_for"]

_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def black_like(image: Image.Image) -> Image.Image:
    """An all-black RGB image with the size of ``image``."""
    return Image.new("RGB", image.size, (0, 0, 0))


def question_text(item: TaskItem, prompt_suffix: str = "") -> str:
    """The question, its options as "(A) ..." lines when the item has choices, then the suffix."""
    text = item.question
    if item.choices:
        text += "\nChoices:\n" + "\n".join(f"({_LETTERS[i]}) {c}" for i, c in enumerate(item.choices))
    return text + prompt_suffix


def settings_for(item: TaskItem, settings: Sequence[str]) -> tuple[str, ...]:
    """The variants this item runs in: the requested ones for image items, ``text`` for text-only ones."""
    return tuple(settings) if item.has_image else (TEXT_SETTING,)


def build_prompt(item: TaskItem, setting: str, *, description: str | None = None, prompt_suffix: str = "",
                 description_template: str = DEFAULT_DESCRIPTION_TEMPLATE,
                 image: Image.Image | None = None) -> Prompt:
    """The prompt of ``item`` in ``setting``; ``image`` may pass the already-loaded real image."""
    question = question_text(item, prompt_suffix)
    if setting == TEXT_SETTING:
        if item.has_image:
            raise EvalError(f"item {item.id!r} has an image; the 'text' setting is for text-only items.")
        return Prompt(question)
    if not item.has_image:
        raise EvalError(f"item {item.id!r} has no image, so it has no {setting!r} variant.")
    real = image if image is not None else item.load_image()
    if setting == "image":
        return Prompt(question, real)
    if setting == "black":
        return Prompt(question, black_like(real))
    if setting == "described":
        if description is None:
            raise EvalError(f"item {item.id!r}: the described setting needs a description.")
        return Prompt(description_template.format(description=description, question=question), black_like(real))
    raise EvalError(f"unknown setting {setting!r}.")
