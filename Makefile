# The README's two commands:
#   make demo   set up .venv and train the tiny tokenizer on embedded data (no download), a few minutes on CPU
#   make test   set up .venv and run the test suite (what CI runs)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo demo-sheets test lint

setup: $(STAMP)

# torch is pinned first: the CPU build of 2.13.0 is what these machines carry; an unpinned torch pulls CUDA.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		training/train.py --config training/configs/demo.yaml

# The README's pictures (docs/demo_untrained.png, docs/demo_reconstructions.png): runs the demo, launched as above
# (Accelerate then gives the process one thread, so the run is the demo's to the bit), and takes as long.
demo-sheets: $(STAMP)
	$(BIN)/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
		docs/demo_sheets.py

test: $(STAMP)
	HF_HUB_DISABLE_PROGRESS_BARS=1 $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
