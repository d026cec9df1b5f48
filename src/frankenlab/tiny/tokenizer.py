"""A tiny, offline, deterministic byte-level BPE tokenizer with Qwen-style special tokens.

Offline runs and tests must never touch the Hugging Face hub, yet the processors and chat templates they
exercise expect a real Qwen2-VL-like vocabulary (``<|im_start|>``, ``<|image_pad|>`` ...). Training a
~400-token BPE on a few kilobytes of text takes milliseconds and gives exactly that, with tiny embedding
matrices. The mini-world trains its vocabulary here from its task corpus; the ``testing`` package
re-exports everything for the test suite.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

__all__ = [
    "DEFAULT_CORPUS",
    "ENDOFTEXT",
    "IMAGE_PAD",
    "IM_END",
    "IM_START",
    "LLAVA_IMAGE",
    "MAX_VOCAB",
    "QWEN2_PRETOKENIZE_REGEX",
    "QWEN_IMAGE_PLACEHOLDER",
    "QWEN_VIDEO_PLACEHOLDER",
    "SPECIAL_TOKENS",
    "VIDEO_PAD",
    "VISION_END",
    "VISION_START",
    "build_tokenizer",
    "chat_template",
]

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
LLAVA_IMAGE = "<image>"

#: Special tokens in id order: they are handed to the trainer first, so they get ids 0..len-1.
SPECIAL_TOKENS: tuple[str, ...] = (
    ENDOFTEXT,
    IM_START,
    IM_END,
    VISION_START,
    VISION_END,
    IMAGE_PAD,
    VIDEO_PAD,
    LLAVA_IMAGE,
)

#: How an image part is rendered by the Qwen-VL template (the processor expands the pad token).
QWEN_IMAGE_PLACEHOLDER = VISION_START + IMAGE_PAD + VISION_END
QWEN_VIDEO_PLACEHOLDER = VISION_START + VIDEO_PAD + VISION_END

MAX_VOCAB = 512

#: Qwen2's pre-tokenizer split (``transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX``).
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
    r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

DEFAULT_CORPUS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "A picture shows a red square, a blue circle and a green triangle.",
    "Describe the image. What colour is the shape in the picture?",
    "You are a helpful assistant. Answer the question step by step.",
    "The answer is 42. Let us think about it carefully before we answer.",
    "What is 2 + 3? 2 + 3 = 5. What is 7 * 8? 7 * 8 = 56.",
    "What is 12 - 5? 12 - 5 = 7. What is 81 / 9? 81 / 9 = 9.",
    "If x + 4 = 10 then x = 6. If 3y = 21 then y = 7.",
    "Compute 15 + 27 = 42, 100 - 58 = 42, 6 * 7 = 42 and 84 / 2 = 42.",
    "The sum of the angles of a triangle is 180 degrees.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20.",
    "The final answer is \\boxed{5}. Therefore the answer is 5.",
    "There are three apples and two oranges on the table, five fruits in total.",
    "The cat sat on the mat while the dog slept in the sun.",
    "Reinforcement learning changed the model; instruction tuning changed it too.",
)


def chat_template(
    image_placeholder: str = QWEN_IMAGE_PLACEHOLDER, video_placeholder: str = QWEN_VIDEO_PLACEHOLDER
) -> str:
    """A Qwen2-VL-like ChatML template; no default system prompt, to keep test sequences short.

    Content may be a string or a list of parts: ``{"type": "image"}`` (or any part with an ``image`` /
    ``image_url`` key) renders as ``image_placeholder``, ``{"type": "video"}`` as ``video_placeholder`` and
    ``{"type": "text", "text": ...}`` as its text.
    """
    return (
        "{% for message in messages %}"
        "<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for content in message['content'] %}"
        "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
        + image_placeholder
        + "{% elif content['type'] == 'video' or 'video' in content %}"
        + video_placeholder
        + "{% elif 'text' in content %}{{ content['text'] }}"
        "{% endif %}{% endfor %}{% endif %}"
        "<|im_end|>\n"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


def build_tokenizer(
    corpus: Iterable[str] | None = None,
    vocab_size: int = 400,
    *,
    image_placeholder: str = QWEN_IMAGE_PLACEHOLDER,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE offline; the same corpus always yields the same vocabulary and merges.

    ``<|endoftext|>`` is eos and pad (there is no bos, as in Qwen). ``<image>`` is always a special token so
    one tokenizer serves LLaVA too; pass ``image_placeholder="<image>"`` to get a LLaVA-style template.
    """
    if vocab_size > MAX_VOCAB:
        raise ValueError(f"vocab_size={vocab_size} > {MAX_VOCAB}: the tiny tokenizer must stay tiny")
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size={vocab_size} cannot hold 256 bytes + {len(SPECIAL_TOKENS)} special tokens")
    texts = list(DEFAULT_CORPUS if corpus is None else corpus)

    # Exactly Qwen2Tokenizer's pipeline: AutoTokenizer rebuilds a `qwen2` checkpoint's tokenizer as
    # Qwen2Tokenizer (whatever tokenizer_config.json says), so any other pipeline would re-tokenize differently.
    tok = Tokenizer(
        models.BPE(
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        show_progress=False,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=alphabet,
    )
    tok.train_from_iterator(texts, trainer=trainer)

    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=ENDOFTEXT,
        pad_token=ENDOFTEXT,
        unk_token=None,
        bos_token=None,
        extra_special_tokens=[t for t in SPECIAL_TOKENS if t != ENDOFTEXT],
        chat_template=chat_template(image_placeholder),
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )
    return hf_tok
