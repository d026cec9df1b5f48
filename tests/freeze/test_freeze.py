from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from frankenlab.checkpoint import Checkpoint
from frankenlab.cli.app import main
from frankenlab.errors import FreezeError, RegionError
from frankenlab.freeze import apply_freeze, emit_list, emit_regex, frozen, parse_freeze, region_counts, verify_frozen
from frankenlab.testing.models import build_tiny_model, save_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("freeze")
    return save_tiny_checkpoint("qwen2_5_vl", root / "m", n_llm_layers=6, n_vision_blocks=2, with_processor=False)


def _model():
    return build_tiny_model("qwen2_5_vl", seed=1, n_llm_layers=6, n_vision_blocks=2)


def test_training_step_leaves_frozen_bit_identical():
    model = _model()
    adapter = _adapter_of(model)
    spec = parse_freeze("late,projector", adapter)
    report = apply_freeze(model, adapter, spec)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # weight decay would move frozen weights if they were (wrongly) stepped
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    ids = torch.randint(0, 100, (2, 8))
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    opt.step()
    frozen_names = set(report.frozen_names)
    assert frozen_names, "nothing frozen"
    layers_frozen = {adapter.classify(n).block for n in frozen_names if adapter.classify(n).section == "llm"}
    assert layers_frozen == {4, 5}
    assert any(adapter.classify(n).section == "projector" for n in frozen_names)
    for n, p in model.named_parameters():
        if n in frozen_names:
            assert torch.equal(p, before[n]), f"frozen {n} moved"
        elif p.grad is not None and p.grad.abs().sum() > 0:
            assert not torch.equal(p, before[n]), f"trainable {n} did not move"
    rows = {r["region"]: r for r in report.rows}
    assert rows["late"]["trainable"] == 0 and rows["projector"]["trainable"] == 0
    assert rows["mid"]["trainable"] == rows["mid"]["params"] > 0


def _adapter_of(model):
    from frankenlab.arch import adapter_for

    return adapter_for(model.config.to_dict())


def test_frozen_context_restores_on_error():
    model = _model()
    adapter = _adapter_of(model)
    with pytest.raises(RuntimeError), frozen(model, adapter, parse_freeze("early", adapter)) as rep:
        assert rep.n_frozen_tensors > 0
        assert not model.get_parameter(adapter.llm_layer_path(0) + ".mlp.up_proj.weight").requires_grad
        raise RuntimeError("boom")
    assert all(p.requires_grad for p in model.parameters())
    counts = region_counts(model, adapter)
    assert all(r["trainable"] == r["params"] for r in counts)


def test_spec_matching_nothing_is_refused(tiny):
    with Checkpoint(tiny) as c:
        spec = parse_freeze("vision", c.adapter)
        llm_only = [n for n in c.canonical_names() if c.info(n).section == "llm"]
        with pytest.raises(FreezeError, match="matches none"):
            spec.select(c.adapter, llm_only)
        with pytest.raises(RegionError):
            parse_freeze("llm:3-12", c.adapter)


def test_verify_catches_modified_frozen_tensor(tiny, tmp_path):
    after = tmp_path / "after"
    after.mkdir()
    for f in tiny.iterdir():
        if f.is_file():
            (after / f.name).write_bytes(f.read_bytes())
    sd = load_file(str(after / "model.safetensors"))
    frozen_name = "model.layers.5.mlp.up_proj.weight"
    trained_name = "model.layers.1.mlp.up_proj.weight"
    sd[frozen_name] = sd[frozen_name].clone()
    sd[frozen_name].view(-1)[7] = torch.nextafter(sd[frozen_name].view(-1)[7], torch.tensor(1e9))  # one ulp
    sd[trained_name] = sd[trained_name] + 1
    save_file(sd, str(after / "model.safetensors"), metadata={"format": "pt"})
    r = verify_frozen(tiny, after, "late")
    assert not r.ok
    assert r.frozen_changed == ["model.language_model.layers.5.mlp.up_proj.weight"]
    assert r.other_changed == ["model.language_model.layers.1.mlp.up_proj.weight"]
    assert verify_frozen(tiny, after, "early,mid").ok is False  # layer 1 is early
    assert verify_frozen(tiny, after, "mid").ok
    # CLI: 1 when a frozen tensor changed, 0 when all held, 2 on bad input
    for args, code in ((["late"], 1), (["mid"], 0), (["bogus"], 2)):
        with pytest.raises(SystemExit) as exc:
            main(["freeze", "verify", str(tiny), str(after), "--frozen", *args])
        assert exc.value.code == code


def test_verify_json_lists_changes(tiny, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["freeze", "verify", str(tiny), str(tiny), "--frozen", "late", "--json"])
    assert exc.value.code == 0
    d = json.loads(capsys.readouterr().out)
    assert d["ok"] and not d["frozen_changed"] and len(d["frozen_identical"]) > 0


def test_emit_regex_matches_exactly_the_frozen(tiny):
    import re

    with Checkpoint(tiny) as c:
        names = c.canonical_names()
        for text in ("late", "projector", "vision", "llm:2", "mid,vision:1"):
            spec = parse_freeze(text, c.adapter)
            for layout in ("transformers5", "hub"):
                chosen = set(emit_list(spec, c.adapter, names, layout))
                rx = re.compile(emit_regex(spec, c.adapter, names, layout))
                laid_out = [c.adapter.to_layout(n, layout) for n in names]
                assert {n for n in laid_out if rx.match(n)} == chosen
        hub_late = emit_list(parse_freeze("late", c.adapter), c.adapter, names, "hub")
        assert "model.layers.4.mlp.up_proj.weight" in hub_late
