# The two commands of the README. Each creates the environment (.venv) itself on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: repro test lint env browser
repro: env  ## rebuild every figure and table (default offline profile)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro

test: lint browser  ## lint, then unit tests, golden values, cross-checks, the dashboard in a browser, notebooks under nbval
	$(BIN)/python -m pytest

lint: env  ## ruff (pyflakes, pycodestyle, isort, pyupgrade) over the package, tests, scripts, benchmarks, notebooks
	$(BIN)/ruff check .

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup_env.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/setup_env.sh
	touch $@

browser:  ## Debian's Chromium for the dashboard test (Playwright drives it; no browser download)
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
