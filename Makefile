# One entry point for setting up, running and checking Inspector.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run check lint typecheck test bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

install: $(BIN)/.installed

## The whole system on its embedded defaults (SQLite and a folder queue under ./data):
## migrates the database, trains the demo model on first run, starts web and worker.
run: install
	$(BIN)/inspector run

## Lint, types and tests: what CI runs.
check: install lint typecheck test

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck:
	$(BIN)/mypy inspector web workers service

test:
	$(BIN)/pytest

bench: install
	$(BIN)/python benchmarks/train_eval.py
	$(BIN)/python benchmarks/classify_throughput.py
	$(BIN)/python benchmarks/rest_throughput.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
