# One entry point for setting up, running and checking Inspector.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run demo check lint typecheck test bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

install: $(BIN)/.installed

## The system on its embedded defaults (everything under ./data).
run: install
	$(BIN)/inspector demo

## Lint, types and tests: what CI runs.
check: install lint typecheck test

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck:
	$(BIN)/mypy inspector web workers

test:
	$(BIN)/pytest

bench: install
	$(BIN)/python benchmarks/train_eval.py
	$(BIN)/python benchmarks/classify_throughput.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
