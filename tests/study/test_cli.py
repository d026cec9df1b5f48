from __future__ import annotations

import json

import pytest

from frankenlab.cli.app import main
from frankenlab.testing.models import save_tiny_checkpoint


def _run(*args: str) -> int:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    return int(exc.value.code or 0)


def test_study_cli_runs_selected_stages(tmp_path, capsys):
    a = save_tiny_checkpoint("qwen2", tmp_path / "in", seed=0, n_llm_layers=3, with_processor=False)
    b = save_tiny_checkpoint("qwen2", tmp_path / "rl", seed=1, n_llm_layers=3, with_processor=False)
    out = tmp_path / "out"
    assert _run("study", "--in", str(a), "--rl", str(b), "--out", str(out), "--stages", "compare") == 0
    assert "report:" in capsys.readouterr().out
    assert (out / "report.html").exists() and (out / "compare" / "layers.csv").exists()
    assert len(json.loads((out / "findings.json").read_text())) == 11
    assert _run("study", "--in", str(a), "--rl", str(b), "--out", str(out), "--stages", "compare") == 0
    assert "skipped" in capsys.readouterr().out


@pytest.mark.parametrize("args,match", [
    (["study", "--in", "x"], "--in, --rl and --out are required"),
    (["study", "--in", "x", "--rl", "y", "--out", "o", "--stages", "nope"], "unknown stage"),
    (["study", "cfg.yaml", "--in", "x"], "either a study YAML or --in/--rl"),
])
def test_study_cli_errors_exit_2(args, match, capsys):
    assert _run(*args) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1


@pytest.mark.slow
def test_demo_reuses_an_existing_pair(tmp_path, capsys, fast_world):
    """`frankenlab demo` on an already-built (fast) mini-world pair: the whole study, then the report path."""
    import shutil

    shutil.copytree(fast_world, tmp_path / "miniworld")
    assert _run("demo", "--out", str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "reused" in out and str(tmp_path / "study" / "report.html") in out.replace("\n", "")
    findings = json.loads((tmp_path / "study" / "findings.json").read_text())
    assert {f["verdict"] for f in findings} <= {"supported", "contradicted", "inconclusive"}
    stages = json.loads((tmp_path / "study" / "stages.json").read_text())["outcomes"]
    assert [o["status"] for o in stages] == ["done"] * 8


def test_study_refuses_an_unrelated_out_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    # --in/--rl do not exist: the refusal comes before any checkpoint is opened
    assert _run("study", "--in", str(tmp_path / "nope-in"), "--rl", str(tmp_path / "nope-rl"), "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert f"{out} holds files that are not this study's output (notes.txt); choose a new or empty directory." in \
        err.replace("\n", "")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_study_accepts_a_missing_an_empty_or_its_own_out(tmp_path):
    from frankenlab.study import parse_config
    from frankenlab.study.pipeline import claim_study_dir

    def cfg(out):
        return parse_config({"out": str(out), "recipes": [{"in": "a", "rl": "b"}]})

    claim_study_dir(cfg(tmp_path / "missing"))
    assert not (tmp_path / "missing").exists()
    (tmp_path / "empty").mkdir()
    claim_study_dir(cfg(tmp_path / "empty"))
    own = tmp_path / "own"  # what an interrupted study leaves: stage folders, shared data, markers, no report yet
    for d in ("compare", "merge_eval/passk", "_data", ".stages"):
        (own / d).mkdir(parents=True)
    claim_study_dir(cfg(own))  # no study.json yet (removed by hand): every entry is still a study's
    (own / "study.json").write_text("{}")
    (own / "notes.txt").write_text("added by the user to a finished study")
    claim_study_dir(cfg(own))
