# Two entry points for a fresh machine (Python 3.11+ and a C compiler):
#   make run    run every check on this machine and print a table
#   make test   lint, type-check, build the CUDA programs (when nvcc exists) and run the test suite
# Both create .venv and install what they need.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: run test lint typecheck cuda unit integration clean venv

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/autopilot run

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

cuda: $(STAMP)
	PIP=$(BIN)/pip scripts/build-cuda.sh

test: lint typecheck cuda
	$(BIN)/pytest $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) cuda_src/bin .deps .mypy_cache .ruff_cache

.PHONY: demo
demo: $(STAMP)
	PYTHON=$(BIN)/python scripts/demo.sh
