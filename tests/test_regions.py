from __future__ import annotations

import pytest

from frankenlab.arch import adapter_for
from frankenlab.errors import RegionError
from frankenlab.regions import Partition, default_cuts, parse_cuts, parse_region, parse_regions, standard_regions


def _vlm(n_llm: int = 28, n_vis: int = 32):
    return adapter_for({"model_type": "qwen2_5_vl", "text_config": {"num_hidden_layers": n_llm},
                        "vision_config": {"depth": n_vis}})


def _spans(p: Partition) -> list[tuple[str, int, int]]:
    return [(r.name, r.lo, r.hi) for r in p.regions()]


def test_default_thirds():
    assert _spans(Partition.make(28)) == [("early", 0, 8), ("mid", 9, 17), ("late", 18, 27)]
    assert [len(r.blocks()) for r in Partition.make(36).regions()] == [12, 12, 12]
    assert default_cuts(6) == (2, 4)


def test_custom_cuts():
    p = Partition.make(28, "8,20")
    assert [len(r.blocks()) for r in p.regions()] == [8, 12, 8]
    assert p.part_of(7) == "early" and p.part_of(8) == "mid" and p.part_of(27) == "late"
    four = Partition.make(28, "7,14,21")
    assert four.names == ("part0", "part1", "part2", "part3")


@pytest.mark.parametrize("bad,match", [
    ("0,20", r"1\.\.27"), ("8,28", r"1\.\.27"), ("20,8", "strictly increasing"), ("8,8", "strictly increasing"),
    ("a,b", "comma-separated integers"), (",", "at least one cut"),
])
def test_bad_cuts(bad, match):
    with pytest.raises(RegionError, match=match):
        parse_cuts(bad, 28)


def test_region_specs_and_unified_spans():
    a = _vlm()
    assert parse_region("late", a).unified_span(a) == (19, 28)
    assert parse_region("early", a, "8,20").hi == 7
    r = parse_region("llm:0-8", a)
    assert (r.lo, r.hi, r.unified_span(a)) == (0, 8, (1, 9))
    assert parse_region("vision:0-15", a).unified_span(a) == (-32, -17)
    assert parse_region("llm:5", a).blocks() == range(5, 6)
    assert parse_region("projector", a).unified_span(a) == (0, 0)
    assert [r.name for r in standard_regions(a)] == ["vision", "projector", "early", "mid", "late"]
    assert [r.name for r in parse_regions("early, late", a)] == ["early", "late"]


def test_region_membership():
    a = _vlm(6, 4)
    late = parse_region("late", a)
    vision = parse_region("vision", a)
    info = a.classify("model.language_model.layers.5.mlp.up_proj.weight")
    assert late.contains(info) and not vision.contains(info)
    stem = a.classify("model.visual.patch_embed.proj.weight")
    assert vision.contains(stem) and not parse_region("vision:0-3", a).contains(stem)
    assert not late.contains(a.classify("model.language_model.norm.weight"))


@pytest.mark.parametrize("spec,match", [
    ("llm:0-30", r"28 llm layers \(valid llm:0-27\)"), ("vision:0-40", r"valid vision:0-31"),
    ("llm:9-3", "out of range"), ("middle", "unknown region"), ("", "unknown region"),
])
def test_bad_regions(spec, match):
    with pytest.raises(RegionError, match=match):
        parse_region(spec, _vlm())


def test_text_model_has_no_vision():
    a = adapter_for({"model_type": "qwen2", "num_hidden_layers": 4})
    with pytest.raises(RegionError, match="no vision encoder"):
        parse_region("vision", a)
    assert [r.name for r in standard_regions(a)] == ["early", "mid", "late"]


def test_default_thirds_need_three_layers():
    with pytest.raises(RegionError, match="at least 3"):
        Partition.make(2)
    assert Partition.make(2, "1").names == ("part0", "part1")
    shallow = adapter_for({"model_type": "qwen2", "num_hidden_layers": 2})
    assert [r.name for r in standard_regions(shallow)] == ["llm"]
