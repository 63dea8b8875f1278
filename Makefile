# Two commands on a fresh machine (README): `make search` runs the main job, `make test` runs the tests.
# Both create .venv and install the pinned requirements first (once; again when the pins change).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: setup search demo test test-fast lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

# The main job: the grid-vs-learned search on the built-in digits-multiscale data, on the embedded local Ray
# (18 trials, a few minutes on 2 CPU cores); prints the leaderboard and each learned method's sizes, init -> learned.
SEARCH_STORAGE ?= runs/grid_vs_learned
search: setup
	$(BIN)/nas-flex search search_spaces/grid_vs_learned.py --storage $(SEARCH_STORAGE)

demo: setup
	$(BIN)/nas-flex demo

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# without the Ray end-to-end runs (about two minutes on 2 cores)
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check nas_flex tests experiments
	$(BIN)/lint-imports

bench: setup
	$(BIN)/python -m experiments.bench_layers   # rows to experiments/results/bench_layers.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
