# Entry points, each idempotent on a fresh machine with only Python 3.11 and pip:
#   make demo       runs the main job
#   make test       the fast tier, run before each commit (slow tests left out)
#   make test-all   every test: the fast tier and the slow tier (what CI runs)
#   make test-newest-jax  the fast tier on the newest jax in range, under Python 3.12
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
# keras_hub's tests run without TensorFlow: its wheel's tensorflow-text requirement is skipped.
KERAS_HUB := "keras-hub>=0.32,<0.33"
# Two pytest workers: XLA compilation, most of the suite's time, is one thread per program.
WORKERS ?= 2
# ARGS passes more options to pytest, e.g. make test ARGS="--durations=25".
PYTEST := $(VENV)/bin/python -m pytest -q -n $(WORKERS) $(ARGS)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[test,hub]"
	$(VENV)/bin/python -m pip install --quiet --no-deps $(KERAS_HUB)
	touch $(STAMP)

# jax 0.11 and newer need Python >= 3.12 (pip on 3.11 stops at 0.10.2): a venv of its own.
# The first python3.12 that runs: pyenv's own build, then PATH (a pyenv shim on PATH may not run).
PYTHON312 ?= $(shell for p in $$HOME/.pyenv/versions/3.12*/bin/python3.12 $$(command -v python3.12); do "$$p" -c "" 2>/dev/null && { echo "$$p"; break; }; done)
VENV312 := .venv-py312
STAMP312 := $(VENV312)/.installed

$(STAMP312): pyproject.toml
	@test -n "$(PYTHON312)" || { echo "make test-newest-jax: no python3.12 found (PATH or pyenv)"; exit 1; }
	$(PYTHON312) -m venv $(VENV312)
	$(VENV312)/bin/python -m pip install --quiet --upgrade pip
	$(VENV312)/bin/python -m pip install --quiet -e ".[test,hub]"
	$(VENV312)/bin/python -m pip install --quiet --no-deps $(KERAS_HUB)
	touch $(STAMP312)

.PHONY: demo test test-all test-newest-jax print-python312
demo: $(STAMP)
	$(VENV)/bin/python -m fedjax_keras simulate

test: $(STAMP)
	$(PYTEST) -m "not slow" tests

test-all: $(STAMP)
	$(PYTEST) tests

test-newest-jax: $(STAMP312)
	$(VENV312)/bin/python -c "import jax, sys; print('jax', jax.__version__, 'on Python', sys.version.split()[0])"
	$(VENV312)/bin/python -m pytest -q -n $(WORKERS) $(ARGS) -m "not slow" tests

print-python312:
	@echo $(PYTHON312)
