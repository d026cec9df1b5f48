from __future__ import annotations

import errno
import importlib
import json
import re

import numpy as np
import pytest
import torch
from safetensors import safe_open

from frankenlab.checkpoint import Checkpoint
from frankenlab.errors import OutputError, RecipeError
from frankenlab.io.shards import ShardWriter
from frankenlab.merge import (
    STANDARD,
    Recipe,
    assemble,
    assembly_state,
    make_plan,
    merge,
    open_inputs,
    verify_merged,
    write_merged,
)
from frankenlab.runtime import load_model, load_processor
from frankenlab.testing.models import checkpoint_state_dict, generate_with_image, tiny_image

assemble_mod = importlib.import_module("frankenlab.merge.assemble")
_LAYER = re.compile(r"^model\.(?:language_model\.)?layers\.(\d+)\.")


def _bits(t: torch.Tensor) -> torch.Tensor:
    """A view that compares bit patterns (NaN-safe, dtype-exact)."""
    return t.contiguous().view(torch.uint8)


def _equal_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))


def _expected_source(name: str, spec: str, rest: str = "IN") -> str:
    m = _LAYER.match(name)
    return spec.split(":")[int(m.group(1)) // 2] if m else rest  # 6 layers, thirds 2/2/2


@pytest.mark.parametrize("layout", ["hub", "transformers5"])
@pytest.mark.parametrize("spec", STANDARD)
def test_every_tensor_equals_its_declared_source(vlm_pairs, tmp_path, layout, spec):
    in_, rl = vlm_pairs[layout]
    out = merge(in_, rl, spec, tmp_path / "out").out
    got = checkpoint_state_dict(out)
    src = {"IN": checkpoint_state_dict(in_), "RL": checkpoint_state_dict(rl)}
    prov = json.loads((out / "provenance.json").read_text())
    assert set(got) == set(src["IN"]) == set(prov["tensors"])  # same key layout as the inputs
    for name, tensor in got.items():
        want = _expected_source(name, spec)
        assert prov["tensors"][name] == {"source": want, "alpha": None}
        assert _equal_bits(tensor, src[want][name]), name
    assert prov["rest"] == "IN" and prov["cuts"] == [2, 4] and prov["recipe"]["parts"] == spec
    with Checkpoint(in_) as a, Checkpoint(rl) as b:
        assert prov["inputs"] == {"IN": a.fingerprint, "RL": b.fingerprint}
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(got)
    with safe_open(str(out / index["weight_map"]["lm_head.weight"]), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "pt" and meta["frankenlab_recipe"].startswith(spec)
    assert json.loads(meta["frankenlab_inputs"]) == prov["inputs"]


def test_files_come_from_the_rest_model(hub_pair, tmp_path):
    in_, rl = hub_pair
    for rest, root in (("IN", in_), ("RL", rl)):
        out = merge(in_, rl, Recipe.parse("IN:RL:RL", rest=rest), tmp_path / rest).out
        for f in root.iterdir():
            if f.suffix != ".safetensors" and f.name != "model.safetensors.index.json":
                assert (out / f.name).read_bytes() == f.read_bytes(), f.name
        marker = json.loads((out / "generation_config.json").read_text()).get("frankenlab_test_marker")
        assert marker == ("RL" if rest == "RL" else None)
        got, src = checkpoint_state_dict(out), checkpoint_state_dict(root)
        for name in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight", "visual.merger.mlp.0.weight",
                     "visual.blocks.0.attn.qkv.weight"):
            assert _equal_bits(got[name], src[name])


def test_output_loads_with_transformers_and_generates(hub_pair, tmp_path):
    out = merge(*hub_pair, "IN:RL:RL", tmp_path / "out", verify=True).out
    model, processor = load_model(out, attn_implementation="eager"), load_processor(out)
    assert model.dtype == torch.bfloat16
    text = generate_with_image(model, processor, tiny_image(0), "What is shown?", max_new_tokens=3)
    assert isinstance(text, str)
    with Checkpoint(out) as c:  # every stored tensor is what the model holds
        params = dict(model.named_parameters())
        for name in c.names():
            assert _equal_bits(params[c.canonical(name)].data, c.read(name)), name


def test_interpolation_matches_the_formula(hub_pair, tmp_path):
    in_, rl = hub_pair
    out = merge(in_, rl, Recipe.parse("IN:IN:IN", alpha="mid=0.3,late=1.0"), tmp_path / "out", verify=True).out
    got, a, b = (checkpoint_state_dict(p) for p in (out, in_, rl))
    prov = json.loads((out / "provenance.json").read_text())["tensors"]
    n_interp = 0
    for name, tensor in got.items():
        m = _LAYER.match(name)
        block = int(m.group(1)) if m else None
        if block in (2, 3):
            x, y = a[name].float().numpy(), b[name].float().numpy()
            expected = torch.from_numpy(x + np.float32(0.3) * (y - x)).to(torch.bfloat16)
            assert _equal_bits(tensor, expected), name
            assert prov[name] == {"source": "RL", "alpha": 0.3, "anchor": "IN"}
            n_interp += 1
        elif block in (4, 5):
            assert _equal_bits(tensor, b[name]), name  # α=1 is the transplant, bit for bit
        else:
            assert _equal_bits(tensor, a[name]), name
    assert n_interp == 24
    assert any(not torch.equal(got[n], a[n]) and not torch.equal(got[n], b[n]) for n in got)


def test_alpha_zero_reproduces_in_exactly(hub_pair, tmp_path):
    in_, rl = hub_pair
    out = merge(in_, rl, Recipe.parse(takes=["RL:projector"], alpha="llm=0,projector=0,vision=0"),
                tmp_path / "out").out
    got, a = checkpoint_state_dict(out), checkpoint_state_dict(in_)
    assert set(got) == set(a)
    assert all(_equal_bits(got[n], a[n]) for n in a)


def test_dtype_option_casts_and_retags_config(hub_pair, tmp_path):
    in_, rl = hub_pair
    out = merge(in_, rl, Recipe.parse("IN:RL:RL", alpha="late=0.5"), tmp_path / "out", dtype="float32",
                verify=True).out
    got, a, b = (checkpoint_state_dict(p) for p in (out, in_, rl))
    assert {t.dtype for t in got.values()} == {torch.float32}
    name = "model.layers.2.mlp.up_proj.weight"
    assert torch.equal(got[name], b[name].float())
    late = "model.layers.5.mlp.up_proj.weight"
    x, y = a[late].float(), b[late].float()
    assert torch.equal(got[late], torch.from_numpy(x.numpy() + np.float32(0.5) * (y.numpy() - x.numpy())))
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"
    assert load_model(out).dtype == torch.float32


def test_bounded_shards(hub_pair, tmp_path):
    budget = 64 * 1024
    res = merge(*hub_pair, "RL:IN:RL", tmp_path / "out", max_shard_bytes=budget, verify=True)
    assert len(res.files) > 3
    with Checkpoint(res.out) as c:
        per_file: dict[str, int] = {}
        for name in c.names():
            m = c.meta(name)
            per_file[m.file] = per_file.get(m.file, 0) + m.nbytes
            assert m.nbytes <= budget or len([n for n in c.names() if c.meta(n).file == m.file]) == 1
        assert all(size <= budget or size == max(c.meta(n).nbytes for n in c.names()) for size in per_file.values())
    assert sorted(per_file) == sorted(res.files) == [f"model-{i:05d}-of-{len(res.files):05d}.safetensors"
                                                     for i in range(1, len(res.files) + 1)]


def test_existing_output_is_refused_unless_overwrite(hub_pair, tmp_path):
    out = tmp_path / "out"
    merge(*hub_pair, "IN:RL:RL", out)
    with pytest.raises(OutputError, match="already exists.*--overwrite"):
        merge(*hub_pair, "RL:IN:IN", out)
    merge(*hub_pair, "RL:IN:IN", out, overwrite=True)
    assert json.loads((out / "provenance.json").read_text())["recipe"]["parts"] == "RL:IN:IN"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("method", ["copy_range", "write_chunks"])
def test_disk_full_mid_write_leaves_nothing(hub_pair, tmp_path, monkeypatch, method):
    original = getattr(ShardWriter, method)
    calls = {"n": 0}

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ShardWriter, method, failing)
    recipe = Recipe.parse("IN:RL:RL", alpha="late=0.5")  # both copies and computed tensors
    out = tmp_path / "run" / "out"
    with pytest.raises(OutputError, match="nothing was left behind") as exc:
        merge(*hub_pair, recipe, out)
    assert "No space left on device" in str(exc.value)
    assert calls["n"] == 3
    assert not out.exists() and list((tmp_path / "run").iterdir()) == []


def test_disk_full_inside_the_writer_says_disk_full(hub_pair, tmp_path, monkeypatch):
    real = assemble_mod.Sources.chunks

    def chunks(self, t):
        for i, piece in enumerate(real(self, t)):
            yield piece
            if i == 0:
                raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(assemble_mod.Sources, "chunks", chunks)
    with pytest.raises(OutputError, match="No space left"):
        merge(*hub_pair, Recipe.parse("IN:RL:RL", alpha="late=0.5"), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_verify_catches_a_corrupted_tensor_and_foreign_inputs(hub_pair, tmp_path):
    in_, rl = hub_pair
    out = merge(in_, rl, Recipe.parse("IN:RL:RL", alpha="late=0.5"), tmp_path / "out").out
    with open_inputs(in_, rl) as models:
        report = verify_merged(out, models)
        assert report.tensors == len(checkpoint_state_dict(out)) and report.computed == 24
        with Checkpoint(out) as c:
            meta = c.meta("model.layers.3.mlp.up_proj.weight")
            header = len(c.index.headers[meta.file]) + 8
            start = json.loads(c.index.headers[meta.file])[meta.name]["data_offsets"][0]
        shard = out / meta.file
        data = bytearray(shard.read_bytes())
        data[header + start + 5] ^= 0x01
        shard.write_bytes(bytes(data))
        with pytest.raises(OutputError, match="'model.layers.3.mlp.up_proj.weight' differs from its declared"):
            verify_merged(out, models)
        with pytest.raises(OutputError, match="not the checkpoint the output was made from"):
            verify_merged(out, {"IN": models["RL"], "RL": models["IN"]})


def test_plan_for_other_inputs_is_refused(hub_pair, vlm_pairs, tmp_path):
    with open_inputs(*hub_pair) as models:
        plan = make_plan(Recipe.parse("IN:RL:RL"), models)
    with open_inputs(*vlm_pairs["transformers5"]) as others, pytest.raises(RecipeError, match="another IN"):
        write_merged(plan, others, tmp_path / "out")


# -- in memory -------------------------------------------------------------------------------
def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_in_memory_equals_on_disk_and_swaps_only_what_differs(vlm_pairs, tmp_path):
    in_, rl = vlm_pairs["transformers5"]
    model = None
    previous: dict[str, tuple] = {}
    for spec in STANDARD:
        model = assemble(spec, in_, rl, model=model)
        state = assembly_state(model)
        disk = merge(in_, rl, spec, tmp_path / spec.replace(":", "-")).out
        with Checkpoint(disk) as c:
            held = dict(model.named_parameters())
            for name in c.names():
                assert _equal_bits(held[c.canonical(name)].data, c.read(name)), (spec, name)
        # only the layers whose source changed were copied in
        sources = {t: src for t, src in json.loads((disk / "provenance.json").read_text())["tensors"].items()}
        changed = {n for n, s in sources.items() if previous and previous[n] != s}
        if previous:
            assert set(state.loaded) == changed
            assert all(_LAYER.match(n) for n in state.loaded)
        previous = sources
    assert assembly_state(model).provenance["recipe"]["parts"] == STANDARD[-1]


def test_in_memory_interpolation_and_dtype_match_disk(hub_pair, tmp_path):
    recipe = Recipe.parse("IN:RL:RL", alpha="mid=0.3", takes=["RL:projector"], rest="RL")
    model = assemble(recipe, *hub_pair, dtype="float32")
    assert model.dtype == torch.float32
    out = merge(*hub_pair, recipe, tmp_path / "out", dtype="float32").out
    with Checkpoint(out) as c:
        held = dict(model.named_parameters())
        for name in c.names():
            assert _equal_bits(held[c.canonical(name)].data, c.read(name)), name


def test_in_memory_into_a_model_loaded_elsewhere(hub_pair):
    in_, rl = hub_pair
    model = load_model(in_)
    before = _state(model)
    assemble("IN:IN:RL", in_, rl, model=model, assume="IN")
    state = assembly_state(model)
    assert len(state.loaded) == 24 and all(_LAYER.match(n).group(1) in ("4", "5") for n in state.loaded)
    rl_model = load_model(rl)
    after, rl_state = _state(model), _state(rl_model)
    for name, value in after.items():
        m = _LAYER.match(name)
        want = rl_state[name] if m and int(m.group(1)) >= 4 else before[name]
        assert _equal_bits(value, want), name
    assemble("IN:IN:IN", in_, rl, model=model)  # and back, from the recorded state
    assert len(assembly_state(model).loaded) == 24
    assert all(_equal_bits(v, before[k]) for k, v in _state(model).items())


def test_in_memory_tied_embeddings(tied_text_pair):
    in_, rl = tied_text_pair
    model = assemble(Recipe.parse("IN:RL:RL", takes=["RL:embed"]), in_, rl)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    with Checkpoint(rl) as c:
        assert _equal_bits(model.lm_head.weight.data, c.read("model.embed_tokens.weight"))


def test_intra_op_threads_are_restored():
    from frankenlab.merge.compute import intra_op_threads

    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), intra_op_threads(before + 1):
        assert torch.get_num_threads() == before + 1
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with intra_op_threads(None):
        assert torch.get_num_threads() == before
