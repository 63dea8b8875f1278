# Two commands on a fresh machine (README): `make search` runs the main job, `make test` runs the tests.
# Both create .venv and install the pinned requirements first (once; again when the pins change).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup search demo test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

# The main job. Until the search runner lands it is the layer demo: every registry layer, its learned size, and its
# speed next to nn.Conv2d.
search: setup
	$(BIN)/nas-flex demo

demo: setup
	$(BIN)/nas-flex demo

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check nas_flex tests experiments
	$(BIN)/lint-imports

bench: setup
	$(BIN)/python experiments/bench_layers.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
