# The README's two commands: `make demo` (the main job) and `make test` (the test suite).
# Both create .venv on first use; torch==2.13.0 is installed first so that pip never pulls a CUDA build.
# --no-compile: Python compiles only the modules it imports, when it first imports them (the install takes about
# half the time; measured 51 s against 91 s here).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.nrd-bench-installed

.PHONY: demo test test-fast lint install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-compile torch==2.13.0
	$(PY) -m pip install --quiet --no-compile -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# DEMO_ARGS: more flags for `nrd-bench demo`, e.g. `make demo DEMO_ARGS="--space tests/demo_quick_space.yaml"` (the
# same sweep on a shorter budget, as the fresh-clone test runs it)
demo: $(STAMP)
	$(VENV)/bin/nrd-bench demo $(DEMO_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(PY) -m pytest

# The inner loop while changing code (about 2.5 minutes on 2 cores): every test not marked slow, i.e. no Ray workers, no sweep,
# no fault injection, no fresh clone. `make test` is still what counts.
test-fast: lint
	$(PY) -m pytest -m "not slow" -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
