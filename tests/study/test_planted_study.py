"""The study on the mini-world's planted-truth pairs: nothing from a null pair, the right side from a planted one."""

from __future__ import annotations

import json

import pytest

from frankenlab.cli.app import main

pytestmark = pytest.mark.slow


def _study(world, rl: str, out, *extra: str) -> dict[str, dict]:
    with pytest.raises(SystemExit) as exc:
        main(["study", "--in", str(world / "in"), "--rl", str(world / "planted" / rl), "--out", str(out),
              "--limit", "8", *extra])
    assert exc.value.code == 0
    return {f["claim"]: f for f in json.loads((out / "findings.json").read_text())}


def test_null_pair_supports_nothing(fast_world, tmp_path):
    found = _study(fast_world, "null", tmp_path / "null")
    assert [f["verdict"] for f in found.values() if f["verdict"] == "supported"] == []
    assert "no update" in found["rl_refines_mid_late"]["reason"]
    assert "nothing to transfer" in found["transfer_mid_late"]["reason"]
    att = found["rl_attention_vision_mid_late"]
    assert att["verdict"] == "inconclusive" and att["evidence"]["mean_shift_mid_late"] == 0
    assert "no freezing results" in found["freeze_late_hurts_most"]["reason"]


@pytest.mark.parametrize("kind,sign", [("late-only", 1), ("early-only", -1), ("noise", 0)])
def test_planted_energy_points_the_right_way(fast_world, tmp_path, kind, sign):
    found = _study(fast_world, kind, tmp_path / kind, "--stages", "compare")
    energy = found["rl_refines_mid_late"]
    means = energy["evidence"]["per_part_mean"]
    if sign == 1:
        assert means["early"] == 0 and means["mid"] == 0 and means["late"] > 0 and energy["effect"] > 0
    elif sign == -1:
        assert means["mid"] == 0 and means["late"] == 0 and means["early"] > 0 and energy["effect"] < 0
    else:  # the same relative noise on every matrix: no part stands out
        assert abs(energy["effect"]) < 0.2 * means["early"]
    # six decoder layers: 15 arrangements of the early pair, p ≥ 1/15, so the honest verdict is "no verdict"
    assert energy["verdict"] == "inconclusive" and "15 arrangements" in energy["test"]
