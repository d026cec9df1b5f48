from __future__ import annotations

import json

import pytest
import yaml

from frankenlab.cli.app import main
from frankenlab.merge import STANDARD
from frankenlab.testing.models import checkpoint_state_dict


def _run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


def test_list_standard_needs_no_models(capsys):
    code, out, _ = _run(capsys, "merge", "--list-standard")
    assert code == 0
    assert [line.split()[0] for line in out.strip().splitlines()] == list(STANDARD)


def test_merge_verify_and_mergekit_yaml(capsys, hub_pair, tmp_path):
    in_, rl = hub_pair
    out, mk = tmp_path / "out", tmp_path / "mk.yaml"
    code, stdout, err = _run(capsys, "merge", "--in", str(in_), "--rl", str(rl), "--recipe", "IN:RL:RL",
                             "--cuts", "1,3", "--rest", "IN", "--out", str(out), "--verify",
                             "--emit-mergekit", str(mk))
    assert code == 0, err
    assert "verified" in stdout and "provenance.json" in stdout
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["cuts"] == [1, 3] and prov["rest"] == "IN"
    assert prov["tensors"]["model.layers.0.mlp.up_proj.weight"] == {"source": "IN", "alpha": None}
    assert prov["tensors"]["model.layers.1.mlp.up_proj.weight"] == {"source": "RL", "alpha": None}
    cfg = yaml.safe_load(mk.read_text())
    slices = cfg["modules"]["text_decoder"]["slices"]
    assert [(s["sources"][0]["model"], s["sources"][0]["layer_range"]) for s in slices] == [
        (str(in_), [0, 1]), (str(rl), [1, 6])]
    assert cfg["merge_method"] == "passthrough" and cfg["base_model"] == str(in_)
    assert "lm_head.weight" in mk.read_text()  # the comment says where mergekit differs


def test_take_and_alpha_options(capsys, hub_pair, tmp_path):
    in_, rl = hub_pair
    out = tmp_path / "out"
    code, _, err = _run(capsys, "merge", "--in", str(in_), "--rl", str(rl), "--take", "RL:llm:2-5",
                        "--take", "RL:projector", "--alpha", "late=0.5", "--dtype", "float32", "--out", str(out))
    assert code == 0, err
    t = json.loads((out / "provenance.json").read_text())["tensors"]
    assert t["model.layers.1.mlp.up_proj.weight"]["source"] == "IN"
    assert t["model.layers.3.mlp.up_proj.weight"]["source"] == "RL"
    assert t["model.layers.4.mlp.up_proj.weight"]["alpha"] == 0.5
    assert t["visual.merger.mlp.0.weight"]["source"] == "RL"
    assert t["visual.blocks.0.attn.qkv.weight"]["source"] == "IN"


def test_config_file_variants(capsys, hub_pair, tmp_path):
    in_, rl = hub_pair
    cfg = tmp_path / "variants.yaml"
    cfg.write_text("variants:\n  - IN:RL:RL\n  - name: late-half\n    recipe: IN:IN:IN\n    alpha: {late: 0.5}\n")
    code, _, err = _run(capsys, "merge", "--in", str(in_), "--rl", str(rl), "--config", str(cfg),
                        "--out", str(tmp_path / "x"))
    assert code == 2 and "2 variants (IN:RL:RL, late-half)" in err and "--name" in err
    code, _, err = _run(capsys, "merge", "--in", str(in_), "--rl", str(rl), "--config", str(cfg),
                        "--name", "late-half", "--out", str(tmp_path / "one"))
    assert code == 0, err
    assert json.loads((tmp_path / "one" / "provenance.json").read_text())["recipe"]["name"] == "late-half"
    code, _, err = _run(capsys, "merge", "--in", str(in_), "--rl", str(rl), "--config", str(cfg), "--all",
                        "--out", str(tmp_path / "all"))
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == ["IN-RL-RL", "late-half"]
    code, _, err = _run(capsys, "merge", "--in", str(in_), "--rl", str(rl), "--config", str(cfg),
                        "--name", "nope", "--out", str(tmp_path / "n"))
    assert code == 2 and "no variant 'nope'" in err
    code, _, err = _run(capsys, "merge", "--in", str(in_), "--rl", str(rl), "--config", str(cfg),
                        "--recipe", "IN:RL:RL", "--out", str(tmp_path / "n"))
    assert code == 2 and "do not combine" in err


@pytest.mark.parametrize(("args", "message"), [
    (["--recipe", "IN:RL"], "2 part(s) but the default partition (thirds) has 3"),
    (["--recipe", "IN:XX:RL"], "unknown model label 'XX'"),
    (["--recipe", "IN:RL:RL", "--cuts", "3,8"], "cut 8 is out of range"),
    (["--recipe", "IN:RL:RL", "--alpha", "late=x"], "not a number"),
    (["--recipe", "IN:RL:RL", "--take", "RL:nowhere"], "unknown region 'nowhere'"),
    (["--recipe", "IN:RL:RL", "--dtype", "int7"], "unknown dtype"),
])
def test_bad_recipes_exit_2_with_one_line(capsys, hub_pair, tmp_path, args, message):
    in_, rl = hub_pair
    code, _, err = _run(capsys, "merge", "--in", str(in_), "--rl", str(rl), *args, "--out", str(tmp_path / "o"))
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_missing_arguments_and_existing_output(capsys, hub_pair, tmp_path):
    in_, rl = hub_pair
    code, _, err = _run(capsys, "merge", "--recipe", "IN:RL:RL", "--out", str(tmp_path / "o"))
    assert code == 2 and "missing --in and --rl" in err
    code, _, err = _run(capsys, "merge", "--in", str(in_), "--rl", str(rl), "--recipe", "IN:RL:RL")
    assert code == 2 and "missing --out" in err
    out = tmp_path / "exists"
    out.mkdir()
    code, _, err = _run(capsys, "merge", "--in", str(in_), "--rl", str(rl), "--recipe", "IN:RL:RL", "--out", str(out))
    assert code == 2 and "already exists" in err and "--overwrite" in err
    code, _, err = _run(capsys, "merge", "--in", str(in_), "--rl", str(rl), "--recipe", "RL:RL:RL", "--out",
                        str(out), "--overwrite")
    assert code == 0, err
    assert checkpoint_state_dict(out).keys() == checkpoint_state_dict(in_).keys()


def test_dry_run_writes_nothing(capsys, hub_pair, tmp_path):
    in_, rl = hub_pair
    code, out, err = _run(capsys, "merge", "--in", str(in_), "--rl", str(rl), "--recipe", "RL:IN:IN", "--dry-run",
                          "--out", str(tmp_path / "o"))
    assert code == 0, err
    assert "RL:IN:IN" in out and not (tmp_path / "o").exists()
