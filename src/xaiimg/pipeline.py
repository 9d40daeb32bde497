"""The glue between params.yaml, papermill and DVC: run one numbered notebook with its profile's parameters.

``params.yaml`` holds ``profile: default|full`` and, per notebook, ``notebooks.<name>.<profile>`` parameter
dictionaries; ``python -m xaiimg.pipeline notebook <name>`` executes ``notebooks/<name>.ipynb`` with papermill
(working directory ``notebooks/``, as nbval uses) into ``artifacts/notebooks/<name>.ipynb``.
"""
from __future__ import annotations

import argparse
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
            raise ValueError(f"profile 'full' needs dataset paths in params.yaml datasets.{missing} (see data/README.md)")
    context = {"profile": profile, "datasets": params.get("datasets", {})}
    values.update({key: value for key, value in context.items() if key in declared})
    return values


def run_notebook(name: str, root: Path | None = None) -> Path:
    import papermill

    root = root or repo_root()
    source = root / "notebooks" / f"{name}.ipynb"
    if not source.is_file():
        raise FileNotFoundError(f"notebook {source} not found")
    output = root / "artifacts" / "notebooks" / f"{name}.ipynb"
    output.parent.mkdir(parents=True, exist_ok=True)
    declared = set(papermill.inspect_notebook(str(source)))
    parameters = notebook_parameters(name, load_params(root / "params.yaml"), declared)
    papermill.execute_notebook(str(source), str(output), parameters=parameters, cwd=str(root / "notebooks"),
                               kernel_name="python3", progress_bar=False)
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m xaiimg.pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("notebook", help="execute notebooks/<name>.ipynb with its params.yaml parameters")
    run.add_argument("name", help="notebook name without .ipynb, e.g. 04_msgcam_comparison")
    arguments = parser.parse_args(argv)
    print(run_notebook(arguments.name))


def output_folders(*folders: str | Path) -> list[Path]:
    """Create (if needed) and return the notebook's output folders."""
    paths = [Path(folder) for folder in folders]
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
    return paths


def synthetic_model(folder: str | Path, kind: str = "cnn", train_if_missing: bool = False, seed: int = 0,
                    size: int = 64, train_size: int = 1000, epochs: int = 3):
    """The trained synthetic-benchmark model ``<folder>/<kind>.pt`` (the DVC ``synthetic`` stage writes it).

    With ``train_if_missing`` (notebooks' CI parameters), a missing checkpoint is trained with a quick recipe
    (``size`` px scenes, ``train_size`` images, ``epochs``) and saved there; its held-out accuracy is in
    ``model.synthetic_metrics`` (the notebooks print it).
    """
    from dataclasses import replace

    from xaiimg.models.synthetic import (DEFAULT_RECIPES, load_synthetic_model, save_checkpoint,
                                         train_synthetic_model)

    path = Path(folder) / f"{kind}.pt"
    if not path.is_file() and train_if_missing:
        recipe = replace(DEFAULT_RECIPES[kind]["train"], epochs=epochs)
        model, config, metrics = train_synthetic_model(kind, seed=seed, size=size, train_size=train_size,
                                                       train_config=recipe, test_size=200)
        save_checkpoint(model, config, metrics, path)
    return load_synthetic_model(path)


def aesthetic_run(folder: str | Path, train_if_missing: bool = False, seed: int = 0, size: int = 224,
                  train: int = 96, val: int = 32, test: int = 48, epochs: int = 8):
    """``(model with attention, model without, held-out CompositionSet)`` of the composition-benchmark run in
    ``folder`` (the DVC ``aesthetic`` stage writes it). With ``train_if_missing`` (notebooks' CI parameters) a
    missing run is trained first with the given small sizes; ``summary.json`` records what was used."""
    from xaiimg.analysis.aesthetic import load_composition_run
    from xaiimg.models.aesthetic import train_on_composition

    if not (Path(folder) / "summary.json").is_file() and train_if_missing:
        train_on_composition(folder, seed=seed, size=size, train=train, val=val, test=test, epochs=epochs,
                             log=lambda *_: None)
    return load_composition_run(folder)


if __name__ == "__main__":
    main()
