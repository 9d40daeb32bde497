"""The glue between params.yaml, papermill and DVC: run one numbered notebook with its profile's parameters.

``params.yaml`` holds ``profile: default|full`` and, per notebook, ``notebooks.<name>.<profile>`` parameter
dictionaries; ``xaiimg notebook <name>`` (each DVC notebook stage) executes the notebook of that name in
``notebooks/`` with papermill (working directory ``notebooks/``, as nbval uses) into ``artifacts/notebooks/``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

PROFILES = ("default", "full")


def repo_root() -> Path:
    """The checkout holding ``params.yaml`` (searched upwards from the working directory)."""
    for folder in (Path.cwd(), *Path.cwd().parents):
        if (folder / "params.yaml").is_file() and (folder / "notebooks").is_dir():
            return folder
    raise FileNotFoundError("params.yaml not found in the working directory or its parents; run from the checkout")


def load_params(path: Path | None = None) -> dict[str, Any]:
    path = path or repo_root() / "params.yaml"
    params = yaml.safe_load(path.read_text())
    if params.get("profile") not in PROFILES:
        raise ValueError(f"{path}: profile must be one of {PROFILES}, got {params.get('profile')!r}")
    return params


def notebook_parameters(name: str, params: dict[str, Any], declared: set[str]) -> dict[str, Any]:
    """The parameters of notebook ``name`` under the selected profile, plus ``profile`` and the dataset paths
    where its parameters cell declares them (``declared``). A params.yaml value the notebook does not declare is
    an error, not papermill's warning: it would be silently ignored."""
    notebooks = params.get("notebooks", {})
    if name not in notebooks:
        raise ValueError(f"params.yaml has no notebooks.{name} section (known: {sorted(notebooks)})")
    profile = params["profile"]
    values = dict(notebooks[name].get(profile) or {})
    unknown = sorted(set(values) - declared)
    if unknown:
        raise ValueError(f"params.yaml notebooks.{name}.{profile} sets {unknown}, which notebooks/{name}.ipynb "
                         f"does not declare in its parameters cell (declared: {sorted(declared)})")
    if profile == "full":
        missing = [key for key, value in params.get("datasets", {}).items() if value is None]
        if missing:
            raise ValueError(f"profile 'full' needs dataset paths in params.yaml datasets.{missing} "
                             "(see data/README.md)")
    context = {"profile": profile, "datasets": params.get("datasets", {})}
    values.update({key: value for key, value in context.items() if key in declared})
    return values


def notebook_source(name: str, root: Path) -> Path:
    """The notebook of ``notebooks/`` whose file name without ``.ipynb`` is ``name``; any other name is refused
    (it is looked up among the files there, never joined into a path)."""
    notebooks = {path.stem: path for path in (root / "notebooks").glob("*.ipynb")}
    if name not in notebooks:
        raise ValueError(f"no notebook {name!r} in {root / 'notebooks'} (known: {', '.join(sorted(notebooks))})")
    return notebooks[name]


def run_notebook(name: str, root: Path | None = None) -> Path:
    """Execute notebook ``name`` with its params.yaml parameters; returns the executed copy's path."""
    import papermill

    root = root or repo_root()
    source = notebook_source(name, root)
    output = root / "artifacts" / "notebooks" / source.name
    output.parent.mkdir(parents=True, exist_ok=True)
    declared = set(papermill.inspect_notebook(str(source)))
    parameters = notebook_parameters(name, load_params(root / "params.yaml"), declared)
    papermill.execute_notebook(str(source), str(output), parameters=parameters, cwd=str(root / "notebooks"),
                               kernel_name="python3", progress_bar=False)
    return output
