#!/usr/bin/env bash
# Create the project's virtual environment from nothing: Python 3.11 venv, the pinned packages (torch and
# torchvision come from pip's configured index), the package in editable mode, the Jupyter kernel and the
# dashboard's Voila template. Both README commands use this one environment: `make repro` needs the extras
# `notebooks` (dvc, papermill, Jupyter kernel), `dashboard` (notebook 07) and `datasets` (full profile), i.e.
# `all`; `make test` needs `all` too (the notebooks under nbval, the dashboard in a browser, the readers) and
# `test`. A library-only install is `pip install -e .` (see pyproject.toml).
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 required, found {sys.version}"'
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e ".[all,test]"
"$VENV/bin/python" -m ipykernel install --sys-prefix --name python3 >/dev/null
# The dashboard's offline Voila template (voila.json selects it), linked where Voila looks for templates.
templates="$VENV/share/jupyter/voila/templates"
mkdir -p "$templates"
ln -sfn "$(pwd)/share/voila/xaiimg" "$templates/xaiimg"
