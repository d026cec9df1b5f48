"""`device_map`: a model split by accelerate (here decoder layers and lm_head offloaded to disk, the rest on the
CPU: what accelerate supports without a GPU) answers, and is probed, exactly as the model in one piece; `auto`
loads on a CPU-only machine; the misuses fail in one clear line before anything is read or written."""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import pandas as pd
import pytest
import torch

pytest.importorskip("accelerate", reason="device_map needs accelerate (pip install 'frankenlab[rl]')")

from frankenlab.arch import adapter_for  # noqa: E402
from frankenlab.cli.app import main  # noqa: E402
from frankenlab.errors import FrankenlabError  # noqa: E402
from frankenlab.eval.config import EvalConfig  # noqa: E402
from frankenlab.eval.models import open_backend  # noqa: E402
from frankenlab.miniworld.probe_pairs import write_probe_pairs  # noqa: E402
from frankenlab.miniworld.tasks import export_tasks, make_split  # noqa: E402
from frankenlab.probe import (  # noqa: E402
    AblationSettings,
    AttentionProbeSettings,
    VisionProbeSettings,
    run_ablation,
    run_attention_probe,
    run_vision_probe,
)
from frankenlab.probe.lens import LensSettings, run_lens  # noqa: E402
from frankenlab.probe.run import ProbeModel, open_model  # noqa: E402
from frankenlab.runtime.devices import DeviceError, check_device_map, input_device, module_device  # noqa: E402
from frankenlab.runtime.generate import GenerationSettings, HFBackend, Prompt  # noqa: E402
from frankenlab.runtime.load import load, load_model  # noqa: E402
from frankenlab.study import parse_config  # noqa: E402
from frankenlab.study.config import StudyConfigError  # noqa: E402
from frankenlab.study.stages import _placement  # noqa: E402
from frankenlab.testing.models import save_tiny_checkpoint, tiny_image  # noqa: E402

ATOL = 1e-5


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("device-map")
    return {
        "vlm": save_tiny_checkpoint("qwen2_5_vl", root / "vlm", n_llm_layers=4, n_vision_blocks=2),
        "text": save_tiny_checkpoint("llama", root / "text", n_llm_layers=4),
    }


def split_map(path: Any, *, embeddings: str = "cpu") -> dict[str, str]:
    """Odd decoder layers and lm_head on "disk" (accelerate offload), the rest on "cpu": a map that covers every
    module, built from the plain model's module names."""
    model = load_model(path)
    names = {id(m): n for n, m in model.named_modules()}
    layers = [names[id(layer)] for layer in adapter_for(model.config.to_dict()).decoder_layers(model)]
    targets = {n: "disk" if i % 2 else "cpu" for i, n in enumerate(layers)} | {"lm_head": "disk"}
    embed = names[id(model.get_input_embeddings())]
    targets[embed] = embeddings

    def walk(prefix: str, module: Any) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, child in module.named_children():
            full = prefix + name
            if full in targets:
                out[full] = targets[full]
            elif any(t.startswith(full + ".") for t in targets):
                out |= walk(full + ".", child)
            else:
                out[full] = "cpu"
        return out

    return walk("", model)


def _offloaded(pm: ProbeModel) -> list[int]:
    return [i for i, layer in enumerate(pm.adapter.decoder_layers(pm.model))
            if next(layer.parameters()).device.type == "meta"]


@pytest.fixture(scope="module")
def vlm_pair(ckpts, tmp_path_factory):
    """(plain, split) ProbeModels of the tiny Qwen2.5-VL."""
    plain = open_model(ckpts["vlm"])
    split = open_model(ckpts["vlm"], device_map=split_map(ckpts["vlm"]),
                       offload_folder=tmp_path_factory.mktemp("offload-vlm"))
    assert _offloaded(split) == [1, 3] and split.model.lm_head.weight.device.type == "meta"
    return plain, split


@pytest.fixture(scope="module")
def text_pair(ckpts, tmp_path_factory):
    """(plain, split) ProbeModels of the tiny llama; the split one has its input embeddings on disk too."""
    plain = open_model(ckpts["text"])
    split = open_model(ckpts["text"], device_map=split_map(ckpts["text"], embeddings="disk"),
                       offload_folder=tmp_path_factory.mktemp("offload-text"))
    assert _offloaded(split) == [1, 3] and split.model.get_input_embeddings().weight.device.type == "meta"
    return plain, split


def _answers(model: Any, processor: Any, prompts: list[Prompt]) -> list[str]:
    return HFBackend(model, processor, settings=GenerationSettings(max_new_tokens=6)).generate(prompts)


def _same_table(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == list(b.columns) and len(a) == len(b) > 0
    num = a.select_dtypes("number").columns
    pd.testing.assert_frame_equal(a.drop(columns=num), b.drop(columns=num))
    pd.testing.assert_frame_equal(a[num].astype(float), b[num].astype(float), check_exact=False, atol=ATOL, rtol=0)


# -- (a) generation ---------------------------------------------------------------------------------
def test_inputs_go_where_the_model_reads_them(vlm_pair, text_pair):
    for plain, split in (vlm_pair, text_pair):
        assert input_device(plain.model) == plain.model.device == torch.device("cpu")
        assert input_device(split.model) == torch.device("cpu")  # execution device, also for offloaded embeddings
        assert module_device(split.model.lm_head) == torch.device("cpu")


def test_split_model_generates_what_the_plain_one_does(vlm_pair, text_pair):
    prompts = [Prompt("What is 2 plus 3?"), Prompt("How many shapes are there?", tiny_image(0, (56, 56)))]
    plain, split = vlm_pair
    want = _answers(plain.model, plain.processor, prompts)
    assert _answers(split.model, split.processor, prompts) == want and any(want)
    plain, split = text_pair
    want = _answers(plain.model, plain.processor, prompts[:1] * 2)
    assert _answers(split.model, split.processor, prompts[:1] * 2) == want and any(want)
    with torch.inference_mode():  # and the logits agree, not only the argmax
        from frankenlab.runtime.generate import encode, to_model

        enc = encode(plain.processor, prompts[:1])
        a = plain.model(**to_model(plain.model, enc)).logits
        b = split.model(**to_model(split.model, enc)).logits
    torch.testing.assert_close(a, b, rtol=0, atol=ATOL)


# -- (b) probes on the split model -----------------------------------------------------------------
def test_ablation_on_the_split_model_equals_the_plain_one(text_pair, tmp_path):
    """Layer-skip forward hooks on offloaded and resident layers alike."""
    plain, split = text_pair
    settings = AblationSettings(layers=(0, 1, 3), max_new_tokens=4, n_boot=50)
    a = run_ablation(plain, ["miniworld:text_arith"], tmp_path / "plain", settings, limit=3, plots=False)
    b = run_ablation(split, ["miniworld:text_arith"], tmp_path / "split", settings, limit=3, plots=False)
    assert not a.failed and not b.failed
    _same_table(a.layers, b.layers)
    assert [r["responses"] for r in a.items] == [r["responses"] for r in b.items]
    for ra, rb in zip(a.items, b.items):
        assert ra["gold_logprob"] == pytest.approx(rb["gold_logprob"], abs=ATOL)
        # the skip hooks fired on the split model, offloaded layers (1, 3) included: every skip moves the score
        assert all(abs(rb["gold_logprob"][k] - rb["gold_logprob"]["-1"]) > 1e-4 for k in ("0", "1", "3"))


def test_lens_on_the_split_model_equals_the_plain_one(vlm_pair, text_pair, tmp_path):
    """Residual capture on every layer, and norm + lm_head applied where lm_head runs (it is offloaded)."""
    for name, (plain, split) in {"vlm": vlm_pair, "text": text_pair}.items():
        a = run_lens(["miniworld:text_arith"], tmp_path / f"{name}-plain", LensSettings(n_boot=50), model=plain,
                     limit=3, plots=False)
        b = run_lens(["miniworld:text_arith"], tmp_path / f"{name}-split", LensSettings(n_boot=50), model=split,
                     limit=3, plots=False)
        assert not a.failed and not b.failed
        _same_table(a.layers, b.layers)
        _same_table(a.items, b.items)


def test_attention_and_vision_probes_on_the_split_model_equal_the_plain_one(vlm_pair, tmp_path):
    """The attention interface (recorded attention, swapped image K/V) on a split model."""
    plain, split = vlm_pair
    pairs = write_probe_pairs(tmp_path / "pairs", n_per_task=1, seed=0)
    att = AttentionProbeSettings(max_new_tokens=4, n_boot=50)
    a = run_attention_probe(plain, plain, tmp_path / "att-plain", att, pairs=pairs, plots=False)
    b = run_attention_probe(split, split, tmp_path / "att-split", att, pairs=pairs, plots=False)
    assert not a.failed and not b.failed
    _same_table(a.layers, b.layers)
    _same_table(a.heads, b.heads)
    vis = VisionProbeSettings(layers=(0, 1, 3), max_new_tokens=4, n_boot=50)
    a = run_vision_probe(plain, pairs, tmp_path / "vis-plain", vis, plots=False)
    b = run_vision_probe(split, pairs, tmp_path / "vis-split", vis, plots=False)
    assert not a.failed and not b.failed
    _same_table(a.layers, b.layers)
    assert [r["answers"] for r in a.items] == [r["answers"] for r in b.items]


# -- (c) auto on a CPU-only machine ---------------------------------------------------------------
def test_auto_loads_on_the_cpu_and_answers_the_same(ckpts, vlm_pair, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    plain, _ = vlm_pair
    model, processor = load(ckpts["vlm"], device_map="auto")
    assert model.device == torch.device("cpu") and model.dtype == plain.model.dtype  # stored dtype, no bf16 on CPU
    prompts = [Prompt("How many shapes are there?", tiny_image(3, (56, 56)))]
    assert _answers(model, processor, prompts) == _answers(plain.model, plain.processor, prompts)
    pm = open_model(ckpts["text"], device="auto", device_map="auto")  # device auto goes with a device map
    assert pm.model.device == torch.device("cpu")


def test_eval_backend_loads_with_the_device_map(ckpts):
    cfg = EvalConfig(backend="hf", device="auto", device_map="auto", generation=GenerationSettings(max_new_tokens=6))
    prompts = [Prompt("What is 2 plus 3?"), Prompt("How many shapes are there?", tiny_image(4, (56, 56)))]
    with open_backend("IN", str(ckpts["vlm"]), cfg) as (backend, report):
        assert report["backend"] == "hf" and report["device_map"] == "auto"
        assert backend.generate(prompts) == _answers(*load(ckpts["vlm"]), prompts)
    with pytest.raises(FrankenlabError, match="vLLM splits it with its own tensor parallelism"):
        with open_backend("IN", str(ckpts["vlm"]), cfg.model_copy(update={"backend": "vllm"})):
            pass


# -- (d) errors ---------------------------------------------------------------------------------------
def test_device_map_errors(ckpts, monkeypatch):
    assert check_device_map(None, "cpu") is None
    assert check_device_map("AUTO", "auto") == "auto" and check_device_map({"": "cpu"}, None) == {"": "cpu"}
    for device in ("cpu", "cuda:0"):
        with pytest.raises(DeviceError, match="leave --device at auto"):
            load_model(ckpts["text"], device=device, device_map="auto")
    with pytest.raises(DeviceError, match="not understood"):
        load_model(ckpts["text"], device_map="everywhere")
    with pytest.raises(DeviceError, match="empty mapping"):
        load_model(ckpts["text"], device_map={})
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else real(name, *a))
    with pytest.raises(DeviceError, match="needs accelerate") as exc:
        load_model(ckpts["text"], device_map="auto")
    assert isinstance(exc.value, FrankenlabError)
    load_model(ckpts["text"])  # without a device map accelerate is not needed


def test_study_device_map_key(tmp_path, monkeypatch):
    base = {"out": str(tmp_path), "recipes": [{"in": "a", "rl": "b"}]}
    assert parse_config(base).device_map is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _placement(parse_config(base)) == {"device": "cpu"}
    cfg = parse_config({**base, "device_map": "auto"})
    assert cfg.device_map == "auto" and _placement(cfg) == {"device": "auto", "device_map": "auto"}
    with pytest.raises(StudyConfigError, match="needs device: auto"):
        parse_config({**base, "device_map": "auto", "device": "cpu"})
    with pytest.raises(StudyConfigError, match="own tensor parallelism"):
        parse_config({**base, "device_map": "auto", "backend": "vllm"})
    with pytest.raises(StudyConfigError, match="device_map"):
        parse_config({**base, "device_map": "balanced"})


# -- CLI --------------------------------------------------------------------------------------------
def _run(argv: list[str], capsys: Any) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code, capsys.readouterr().err


def test_probe_ablate_cli_with_device_map_auto(ckpts, tmp_path, capsys):
    out = tmp_path / "ablate"
    code, err = _run(["probe", "ablate", str(ckpts["text"]), "--tasks", "miniworld:text_arith", "--out", str(out),
                      "--limit", "2", "--layers", "0,2", "--max-new-tokens", "3", "--device-map", "auto",
                      "--no-plots", "-q"], capsys)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["args"]["device_map"] == "auto" and manifest["n_failed"] == 0
    # the settings key does not depend on it: the same run without --device-map resumes, nothing is redone
    before = (out / "ablation_items.jsonl").read_text()
    code, err = _run(["probe", "ablate", str(ckpts["text"]), "--tasks", "miniworld:text_arith", "--out", str(out),
                      "--limit", "2", "--layers", "0,2", "--max-new-tokens", "3", "--no-plots", "-q"], capsys)
    assert code == 0, err
    assert (out / "ablation_items.jsonl").read_text() == before


def test_probe_cli_refuses_device_map_misuse(ckpts, tmp_path, capsys):
    out = tmp_path / "o"
    for extra, message in ((["--device", "cpu"], "leave --device at auto"), ([], "only value is auto")):
        value = "auto" if extra else "balanced"
        code, err = _run(["probe", "lens", str(ckpts["text"]), "--tasks", "miniworld:text_arith", "--out", str(out),
                          "--device-map", value, *extra], capsys)
        assert code == 2 and message in err and err.count("\n") == 1
    assert not out.exists()


def test_eval_cli_with_device_map_auto(ckpts, tmp_path, capsys):
    task = export_tasks(make_split(2, 1, families=["count", "text_arith"], split="test"), tmp_path, "mw")
    out = tmp_path / "eval"
    code, err = _run(["eval", f"IN={ckpts['vlm']}", "--tasks", str(task), "--out", str(out), "--settings", "image",
                      "--max-new-tokens", "2", "--backend", "hf", "--device-map", "auto", "--n-boot", "200",
                      "--no-plots", "-q"], capsys)
    assert code == 0, err
    run = json.loads((out / "run.json").read_text())
    assert run["models"]["IN"]["device_map"] == "auto" and run["models"]["IN"]["backend"] == "hf"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["args"]["device_map"] == "auto"
    assert "device_map" not in run["key_fields"]  # answers do not depend on it: not in the resume key
    code, err = _run(["eval", str(ckpts["vlm"]), "--tasks", str(task), "--out", str(tmp_path / "v"),
                      "--backend", "vllm", "--device-map", "auto"], capsys)
    assert code == 2 and "own tensor parallelism" in err and not (tmp_path / "v").exists()
