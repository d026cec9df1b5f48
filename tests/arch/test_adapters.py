"""The layer map of every tiny family, checked against the model's own module tree."""

from __future__ import annotations

import pytest
import torch

from frankenlab.arch import adapter_for, supported_model_types
from frankenlab.checkpoint import Checkpoint
from frankenlab.errors import ArchitectureError
from frankenlab.testing.models import FAMILIES, build_tiny_model, save_tiny_checkpoint


def _stacks(model: torch.nn.Module) -> dict[str, torch.nn.ModuleList]:
    """Find the decoder-layer and vision-block lists by their element classes, not by path."""
    found: dict[str, torch.nn.ModuleList] = {}
    for _, mod in model.named_modules():
        if not isinstance(mod, torch.nn.ModuleList) or len(mod) == 0:
            continue
        cls = type(mod[0]).__name__
        if cls.endswith("DecoderLayer"):
            found["llm"] = mod
        elif "Vision" in cls and ("Block" in cls or "Layer" in cls) or cls.endswith("EncoderLayer"):
            found["vision"] = mod
    return found


def _owner_index(stack: torch.nn.ModuleList, param: torch.nn.Parameter) -> int | None:
    for i, block in enumerate(stack):
        if any(p is param for p in block.parameters()):
            return i
    return None


@pytest.fixture(scope="module", params=FAMILIES)
def family_ckpts(request, tmp_path_factory):
    family = request.param
    root = tmp_path_factory.mktemp(family)
    kw = dict(seed=3, n_llm_layers=3, n_vision_blocks=2, with_processor=False)
    hub = save_tiny_checkpoint(family, root / "hub", layout="hub", **kw)
    t5 = save_tiny_checkpoint(family, root / "t5", layout="transformers5", **kw)
    model = build_tiny_model(family, seed=3, n_llm_layers=3, n_vision_blocks=2)
    return family, hub, t5, model


def test_layer_map_matches_module_tree(family_ckpts):
    family, hub, _, model = family_ckpts
    stacks = _stacks(model)
    params = dict(model.named_parameters(remove_duplicate=False))
    with Checkpoint(hub) as c:
        adapter = c.adapter
        assert adapter.n_llm_layers == len(stacks["llm"]) == 3
        assert adapter.n_vision_blocks == (len(stacks["vision"]) if "vision" in stacks else 0)
        seen_layers: set[int] = set()
        for disk in c.names():
            info = c.info(disk)
            assert info.name in params, f"{family}: canonical {info.name} is not a parameter of the model"
            param = params[info.name]
            if info.section in ("llm", "vision") and info.block is not None:
                owner = _owner_index(stacks[info.section], param)
                assert owner == info.block, f"{info.name}: adapter says block {info.block}, tree says {owner}"
                expected = owner + 1 if info.section == "llm" else owner - len(stacks["vision"])
                assert info.layer == expected
                # and the adapter's module path resolves to that very block
                assert model.get_submodule(adapter.module_path_for(info)) is stacks[info.section][owner]
                seen_layers.add(info.layer)
            else:
                for stack in stacks.values():
                    assert _owner_index(stack, param) is None, f"{info.name} is inside a block but unclassified"
            if info.section == "projector":
                assert info.layer == 0
                assert any(info.name.startswith(p + ".") for p in adapter.projector_paths)
            if info.section == "head":
                assert param is model.get_output_embeddings().weight
            if info.section == "embed":
                assert param is model.get_input_embeddings().weight
        assert adapter.decoder_layers(model) is stacks["llm"]
        n_vis = adapter.n_vision_blocks
        assert seen_layers == set(range(-n_vis, 0)) | set(range(1, 4))


def test_both_layouts_give_identical_canonical_names_and_tensors(family_ckpts):
    family, hub, t5, _ = family_ckpts
    with Checkpoint(hub) as a, Checkpoint(t5) as b:
        assert sorted(a.canonical_names()) == sorted(b.canonical_names())
        for name in a.canonical_names():
            assert torch.equal(a.read(name), b.read(name))
            assert a.info(name) == b.info(name)
        if a.adapter.hub_to_canonical:
            assert (a.layout, b.layout) == ("hub", "transformers5")
            # the layout read is the layout that can be written back
            for disk in a.names():
                assert a.adapter.to_layout(a.canonical(disk), "hub") == disk
            for disk in b.names():
                assert b.adapter.to_layout(b.canonical(disk), "transformers5") == disk
        else:
            assert a.layout == b.layout == "hub"


def test_unknown_model_type_lists_supported():
    with pytest.raises(ArchitectureError) as exc:
        adapter_for({"model_type": "gpt2", "num_hidden_layers": 2})
    msg = str(exc.value)
    assert "gpt2" in msg and "qwen2_5_vl" in msg and "adding-an-architecture" in msg
    assert "llava" in supported_model_types()


def test_unclaimed_tensor_is_an_error():
    a = adapter_for({"model_type": "llama", "num_hidden_layers": 2})
    with pytest.raises(ArchitectureError, match="claimed by no rule"):
        a.classify("model.layers.0.mystery.weight")
    with pytest.raises(ArchitectureError, match="declares 2"):
        a.classify("model.layers.5.mlp.up_proj.weight")


def test_missing_layer_count_is_an_error():
    with pytest.raises(ArchitectureError, match="no LLM layer count"):
        adapter_for({"model_type": "llama"})
    with pytest.raises(ArchitectureError, match="no vision block count"):
        adapter_for({"model_type": "qwen2_5_vl", "text_config": {"num_hidden_layers": 2}})


def test_llava_legacy_vision_model_prefix():
    a = adapter_for({"model_type": "llava", "text_config": {"num_hidden_layers": 2},
                     "vision_config": {"num_hidden_layers": 2}})
    legacy = "vision_tower.vision_model.encoder.layers.1.mlp.fc2.weight"
    assert a.to_canonical(legacy) == "model.vision_tower.encoder.layers.1.mlp.fc2.weight"
    info = a.classify(a.to_canonical(legacy))
    assert (info.section, info.layer, info.kind) == ("vision", -1, "fc2")
    assert a.to_canonical("language_model.lm_head.weight") == "lm_head.weight"
