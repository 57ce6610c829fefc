# Two entry points, both idempotent on a fresh machine with only Python 3.11 and pip:
#   make demo   runs the main job
#   make test   runs the whole test suite
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

.PHONY: demo test
demo: $(STAMP)
	$(VENV)/bin/python -m fedjax_keras simulate

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q tests
