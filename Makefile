# Everything runs from a virtual environment this Makefile creates (.venv by default).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv demo test test-fast lint clean

$(BIN)/backupjobd: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $@

venv: $(BIN)/backupjobd

## The demo: emulator + daemon + ~20 jobs registered in every form, in under two minutes.
demo: venv
	$(BIN)/python scripts/demo.py

## The whole suite: lint, types, unit, integration (SQLite + PostgreSQL), acceptance.
test: venv lint
	$(BIN)/pytest -q -n 3

test-fast: venv
	$(BIN)/pytest -q tests/unit

lint: venv
	$(BIN)/ruff check daemon tests scripts migrations
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) demo-run .pytest_cache .mypy_cache .ruff_cache
