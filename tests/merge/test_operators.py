"""Merge operators beyond transplant/interpolation: extrapolation (α outside [0, 1]) and rank-K transplants.

Expected values are computed independently here: extrapolation with plain torch float32 arithmetic
cast to the dtype, rank-K against numpy's SVD of the same float32 delta, and bit for bit against the
same torch operations written out in the test.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import yaml

from frankenlab.checkpoint import Checkpoint
from frankenlab.cli.app import main
from frankenlab.errors import OutputError, RecipeError
from frankenlab.merge import (
    Recipe,
    assemble,
    assembly_state,
    load_recipes,
    make_plan,
    merge,
    open_inputs,
    to_mergekit,
    verify_merged,
    write_merged,
)
from frankenlab.merge.compute import intra_op_threads, low_rank_delta
from frankenlab.testing.models import checkpoint_state_dict

_LAYER = re.compile(r"^model\.(?:language_model\.)?layers\.(\d+)\.")
LATE = (4, 5)  # 6 LLM layers, thirds 2/2/2


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.uint8)


def _equal_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(_bits(a), _bits(b))


def _block(name: str) -> int | None:
    m = _LAYER.match(name)
    return int(m.group(1)) if m else None


def _torch_rank_k(a: torch.Tensor, b: torch.Tensor, k: int, out: torch.dtype, alpha: float | None = None,
                  threads: int = 1) -> torch.Tensor:
    """The documented operation sequence, written out independently of merge.compute."""
    x = a.float().reshape(a.shape[0], -1)
    d = b.float().reshape(b.shape[0], -1) - x
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        u, s, vh = torch.linalg.svd(d, full_matrices=False)
        low = (u[:, :k] * s[:k]) @ vh[:k]
    finally:
        torch.set_num_threads(old)
    if alpha is not None:
        low = low * alpha
    return (low + x).to(out).reshape(a.shape)


def _numpy_rank_k(a: torch.Tensor, b: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """numpy's SVD of the same float32 delta (in float64): best rank-K approximation and all σ."""
    x = a.float().numpy().reshape(a.shape[0], -1)
    d = (b.float().numpy().reshape(b.shape[0], -1) - x).astype(np.float64)  # the float32 delta, exactly
    u, s, vh = np.linalg.svd(d, full_matrices=False)
    return (u[:, :k] * s[:k]) @ vh[:k], s


# -- recipes ---------------------------------------------------------------------------------------
def test_rank_parses_from_strings_mappings_and_yaml(tmp_path):
    r = Recipe.parse("IN:IN:IN", rank="mid=4, late=16", alpha="late=1.5")
    assert r.rank == (("mid", 4), ("late", 16)) and r.alpha == (("late", 1.5),)
    assert r.spec() == "IN:IN:IN --alpha late=1.5 --rank mid=4,late=16 --rest IN"
    assert r.to_dict()["rank"] == {"mid": 4, "late": 16} and r.labels() == {"IN", "RL"}
    d = r.to_dict()
    assert Recipe.parse(d["parts"], alpha=d["alpha"], rank=d["rank"], rest=d["rest"]) == r
    assert Recipe.parse(rank={"late": 8}).rank == (("late", 8),)  # a rank alone is a recipe
    p = tmp_path / "v.yaml"
    p.write_text("variants:\n  - name: late-r8\n    recipe: IN:IN:IN\n    rank: {late: 8}\n"
                 "  - name: expo\n    recipe: IN:IN:IN\n    alpha: late=2\n    rank: late=8\n")
    v = load_recipes(p)
    assert v["late-r8"].rank == (("late", 8),) and v["expo"].alpha == (("late", 2.0),)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"rank": "late"}, "REGION=K"),
    ({"rank": "late=0"}, "at least 1"),
    ({"rank": "late=-3"}, "at least 1"),
    ({"rank": "late=2.5"}, "not a whole number"),
    ({"rank": {"late": 2.0}}, "not a whole number"),
    ({"rank": {"late": True}}, "not a whole number"),
    ({"rank": "late=4,late=8"}, "given twice"),
    ({"alpha": "late=4.5"}, r"outside \[-1, 4\].*extrapolates beyond RL.*ExPO"),
    ({"alpha": "late=-1.01"}, r"outside \[-1, 4\]"),
])
def test_bad_operators_say_what_is_allowed(kwargs, message):
    with pytest.raises(RecipeError, match=message):
        Recipe.parse("IN:IN:IN", **kwargs)


@pytest.mark.parametrize("a", [-1.0, -0.5, 1.5, 4.0])
def test_alpha_bounds_are_inclusive(a):
    assert Recipe.parse("IN:IN:IN", alpha={"late": a}).alpha == (("late", a),)


# -- plans -----------------------------------------------------------------------------------------
def test_rank_plan_records_k_per_tensor_and_per_region(hub_pair):
    with open_inputs(*hub_pair) as models:
        plan = make_plan(Recipe.parse("IN:RL:IN", rank="late=32"), models)
    by = {t.out_name: t for t in plan.tensors}
    # 32 truncates q/o/gate/up/down (min dimension 64) but not k/v (32 rows): those keep the full delta
    for t in plan.tensors:
        if _block(t.name) in LATE:
            assert (t.source, t.rank, t.alpha) == ("RL", 32, None), t.name
            full = len(t.shape) == 1 or min(t.shape) <= 32
            assert t.full_delta == full and (t.rank_k is None) == full, t.name
            assert t.copy_from == ("RL" if full else None), t.name
        else:
            assert t.rank is None and t.rank_k is None
    q = by["model.layers.4.self_attn.q_proj.weight"]
    assert q.provenance() == {"source": "RL", "alpha": None, "anchor": "IN", "rank": 32, "full_delta": False}
    assert q.formula == "IN + SVD_32(RL − IN)"
    assert by["model.layers.4.self_attn.k_proj.weight"].provenance()["full_delta"] is True
    assert by["model.layers.4.input_layernorm.weight"].provenance()["full_delta"] is True
    prov = plan.provenance()
    assert prov["rank"] == {"late": 32} and prov["alpha"] == {} and prov["recipe"]["rank"] == {"late": 32}
    assert prov["operators"] == [{"option": "rank", "region": "late", "rank": 32, "tensors": 24, "truncated": 10,
                                  "full_delta": 14}]
    llm = [(r["first"], r["last"], r["source"], r["alpha"], r["rank"]) for r in plan.summary()
           if r["section"] == "llm"]
    assert llm == [(0, 1, "IN", None, None), (2, 3, "RL", None, None), (4, 5, "RL", None, 32)]
    assert [r["truncated"] for r in plan.summary() if r["section"] == "llm"] == [0, 0, 10]
    assert plan.warnings == ()


def test_rank_keeping_every_delta_is_said_and_copies_rl(hub_pair, tmp_path):
    in_, rl = hub_pair
    with open_inputs(in_, rl) as models:
        plan = make_plan(Recipe.parse("IN:IN:IN", rank="late=64"), models)
    assert any("keeps the full delta of every matrix of 'late'" in w and "K < 64" in w for w in plan.warnings)
    out = merge(in_, rl, Recipe.parse("IN:IN:IN", rank="late=64"), tmp_path / "out", verify=True).out
    got, b = checkpoint_state_dict(out), checkpoint_state_dict(rl)
    assert all(_equal_bits(got[n], b[n]) for n in got if _block(n) in LATE)  # RL exactly, no SVD round trip
    assert json.loads((out / "provenance.json").read_text()).get("svd") is None  # nothing was truncated


def test_rank_and_alpha_compose_and_alpha_zero_is_in(hub_pair):
    with open_inputs(*hub_pair) as models:
        plan = make_plan(Recipe.parse("IN:IN:IN", alpha="late=2,mid=0", rank="late=4,mid=4"), models)
    by = {t.out_name: t for t in plan.tensors}
    t = by["model.layers.4.mlp.up_proj.weight"]
    assert (t.alpha, t.rank_k, t.copy_from, t.formula) == (2.0, 4, None, "IN + 2·SVD_4(RL − IN)")
    assert t.region == "--alpha late=2 + --rank late=4"
    assert by["model.layers.2.mlp.up_proj.weight"].copy_from == "IN"  # α = 0: IN whatever the rank
    ops = {(o["option"], o["region"]): o["tensors"] for o in plan.provenance()["operators"]}
    assert ops == {("alpha", "late"): 24, ("alpha", "mid"): 24, ("rank", "late"): 24, ("rank", "mid"): 24}


# -- values ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [1.5, 4.0, -0.5, -1.0])
def test_extrapolated_weights_bit_for_bit(hub_pair, tmp_path, alpha):
    in_, rl = hub_pair
    out = merge(in_, rl, Recipe.parse("IN:RL:IN", alpha={"late": alpha}), tmp_path / "out", verify=True).out
    got, a, b = (checkpoint_state_dict(p) for p in (out, in_, rl))
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["alpha"] == {"late": alpha}
    for name, tensor in got.items():
        if _block(name) in LATE:
            x, y = a[name].to(torch.float32), b[name].to(torch.float32)
            d = y - x
            expected = (d * torch.tensor(alpha, dtype=torch.float32) + x).to(torch.bfloat16)
            assert _equal_bits(tensor, expected), name
            assert prov["tensors"][name] == {"source": "RL", "alpha": alpha, "anchor": "IN"}
        else:
            assert _equal_bits(tensor, (b if _block(name) in (2, 3) else a)[name]), name
    # the step from IN is α times ΔRL (up to bf16 rounding): beyond RL for α > 1, away from it for α < 0
    name = "model.layers.4.mlp.up_proj.weight"
    moved, delta = got[name].double() - a[name].double(), b[name].double() - a[name].double()
    assert float((moved * delta).sum() / (delta * delta).sum()) == pytest.approx(alpha, rel=0.02)


def test_rank_k_matches_numpy_svd(hub_pair, tmp_path):
    in_, rl = hub_pair
    k = 4
    out = merge(in_, rl, Recipe.parse("IN:IN:IN", rank={"late": k}), tmp_path / "out", dtype="float32",
                verify=True).out
    got, a, b = (checkpoint_state_dict(p) for p in (out, in_, rl))
    n_checked = 0
    for name, tensor in got.items():
        if _block(name) not in LATE:
            assert _equal_bits(tensor, a[name].float()), name
            continue
        if tensor.ndim == 1:
            assert _equal_bits(tensor, b[name].float()), name  # 1-D: RL's, the full delta
            continue
        low_np, s_np = _numpy_rank_k(a[name], b[name], k)
        moved = tensor.double().numpy() - a[name].double().numpy()  # float32 W − IN, evaluated exactly
        scale = float(np.linalg.norm(low_np))
        # float32 SVD: subspace error ~ ε₃₂·σ₁/(σ_K − σ_K+1), here up to ~1e-5; bf16 resolution is 4e-3
        assert np.linalg.norm(moved - low_np) <= 1e-4 * scale, name
        s_got = np.linalg.svd(moved, compute_uv=False)
        np.testing.assert_allclose(s_got[:k], s_np[:k], rtol=1e-4)
        assert s_got[k] <= 1e-5 * s_np[0], name  # nothing beyond rank K (up to float32 rounding of W)
        assert s_np[k] > 1e-2 * s_np[0]  # and the full delta had more: the truncation did something
        n_checked += 1
    assert n_checked == 14


def test_rank_k_in_checkpoint_dtype_is_the_float32_sum_cast(hub_pair, tmp_path):
    in_, rl = hub_pair
    out = merge(in_, rl, Recipe.parse("IN:IN:IN", rank={"late": 4}), tmp_path / "out").out
    got, a, b = (checkpoint_state_dict(p) for p in (out, in_, rl))
    name = "model.layers.5.mlp.gate_proj.weight"
    assert got[name].dtype == torch.bfloat16
    assert _equal_bits(got[name], _torch_rank_k(a[name], b[name], 4, torch.bfloat16))
    low_np, _ = _numpy_rank_k(a[name], b[name], 4)
    exact = a[name].double().numpy() + low_np  # IN + numpy's rank-4 delta, unrounded
    err = np.abs(got[name].double().numpy() - exact)
    # a correctly rounded bf16 is within half an ulp (2⁻⁸ relative); float32 SVD adds ~1e-5 of the delta
    assert np.all(err <= np.abs(exact) * 2.0 ** -8 + 1e-4 * np.abs(low_np).max())
    ref = torch.from_numpy(exact.astype(np.float32)).to(torch.bfloat16)
    assert (got[name] != ref).float().mean() < 0.02  # differs only next to a bf16 rounding boundary


@pytest.mark.parametrize("layout", ["hub", "transformers5"])
def test_rank_k_bit_identical_on_disk_in_memory_and_recomputed(vlm_pairs, tmp_path, layout):
    in_, rl = vlm_pairs[layout]
    recipe = Recipe.parse("IN:RL:IN", alpha="late=1.5", rank="late=4,vision=2")
    disk = merge(in_, rl, recipe, tmp_path / "out", verify=True).out
    with open_inputs(in_, rl) as models:  # other chunking: same bits
        small = write_merged(make_plan(recipe, models), models, tmp_path / "chunked", chunk_elems=100, verify=True)
    got, a, b = (checkpoint_state_dict(p) for p in (disk, in_, rl))
    assert all(_equal_bits(got[n], v) for n, v in checkpoint_state_dict(small.out).items())
    prov = json.loads((disk / "provenance.json").read_text())
    assert prov["svd"]["threads"] == 1 and prov["svd"]["function"] == "torch.linalg.svd"
    n_rank = 0
    for name, tensor in got.items():
        rec = prov["tensors"][name]
        if rec.get("rank") is not None and not rec["full_delta"]:
            k = rec["rank"]
            assert _equal_bits(tensor, _torch_rank_k(a[name], b[name], k, torch.bfloat16, rec["alpha"])), name
            n_rank += 1
    patch = next(n for n in got if "patch_embed" in n)
    assert got[patch].ndim == 5 and prov["tensors"][patch]["rank"] == 2  # viewed as (32, 1176)
    assert n_rank == 14 + 2 * 5 + 1  # late matrices, 5 matrices per vision block, patch embedding
    model = assemble(recipe, in_, rl)
    with Checkpoint(disk) as c:
        held = dict(model.named_parameters())
        for name in c.names():
            assert _equal_bits(held[c.canonical(name)].data, c.read(name)), name
    assert assembly_state(model).provenance["svd"]["threads"] == 1
    # a sweep: away to a transplant and back re-computes only what differs, to the same bits
    assemble("IN:RL:IN", in_, rl, model=model)
    assemble(recipe, in_, rl, model=model)
    assert len(assembly_state(model).loaded) == 24 + 2 * 12 + 1
    with Checkpoint(disk) as c:
        held = dict(model.named_parameters())
        assert all(_equal_bits(held[c.canonical(n)].data, c.read(n)) for n in c.names())


def test_svd_is_repeatable_and_threads_are_recorded(hub_pair, tmp_path):
    in_, rl = hub_pair
    with Checkpoint(in_) as a, Checkpoint(rl) as b:
        x, y = a.read("model.layers.4.mlp.up_proj.weight"), b.read("model.layers.4.mlp.up_proj.weight")
    first = low_rank_delta(x, y, 4, torch.bfloat16)
    with intra_op_threads(2):  # the caller's thread setting does not leak into the fixed-count SVD
        again = low_rank_delta(x, y, 4, torch.bfloat16, threads=1)
    assert _equal_bits(first, again)
    out = merge(in_, rl, Recipe.parse("IN:IN:IN", rank="late=4"), tmp_path / "out", threads=2, verify=True).out
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["svd"]["threads"] == 2
    with open_inputs(in_, rl) as models:
        assert verify_merged(out, models).computed == 14  # recomputed with the recorded 2 threads


def test_verify_catches_a_corrupted_rank_tensor(hub_pair, tmp_path):
    in_, rl = hub_pair
    out = merge(in_, rl, Recipe.parse("IN:IN:IN", rank="late=4"), tmp_path / "out").out
    name = "model.layers.5.self_attn.o_proj.weight"
    with Checkpoint(out) as c:
        meta = c.meta(name)
        header = len(c.index.headers[meta.file]) + 8
        start = json.loads(c.index.headers[meta.file])[meta.name]["data_offsets"][0]
    shard = out / meta.file
    data = bytearray(shard.read_bytes())
    data[header + start + 3] ^= 0x01
    shard.write_bytes(bytes(data))
    with open_inputs(in_, rl) as models, \
            pytest.raises(OutputError, match=r"o_proj.weight' differs from IN \+ SVD_4\(RL − IN\).*thread"):
        verify_merged(out, models)


def test_in_memory_rank_on_tied_embeddings(tied_text_pair, tmp_path):
    in_, rl = tied_text_pair
    recipe = Recipe.parse("IN:IN:IN", rank="embed=2")
    model = assemble(recipe, in_, rl)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    with Checkpoint(in_) as a, Checkpoint(rl) as b:
        name = "model.embed_tokens.weight"
        want = _torch_rank_k(a.read(name), b.read(name), 2, torch.bfloat16)
    assert _equal_bits(model.model.embed_tokens.weight.data, want)
    out = merge(in_, rl, recipe, tmp_path / "out", verify=True).out
    assert _equal_bits(checkpoint_state_dict(out)[name], want)


def test_rank_of_a_zero_delta_is_in_exactly(hub_pair, tmp_path):
    in_, _ = hub_pair
    out = merge(in_, in_, Recipe.parse("IN:IN:IN", rank="llm=2"), tmp_path / "out", verify=True).out
    got, a = checkpoint_state_dict(out), checkpoint_state_dict(in_)
    assert all(_equal_bits(got[n], a[n]) for n in a)


# -- exports, CLI, study ---------------------------------------------------------------------------
def test_mergekit_refuses_rank_and_extrapolates_in_float32(hub_pair):
    in_, rl = map(str, hub_pair)
    with open_inputs(*hub_pair) as models:
        ranked = to_mergekit(make_plan(Recipe.parse("IN:IN:RL", rank="late=4"), models))
        expo = to_mergekit(make_plan(Recipe.parse("IN:IN:IN", alpha="late=1.5"), models))
    assert not ranked.exact
    assert any(w.startswith("unsupported: --rank late=4") and "full delta" in w for w in ranked.warnings)
    slices = yaml.safe_load(ranked.yaml)["modules"]["text_decoder"]["slices"]
    assert [s["sources"][0]["model"] for s in slices] == [in_, rl]  # written as the full delta: RL
    cfg = yaml.safe_load(expo.yaml)
    assert cfg["merge_method"] == "linear" and cfg["dtype"] == "float32" and cfg["out_dtype"] == "bfloat16"
    late = cfg["modules"]["text_decoder"]["slices"][-1]["sources"]
    assert [(s["model"], s["parameters"]["weight"]) for s in late] == [(in_, -0.5), (rl, 1.5)]
    assert expo.exact and any("extrapolates" in w for w in expo.warnings)


def _run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


def test_cli_rank_and_extrapolation(capsys, hub_pair, tmp_path):
    in_, rl = map(str, hub_pair)
    code, stdout, err = _run(capsys, "merge", "--in", in_, "--rl", rl, "--recipe", "IN:RL:IN", "--alpha",
                             "late=1.5", "--rank", "late=4", "--dry-run")
    assert code == 0, err
    assert "rank" in stdout and "IN+α·SVD_K(RL−IN)" in stdout
    assert "--rank late=4: 14 matrix(es) truncated to rank 4; 10 tensor(s) keep the full delta" in stdout
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, "merge", "--in", in_, "--rl", rl, "--recipe", "IN:IN:IN", "--rank", "late=4",
                             "--out", str(out), "--verify")
    assert code == 0, err
    assert "verified" in stdout
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["rank"] == {"late": 4} and prov["tensors"]["model.layers.4.mlp.up_proj.weight"]["rank"] == 4
    code, _, err = _run(capsys, "merge", "--in", in_, "--rl", rl, "--recipe", "IN:IN:IN", "--alpha", "late=5",
                        "--dry-run")
    assert code == 2 and "outside [-1, 4]" in err
    code, _, err = _run(capsys, "merge", "--in", in_, "--rl", rl, "--rank", "late=0", "--dry-run")
    assert code == 2 and "at least 1" in err


def test_study_custom_variants_take_rank():
    from frankenlab.study import parse_config
    from frankenlab.study.stages import variant_recipes

    cfg = parse_config({"out": "o", "recipes": [{"in": "a", "rl": "b"}], "variants": ["IN:RL:RL"],
                        "custom_variants": [{"name": "late-r8", "recipe": "IN:IN:IN", "rank": {"late": 8}},
                                            {"name": "expo", "recipe": "IN:IN:IN", "alpha": {"late": 1.5}}]})
    recipes = variant_recipes(cfg)
    assert recipes["late-r8"].rank == (("late", 8),) and recipes["expo"].alpha == (("late", 1.5),)
    bad = parse_config({"out": "o", "recipes": [{"in": "a", "rl": "b"}],
                        "custom_variants": [{"name": "x", "recipe": "IN:IN:IN", "rank": {"late": 0}}]})
    with pytest.raises(RecipeError, match="at least 1"):
        variant_recipes(bad)
