from __future__ import annotations

import json
import subprocess
import sys

import pytest

from frankenlab.cli.app import main
from frankenlab.testing.models import save_tiny_checkpoint


def _run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("info")
    return (save_tiny_checkpoint("qwen2_5_vl", root / "hub", n_llm_layers=6, n_vision_blocks=4),
            save_tiny_checkpoint("qwen2_5_vl", root / "t5", layout="transformers5", n_llm_layers=6,
                                 n_vision_blocks=4))


def test_info_json_interface(capsys, tiny):
    hub, t5 = tiny
    code, out, _ = _run(capsys, "info", str(hub), "--json")
    assert code == 0
    d = json.loads(out)
    for key in ("model_type", "layout", "fingerprint", "n_llm_layers", "n_vision_blocks", "layers"):
        assert key in d
    assert (d["model_type"], d["layout"], d["n_llm_layers"], d["n_vision_blocks"]) == ("qwen2_5_vl", "hub", 6, 4)
    assert [layer["index"] for layer in d["layers"]] == list(range(-4, 7))
    llm3 = next(layer for layer in d["layers"] if layer["index"] == 3)
    assert llm3["section"] == "llm"
    assert all(t.startswith("model.language_model.layers.2.") for t in llm3["tensors"])
    code, out2, _ = _run(capsys, "info", str(t5), "--json")
    d2 = json.loads(out2)
    assert d2["layout"] == "transformers5"
    assert [sorted(x["tensors"]) for x in d2["layers"]] == [sorted(x["tensors"]) for x in d["layers"]]


def test_info_table_output(capsys, tiny):
    code, out, _ = _run(capsys, "info", str(tiny[0]), "--cuts", "2,4")
    assert code == 0
    assert "qwen2_5_vl" in out and "model.language_model.layers.5" in out and "Regions" in out


def test_error_is_one_line_exit_2(capsys, tmp_path):
    code, _, err = _run(capsys, "info", str(tmp_path / "missing"))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error:") and "Traceback" not in err


def test_bad_cuts_exit_2(capsys, tiny):
    code, _, err = _run(capsys, "info", str(tiny[0]), "--cuts", "4,2")
    assert code == 2 and "strictly increasing" in err


def test_console_script_version():
    out = subprocess.run([sys.executable, "-m", "frankenlab", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("frankenlab ")
