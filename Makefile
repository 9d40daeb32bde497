# The two commands of the README. Each creates the environment (.venv) itself on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: repro test env
repro: env  ## rebuild every figure and table (default offline profile)
	$(BIN)/dvc repro

test: env  ## unit tests, golden values, cross-checks, and the notebooks under nbval
	$(BIN)/python -m pytest

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup_env.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/setup_env.sh
	touch $@
