# Entry points, each idempotent on a fresh machine with only Python 3.11 and pip:
#   make demo       runs the main job
#   make test       the fast tier, run before each commit (slow tests left out)
#   make test-all   every test: the fast tier and the slow tier (what CI runs)
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
# Two pytest workers: XLA compilation, most of the suite's time, is one thread per program.
WORKERS ?= 2
# ARGS passes more options to pytest, e.g. make test ARGS="--durations=25".
PYTEST := $(VENV)/bin/python -m pytest -q -n $(WORKERS) $(ARGS)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

.PHONY: demo test test-all
demo: $(STAMP)
	$(VENV)/bin/python -m fedjax_keras simulate

test: $(STAMP)
	$(PYTEST) -m "not slow" tests

test-all: $(STAMP)
	$(PYTEST) tests
