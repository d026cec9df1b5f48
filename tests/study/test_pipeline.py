"""Resumability and failure isolation of the stage runner, on cheap fake stages."""

from __future__ import annotations

from pathlib import Path

import pytest

from frankenlab.study.config import parse_config
from frankenlab.study.pipeline import StageSpec, run_stage


def _cfg(tmp_path: Path, **kw):
    return parse_config({"out": str(tmp_path / "out"), "recipes": [{"in": "a", "rl": "b"}], **kw})


class Counter:
    def __init__(self, fail_times: int = 0, interrupt: bool = False):
        self.calls = 0
        self.fail_times = fail_times
        self.interrupt = interrupt

    def __call__(self, cfg, recipe, out: Path, fps) -> None:
        self.calls += 1
        out.mkdir(parents=True, exist_ok=True)
        (out / f"part{self.calls}.txt").write_text("x")
        if self.interrupt:
            self.interrupt = False
            raise KeyboardInterrupt
        if self.calls <= self.fail_times:
            raise RuntimeError("stage exploded")
        (out / "result.csv").write_text("a\n1\n")


def _spec(name: str, fn, setting: dict | None = None) -> StageSpec:
    return StageSpec(name, lambda cfg, r, fps: dict(setting or {}), fn)


def test_current_stage_is_skipped_and_changed_settings_rerun(tmp_path):
    cfg = _cfg(tmp_path)
    fn = Counter()
    r = cfg.recipes[0]
    assert run_stage(_spec("compare", fn), cfg, r, {"IN": "fp1"}).status == "done"
    assert run_stage(_spec("compare", fn), cfg, r, {"IN": "fp1"}).status == "skipped"
    assert fn.calls == 1
    assert run_stage(_spec("compare", fn), cfg, r, {"IN": "fp2"}).status == "done"  # new input fingerprint
    assert run_stage(_spec("compare", fn, {"svd": "exact"}), cfg, r, {"IN": "fp2"}).status == "done"
    assert fn.calls == 3
    # a changed key starts clean: no leftovers of the earlier attempt
    assert sorted(p.name for p in (tmp_path / "out" / "compare").iterdir()) == ["part3.txt", "result.csv"]


def test_failed_stage_is_reported_and_retried(tmp_path):
    cfg = _cfg(tmp_path)
    fn = Counter(fail_times=1)
    o = run_stage(_spec("probe_ablate", fn), cfg, cfg.recipes[0], {})
    assert o.status == "failed" and "stage exploded" in o.error
    err = tmp_path / "out" / ".stages" / "probe_ablate.default.error.txt"
    assert "RuntimeError: stage exploded" in err.read_text()
    o2 = run_stage(_spec("probe_ablate", fn), cfg, cfg.recipes[0], {})
    assert o2.status == "done" and not err.exists()


def test_interrupted_stage_resumes_with_its_partial_outputs(tmp_path):
    cfg = _cfg(tmp_path)
    fn = Counter(interrupt=True)
    with pytest.raises(KeyboardInterrupt):
        run_stage(_spec("merge_eval", fn), cfg, cfg.recipes[0], {})
    # same key: the partial output is kept for the analysis to resume from
    assert run_stage(_spec("merge_eval", fn), cfg, cfg.recipes[0], {}).status == "done"
    names = sorted(p.name for p in (tmp_path / "out" / "merge_eval").iterdir())
    assert names == ["part1.txt", "part2.txt", "result.csv"]


def test_not_applicable_stage(tmp_path):
    cfg = _cfg(tmp_path)
    spec = StageSpec("freeze", lambda c, r, f: {}, Counter(), lambda c, r: "nothing to do")
    o = run_stage(spec, cfg, cfg.recipes[0], {})
    assert o.status == "not-applicable" and o.error == "nothing to do"
