# Each target builds .venv from nothing if it is missing.
# torch is pinned here only, so that the CPU build on disk is taken instead of a CUDA download;
# pyproject.toml declares a normal range.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0

.PHONY: venv test lint demo bench clean

$(BIN)/.installed: pyproject.toml Makefile
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

lint: venv
	$(BIN)/ruff check kramers_callback tests benchmarks
	$(BIN)/ruff format --check kramers_callback tests benchmarks

test: venv lint
	$(BIN)/python -m pytest -q

demo: venv
	$(BIN)/python -m kramers_callback.demo

# The benchmarks' extra dependencies (SASA+ for the outcome benchmark); the commands are in
# benchmarks/RESULTS.md.
bench: venv
	$(BIN)/pip install -q -e '.[bench]'

clean:
	rm -rf $(VENV) lightning_logs demo_output .pytest_cache
