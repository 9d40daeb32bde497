#!/usr/bin/env bash
# Create the project's virtual environment from nothing: Python 3.11 venv, the pinned packages (torch and
# torchvision come from pip's configured index), the package in editable mode, and the Jupyter kernel.
set -euo pipefail
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 required, found {sys.version}"'
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -e ".[test]"
"$VENV/bin/python" -m ipykernel install --sys-prefix --name python3 >/dev/null
