"""Visual K/V swap: equals an independent layer-by-layer computation, touches the cache once, batches exactly."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures as DeepstackOutput

from frankenlab.probe.hooks import swap_visual_kv
from frankenlab.probe.kv_swap import (
    VisionProbeSettings,
    capture_source,
    image_token_id,
    layer_variants,
    parse_layers,
    select_images,
    swap_pair,
)
from frankenlab.probe.run import repeat_rows
from frankenlab.runtime.generate import GenerationSettings, HFBackend
from frankenlab.testing import tiny_image
from tests.probe.conftest import logits, no_hooks

PROMPT = "How many shapes are there?"


def _positions(model, inputs):
    return (inputs["input_ids"][0] == image_token_id(model)).nonzero().flatten()


def _swapped_logits(tiny, target, source, layers):
    src = capture_source(tiny.model, tiny.adapter, source, _positions(tiny.model, target))
    with torch.inference_mode(), swap_visual_kv(tiny.model, tiny.adapter, src, [layers]) as state:
        out = tiny.model(**target, use_cache=False).logits
    assert state.applied == dict.fromkeys(layers, 1)
    return out


# -- an independent implementation of the Qwen2 decoder with a K/V splice ------------------------------------
def _layer0_input(tiny, inputs):
    """Hidden states entering decoder layer 0 and the (multimodal) rotary cos/sin the model computed."""
    seen = {}

    def grab(_m, args, kwargs):
        seen["h"] = (args[0] if args else kwargs["hidden_states"]).clone()
        seen["pe"] = kwargs["position_embeddings"]

    handle = tiny.adapter.decoder_layers(tiny.model)[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        logits(tiny.model, inputs)
    finally:
        handle.remove()
    return seen["h"], seen["pe"]


def _rope(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


def _manual_layer(layer, h, pe, splice=None):
    attn = layer.self_attn
    x = layer.input_layernorm(h)
    b, s, _ = x.shape
    hd = attn.head_dim
    q = attn.q_proj(x).view(b, s, -1, hd).transpose(1, 2)
    k = attn.k_proj(x).view(b, s, -1, hd).transpose(1, 2)
    v = attn.v_proj(x).view(b, s, -1, hd).transpose(1, 2)
    q, k = _rope(q, *pe), _rope(k, *pe)
    if splice is not None:
        pos, k_src, v_src = splice
        k, v = k.clone(), v.clone()
        k[:, :, pos], v[:, :, pos] = k_src, v_src
    rep = q.shape[1] // k.shape[1]
    kr, vr = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scores = q @ kr.transpose(-1, -2) / hd ** 0.5
    scores = scores.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf"))
    out = (scores.softmax(-1) @ vr).transpose(1, 2).reshape(b, s, -1)
    h = h + attn.o_proj(out)
    return h + layer.mlp(layer.post_attention_layernorm(h)), (k, v)


def _manual_logits(tiny, target, source, swapped):
    pos = _positions(tiny.model, target)
    h_t, pe_t = _layer0_input(tiny, target)
    h_s, pe_s = _layer0_input(tiny, source)
    with torch.inference_mode():
        for i, layer in enumerate(tiny.adapter.decoder_layers(tiny.model)):
            h_s, (k_s, v_s) = _manual_layer(layer, h_s, pe_s)
            splice = (pos, k_s[:, :, pos], v_s[:, :, pos]) if i in swapped else None
            h_t, _ = _manual_layer(layer, h_t, pe_t, splice)
        return tiny.model.lm_head(tiny.model.model.language_model.norm(h_t))


@pytest.mark.parametrize(("mode", "L"), [("suffix", 0), ("suffix", 2), ("single", 1)])
def test_swap_equals_manual_layer_by_layer_computation(qwen, images, mode, L):
    target, source = qwen.inputs(PROMPT, images[0]), qwen.inputs(PROMPT, images[1])
    manual_plain = _manual_logits(qwen, target, source, set())
    # first, the manual model is right
    torch.testing.assert_close(manual_plain, logits(qwen.model, target), rtol=1e-4, atol=1e-4)
    (_, swapped), = layer_variants(4, [L], mode)
    got = _swapped_logits(qwen, target, source, sorted(swapped))
    want = _manual_logits(qwen, target, source, swapped)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, manual_plain, atol=1e-4)  # the swap did something


def test_full_suffix_swap_gives_the_sources_logits_after_the_image(qwen, images):
    """All image K/V from the source at every layer: text after the image computes exactly as in the source."""
    target, source = qwen.inputs(PROMPT, images[0]), qwen.inputs(PROMPT, images[1])
    pos = _positions(qwen.model, target)
    after = torch.arange(target["input_ids"].shape[1]) > pos.max()
    got = _swapped_logits(qwen, target, source, list(range(4)))
    src, tgt = logits(qwen.model, source), logits(qwen.model, target)
    torch.testing.assert_close(got[0, after], src[0, after], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(tgt[0, after], src[0, after], atol=1e-3)


def test_swap_from_layer_zero_with_source_equal_target_changes_nothing(qwen, images):
    t_img = images[0]
    res = swap_pair(qwen.model, qwen.processor, qwen.adapter, t_img, t_img.copy(), PROMPT, "3", "5",
                    VisionProbeSettings(max_new_tokens=6))
    assert set(res.answers) == {"base", "source", "0", "1", "2", "3"}
    assert len(set(res.answers.values())) == 1
    for margin in res.margins.values():
        assert margin == pytest.approx(res.margins["base"], abs=1e-5)
    target = qwen.inputs(PROMPT, t_img)
    torch.testing.assert_close(_swapped_logits(qwen, target, target, list(range(4))), logits(qwen.model, target),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["suffix", "single"])
def test_decoding_after_a_swap_keeps_the_cache_at_prompt_plus_generated(qwen, images, mode):
    target, source = qwen.inputs(PROMPT, images[0]), qwen.inputs(PROMPT, images[1])
    pos = _positions(qwen.model, target)
    src = capture_source(qwen.model, qwen.adapter, source, pos)
    (_, swapped), = layer_variants(4, [2], mode)
    kw = HFBackend(qwen.model, qwen.processor, settings=GenerationSettings(max_new_tokens=6)).generate_kwargs()
    kw.update(eos_token_id=[], min_new_tokens=6)  # exactly 6 new tokens
    with torch.inference_mode(), swap_visual_kv(qwen.model, qwen.adapter, src, [swapped]) as state:
        out = qwen.model.generate(**target, **kw, return_dict_in_generate=True)
    P, new = target["input_ids"].shape[1], out.sequences.shape[1] - target["input_ids"].shape[1]
    assert new == 6
    cache = out.past_key_values
    assert cache.get_seq_length() == P + new - 1  # the last token is never fed back
    for i, layer in enumerate(cache.layers):
        assert layer.keys.shape[-2] == P + new - 1 and layer.values.shape[-2] == P + new - 1
        k_img = layer.keys[0][:, pos]
        if i in swapped:  # the cache holds the source's block, once
            torch.testing.assert_close(k_img, src.keys[i], rtol=0, atol=0)
            torch.testing.assert_close(layer.values[0][:, pos], src.values[i], rtol=0, atol=0)
        else:
            assert not torch.allclose(k_img, src.keys[i])
    assert state.applied == dict.fromkeys(swapped, 1)  # prefill only
    assert state.decode_calls == 4 * (new - 1)  # every decode step ran, none re-swapped
    assert no_hooks(qwen.model)


def test_batched_layers_equal_the_one_generate_per_layer_loop(qwen):
    target, source = tiny_image(3, (84, 84)), tiny_image(4, (84, 84))
    runs = {b: swap_pair(qwen.model, qwen.processor, qwen.adapter, target, source, PROMPT, "2", "4",
                         VisionProbeSettings(max_new_tokens=6, layer_batch=b)) for b in (6, 1)}
    assert runs[6].answers == runs[1].answers
    for k, v in runs[6].margins.items():
        assert v == pytest.approx(runs[1].margins[k], abs=1e-4)


def test_source_of_another_size_is_resized_to_the_target(qwen):
    res = swap_pair(qwen.model, qwen.processor, qwen.adapter, tiny_image(3, (84, 84)), tiny_image(4, (112, 112)),
                    PROMPT, "2", "4", VisionProbeSettings(max_new_tokens=2, layers=(1,)))
    assert res.resized and res.n_image_tokens == 9
    assert set(res.answers) == {"base", "source", "1"}


def test_shared_answer_prefix_is_teacher_forced(qwen, images):
    """'1,2' vs '1,3': the margin is taken at the first differing token, after the shared prefix."""
    res = swap_pair(qwen.model, qwen.processor, qwen.adapter, *images, "Where is the red circle?", "1,2", "1,3",
                    VisionProbeSettings(max_new_tokens=2, layers=(0, 3)))
    assert res.margin_prefix >= 1
    assert all(torch.isfinite(torch.tensor(m)) for m in res.margins.values())


def test_llava_full_swap_gives_the_sources_logits(llava):
    """Generality: the same mechanism on LLaVA (no vision markers, image_token_index)."""
    target, source = llava.inputs(PROMPT, tiny_image(0, (28, 28))), llava.inputs(PROMPT, tiny_image(1, (28, 28)))
    pos = _positions(llava.model, target)
    assert pos.numel() == 4
    after = torch.arange(target["input_ids"].shape[1]) > pos.max()
    got = _swapped_logits(llava, target, source, list(range(4)))
    torch.testing.assert_close(got[0, after], logits(llava.model, source)[0, after], rtol=1e-5, atol=1e-5)
    res = swap_pair(llava.model, llava.processor, llava.adapter, tiny_image(0, (28, 28)), tiny_image(1, (28, 28)),
                    PROMPT, "2", "4", VisionProbeSettings(max_new_tokens=3))
    assert res.answers["0"] == res.answers["source"]


def test_layer_specs():
    assert parse_layers("all", 8) is None
    assert parse_layers("0,2-4", 8) == (0, 2, 3, 4)
    assert parse_layers("0-7:3", 8) == (0, 3, 6)
    with pytest.raises(Exception, match="out of range"):
        parse_layers("9", 8)
    assert layer_variants(4, [1], "suffix") == [(1, frozenset({1, 2, 3}))]
    assert layer_variants(4, [1], "single") == [(1, frozenset({1}))]


def test_prefix_answers_have_no_margin_but_still_answers(qwen, images):
    res = swap_pair(qwen.model, qwen.processor, qwen.adapter, *images, PROMPT, "1", "12",
                    VisionProbeSettings(max_new_tokens=2, layers=(0,)))
    assert res.margin_prefix == -1 and all(m != m for m in res.margins.values())  # NaN
    assert set(res.answers) == {"base", "source", "0"}


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_every_qwen_family_full_swap_answers_like_the_source(family):
    from tests.probe.conftest import _tiny

    tiny = _tiny(family)
    res = swap_pair(tiny.model, tiny.processor, tiny.adapter, tiny_image(0, (84, 84)), tiny_image(1, (84, 84)),
                    PROMPT, "2", "4", VisionProbeSettings(max_new_tokens=4, layers=(0, 3)))
    assert res.answers["0"] == res.answers["source"]
    assert no_hooks(tiny.model)


# -- one vision pass per pair ---------------------------------------------------------------------------------
class _VisionCounter:
    """Counts vision-tower passes (calls of its first block) and the images each encodes.

    An image's size in block-0 rows (patches for Qwen's flattened input, batch rows for CLIP) is measured
    by encoding the target alone, so the count needs no family-specific arithmetic.
    """

    def __init__(self, tiny, inputs):
        self.tiny, self.rows = tiny, []
        with self:
            tiny.adapter.image_features(tiny.model, inputs)
        (self.unit,) = self.rows
        self.rows = []

    def __enter__(self):
        block = self.tiny.adapter.vision_blocks(self.tiny.model)[0]
        grab = lambda _m, args, kwargs: self.rows.append((args[0] if args else kwargs["hidden_states"]).shape[0])  # noqa: E731
        self.handle = block.register_forward_pre_hook(grab, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    @property
    def images(self):
        return sum(self.rows) / self.unit


def _pair(tiny):
    size = (28, 28) if tiny.adapter.family == "llava" else (84, 84)
    return tiny_image(0, size), tiny_image(1, size)


@pytest.mark.parametrize("family", ["qwen", "llava"])
@pytest.mark.parametrize("mode", ["suffix", "single"])
@pytest.mark.parametrize(("answers", "prompt"), [(("3", "5"), PROMPT), (("1,2", "1,3"), "Where is the red circle?")])
def test_reused_image_encoding_gives_identical_answers_and_margins(request, family, mode, answers, prompt):
    """Bit-identical to re-encoding the pixels per row, over several chunks (the source row in the first only)
    and with a teacher-forced answer prefix (a forward, not generate, that also reuses the encoding)."""
    tiny = request.getfixturevalue(family)
    runs = {reuse: swap_pair(tiny.model, tiny.processor, tiny.adapter, *_pair(tiny), prompt, *answers,
                             VisionProbeSettings(max_new_tokens=5, mode=mode, layer_batch=4, reuse_vision=reuse))
            for reuse in (True, False)}
    assert runs[True].reused_vision and not runs[False].reused_vision
    assert (runs[True].margin_prefix > 0) == ("," in answers[0])
    assert runs[True].answers == runs[False].answers
    assert runs[True].margins == runs[False].margins  # exact, not approximate
    assert all(math.isfinite(m) for m in runs[True].margins.values())


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
def test_every_qwen_family_reuses_the_encoding_identically(family):
    """Qwen3-VL's DeepStack features ride in the same encoder output and are narrowed per row too."""
    from tests.probe.conftest import _tiny

    tiny = _tiny(family)
    runs = {reuse: swap_pair(tiny.model, tiny.processor, tiny.adapter, *_pair(tiny), PROMPT, "2", "4",
                             VisionProbeSettings(max_new_tokens=4, layers=(0, 2, 3), layer_batch=2,
                                                 reuse_vision=reuse)) for reuse in (True, False)}
    assert runs[True].reused_vision
    assert runs[True].answers == runs[False].answers and runs[True].margins == runs[False].margins


@pytest.mark.parametrize("family", ["qwen", "llava"])
def test_vision_tower_runs_once_per_pair(request, family):
    tiny = request.getfixturevalue(family)
    target, source = _pair(tiny)
    counter = _VisionCounter(tiny, tiny.inputs(PROMPT, target))
    settings = VisionProbeSettings(max_new_tokens=3, layer_batch=4)
    rows = 2 + 4  # base, source, layers 0..3
    with counter:
        swap_pair(tiny.model, tiny.processor, tiny.adapter, target, source, PROMPT, "3", "5", settings)
    assert counter.rows and len(counter.rows) == 1 and counter.images == 2  # one pass: target and source
    counter.rows = []
    with counter:  # the pixel path: the source prefill, then every row of each of the two chunks
        swap_pair(tiny.model, tiny.processor, tiny.adapter, target, source, PROMPT, "3", "5",
                  settings.model_copy(update={"reuse_vision": False}))
    assert len(counter.rows) == 1 + 2 and counter.images == 1 + rows


def test_a_family_without_reusable_encodings_falls_back_to_pixels(qwen, images):
    class PixelsOnly(type(qwen.adapter)):
        def image_features(self, model, inputs):
            return None

    adapter = PixelsOnly(qwen.adapter.config)
    settings = VisionProbeSettings(max_new_tokens=4, layers=(0, 3))
    got = swap_pair(qwen.model, qwen.processor, adapter, *images, PROMPT, "3", "5", settings)
    want = swap_pair(qwen.model, qwen.processor, qwen.adapter, *images, PROMPT, "3", "5", settings)
    assert not got.reused_vision and want.reused_vision
    assert got.answers == want.answers and got.margins == want.margins


def test_select_images_narrows_every_per_image_field(qwen, images):
    encoded = qwen.adapter.image_features(qwen.model, repeat_rows([qwen.inputs(PROMPT, im) for im in images]))
    picked = select_images(encoded, [1, 0, 1])
    assert [p.data_ptr() for p in picked.pooler_output] == [encoded.pooler_output[i].data_ptr() for i in (1, 0, 1)]
    assert picked.last_hidden_state is None  # the encoder's own run is not passed on
    deep = DeepstackOutput(pooler_output=encoded.pooler_output, deepstack_features=[encoded.pooler_output[::-1]] * 2)
    got = select_images(deep, [0, 0, 1]).deepstack_features
    assert [[x.data_ptr() for x in layer] for layer in got] == [[encoded.pooler_output[i].data_ptr()
                                                                  for i in (1, 1, 0)]] * 2
    stacked = select_images(type(encoded)(pooler_output=torch.stack(encoded.pooler_output)), [1, 1])
    torch.testing.assert_close(stacked.pooler_output, torch.stack([encoded.pooler_output[1]] * 2), rtol=0, atol=0)
    # a field of unknown layout: no narrowing (the caller falls back to pixels)
    odd = DeepstackOutput(pooler_output=encoded.pooler_output, deepstack_features=[encoded.pooler_output[0]])
    assert select_images(odd, [0]) is None
    with pytest.raises(Exception, match="asked of an encoding of 2 images"):
        select_images(encoded, [2])


def test_reuse_vision_is_not_part_of_the_resume_key():
    """Identical answers either way: the flag stays out of the manifest and the resume key."""
    assert "reuse_vision" not in VisionProbeSettings(reuse_vision=False).model_dump()
    assert VisionProbeSettings().reuse_vision
