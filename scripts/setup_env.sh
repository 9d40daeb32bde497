#!/usr/bin/env bash
# Create the project's virtual environment from nothing: Python 3.11 venv, the pinned packages (torch and
# torchvision come from pip's configured index), the package in editable mode, the Jupyter kernel and the
# dashboard's Voila template.
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 required, found {sys.version}"'
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e ".[test]"
"$VENV/bin/python" -m ipykernel install --sys-prefix --name python3 >/dev/null
# The dashboard's offline Voila template (voila.json selects it), linked where Voila looks for templates.
templates="$VENV/share/jupyter/voila/templates"
mkdir -p "$templates"
ln -sfn "$(pwd)/share/voila/xaiimg" "$templates/xaiimg"
