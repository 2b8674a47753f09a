# Everything runs from a virtual environment this Makefile creates (.venv by default), with
# every package at the version requirements.lock pins (the image installs the same ones).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOCK := requirements.lock

.PHONY: venv demo test test-fast lint lock dist image-check clean

$(BIN)/backupjobd: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --constraint $(LOCK) pip
	$(BIN)/pip install --quiet --constraint $(LOCK) -e '.[test,dev]'
	touch $@

venv: $(BIN)/backupjobd

## The demo: emulator + daemon + ~20 jobs registered in every form, in under two minutes.
demo: venv
	$(BIN)/python scripts/demo.py

## The whole suite: lint, types, unit, integration (SQLite + PostgreSQL), acceptance.
test: venv lint
	$(BIN)/pytest -q -n 4 --dist worksteal

test-fast: venv
	$(BIN)/pytest -q tests/unit

lint: venv
	$(BIN)/ruff check daemon tests scripts migrations
	$(BIN)/mypy
	$(BIN)/lint-imports

## Refresh requirements.lock after a dependency changes in pyproject.toml: pins that still fit
## are kept, new ones added (needs PyPI). `make lock UPGRADE=1` moves every pin to the newest
## release pyproject.toml allows. Commit the lock with the change, then `make venv`.
lock: venv
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --all-extras --strip-extras \
	    --allow-unsafe --no-emit-index-url --no-emit-find-links --no-emit-trusted-host \
	    $(if $(UPGRADE),--upgrade) --output-file $(LOCK) pyproject.toml
	$(BIN)/pip install --quiet --constraint $(LOCK) -e '.[test,dev]'
	touch $(BIN)/backupjobd

## The wheel and sdist in dist/, built with the pinned setuptools (offline) and checked as PyPI
## would (twine check --strict). `pipx install dist/backupjobd-*.whl` installs the command.
dist: venv
	rm -rf dist
	$(BIN)/python -m build --no-isolation --outdir dist .
	$(BIN)/twine check --strict dist/*

## Build the container image (podman; a local Debian base when no registry answers), run the
## emulator and the daemon from it, register a job through the API, see it finish, stop both.
## Slow (a minute or more, PyPI for the image's packages): not part of `make test`.
image-check: venv
	$(BIN)/python scripts/image_check.py

clean:
	rm -rf $(VENV) demo-run dist build .pytest_cache .mypy_cache .ruff_cache
