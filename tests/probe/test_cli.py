"""`frankenlab probe ...` end to end on saved tiny checkpoints: files, columns, resume, clean errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from frankenlab.cli.app import main
from frankenlab.testing import save_tiny_checkpoint


def _run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe_cli")
    return (save_tiny_checkpoint("qwen2_5_vl", root / "in", seed=0),
            save_tiny_checkpoint("qwen2_5_vl", root / "rl", seed=1), root)


@pytest.fixture(scope="module")
def pairs(ckpts):
    out = ckpts[2] / "pairs"
    with pytest.raises(SystemExit) as exc:
        main(["probe", "pairs", "make", "--out", str(out), "--n", "2", "--seed", "3"])
    assert exc.value.code == 0
    return out / "pairs.jsonl"


def test_pairs_make_is_deterministic(ckpts, pairs, capsys):
    again = ckpts[2] / "pairs2"
    code, out, _ = _run(capsys, "probe", "pairs", "make", "--out", str(again), "--n", "2", "--seed", "3")
    assert code == 0 and "8 pairs" in out
    assert (again / "pairs.jsonl").read_text() == pairs.read_text()
    rows = [json.loads(x) for x in pairs.read_text().splitlines()]
    assert {r["task"] for r in rows} == {"counting", "ocr", "grounding", "recognition"}
    assert (pairs.parent / rows[0]["target_image"]).is_file()


def test_probe_vision_writes_the_interface_and_resumes(ckpts, pairs, tmp_path, capsys):
    out = tmp_path / "v"
    args = ["probe", "vision", str(ckpts[0]), "--pairs", str(pairs), "--out", str(out), "--max-new-tokens", "3",
            "--layers", "0,2-3", "-q"]
    assert _run(capsys, *args)[0] == 0
    table = pd.read_csv(out / "vision_layers.csv")
    for col in ("task", "layer", "unified_layer", "n", "change_rate", "change_low", "change_high", "flip_rate",
                "flip_low", "flip_high", "accuracy", "accuracy_low", "accuracy_high", "margin"):
        assert col in table.columns
    assert set(table["task"]) == {"counting", "ocr", "grounding", "recognition", "all"}
    assert sorted(set(table["layer"])) == [0, 2, 3]
    assert (table["unified_layer"] == table["layer"] + 1).all()
    assert (table.loc[table["task"] == "all", "n"] == 8).all()
    assert ((table["change_low"] <= table["change_rate"]) & (table["change_rate"] <= table["change_high"])).all()
    items = [json.loads(x) for x in (out / "vision_items.jsonl").read_text().splitlines()]
    assert len(items) == 8 and set(items[0]["answers"]) == {"base", "source", "0", "2", "3"}
    assert pd.read_parquet(out / "vision_layers.parquet").shape == table.shape
    assert (out / "plots" / "vision_change.png").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["n_failed"] == 0 and manifest["args"]["mode"] == "suffix"
    before = (out / "vision_items.jsonl").read_text()
    assert _run(capsys, *args)[0] == 0  # resume: nothing recomputed
    assert (out / "vision_items.jsonl").read_text() == before
    code, _, err = _run(capsys, *args[:-1], "--mode", "single", "-q")
    assert code == 2 and "other inputs or settings" in err


def test_probe_ablate_interface(ckpts, tmp_path, capsys):
    tasks = tmp_path / "math.jsonl"
    tasks.write_text("".join(json.dumps({"id": i, "problem": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n"
                             for i in range(3)))
    out = tmp_path / "a"
    code, _, _ = _run(capsys, "probe", "ablate", str(ckpts[0]), "--tasks", f"{tasks},miniworld", "--limit", "2",
                      "--out", str(out), "--max-new-tokens", "2", "--no-plots", "-q")
    assert code == 0
    table = pd.read_csv(out / "ablation_layers.csv")
    assert list(table.columns[:4]) == ["task", "layer", "unified_layer", "n"]
    assert {"accuracy", "accuracy_low", "accuracy_high", "gold_logprob", "gold_logprob_low"} <= set(table.columns)
    assert set(table["task"]) == {"math", "miniworld_text_arith", "all"}
    assert sorted(set(table["layer"])) == [-1, 0, 1, 2, 3]
    assert (table.loc[table["task"] == "all", "n"] == 4).all()


def test_probe_attention_interface(ckpts, pairs, tmp_path, capsys):
    out = tmp_path / "t"
    code, _, _ = _run(capsys, "probe", "attention", "--in", str(ckpts[0]), "--rl", str(ckpts[1]), "--pairs",
                      str(pairs), "--limit", "1", "--out", str(out), "--max-new-tokens", "2", "--no-plots", "-q")
    assert code == 0
    layers = pd.read_csv(out / "attention_layers.csv")
    assert {"model", "mode", "layer", "vision_share", "vision_share_low", "vision_share_high"} <= set(layers.columns)
    assert set(layers["model"]) == {"IN", "RL"} and set(layers["mode"]) == {"shared", "own"}
    heads = pd.read_csv(out / "attention_heads.csv")
    assert {"head", "vision_share"} <= set(heads.columns)
    assert (out / "attention_diff.csv").exists()


@pytest.mark.parametrize("bad", ["layers", "pairs", "both"])
def test_bad_input_is_one_line_and_exit_2(ckpts, pairs, tmp_path, capsys, bad):
    if bad == "layers":
        args = ["probe", "vision", str(ckpts[0]), "--pairs", str(pairs), "--out", str(tmp_path / "x"),
                "--layers", "7"]
    elif bad == "pairs":
        args = ["probe", "vision", str(ckpts[0]), "--pairs", str(tmp_path / "nope.jsonl"), "--out",
                str(tmp_path / "x")]
    else:
        args = ["probe", "attention", "--in", str(ckpts[0]), "--rl", str(ckpts[1]), "--out", str(tmp_path / "x")]
    code, _, err = _run(capsys, *args)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_probe_ablate_prints_the_per_layer_table(ckpts, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # a wide terminal: no cell is shortened
    tasks = tmp_path / "math.jsonl"
    tasks.write_text("".join(json.dumps({"id": i, "problem": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n"
                             for i in range(2)))
    out = tmp_path / "a"
    code, _, err = _run(capsys, "probe", "ablate", str(ckpts[0]), "--tasks", str(tasks), "--layers", "0,2",
                        "--out", str(out), "--max-new-tokens", "2", "--no-plots")
    assert code == 0
    table = pd.read_csv(out / "ablation_layers.csv")
    for col in ("accuracy_drop_low", "accuracy_drop_high", "p_mcnemar", "n_discordant", "n_stopped_degenerate"):
        assert col in table.columns
    lines = err.splitlines()
    assert any("Layer ablation" in line for line in lines)
    body = [line for line in lines if line.lstrip("│┃ ").startswith("math")]
    assert len(body) == 3  # baseline and the two skipped layers
    assert "baseline" in body[0] and " 0 " in body[1] and " 2 " in body[2]
    for line, (_, r) in zip(body, table.iterrows()):
        assert f"{r['accuracy']:.2f} [{r['accuracy_low']:.2f}, {r['accuracy_high']:.2f}]" in line
        assert f"{r['accuracy_drop']:+.2f} [{r['accuracy_drop_low']:+.2f}, {r['accuracy_drop_high']:+.2f}]" in line
        assert f"{r['gold_logprob']:.3f}" in line and f" {r['n_discordant']} " in line
