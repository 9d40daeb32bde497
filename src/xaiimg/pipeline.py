"""The glue between params.yaml, papermill and DVC: run one numbered notebook with its profile's parameters.

``params.yaml`` holds ``profile: default|full`` and, per notebook, ``notebooks.<name>.<profile>`` parameter
dictionaries; ``xaiimg notebook <name>`` (each DVC notebook stage) executes the notebook of that name in
``notebooks/`` with papermill (working directory ``notebooks/``, as nbval uses) into ``reports/``: the executed
notebooks are committed, so a reader sees every output and figure without rerunning anything. Run times and
absolute paths are removed from their metadata (:func:`publishable`), and figures are shown inline as small JPEGs
(:func:`xaiimg.viz.save_figure`), so each stays under :data:`REPORT_LIMIT_BYTES`.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

PROFILES = ("default", "full")
REPORTS = "reports"
REPORT_LIMIT_BYTES = 2**20
# papermill's run records: times and the machine's absolute paths, which would make every rerun a different file
VOLATILE_NOTEBOOK_METADATA = ("start_time", "end_time", "duration", "input_path", "output_path", "exception",
                              "environment_variables")
VOLATILE_CELL_METADATA = ("papermill", "execution")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


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


def publishable(notebook: dict[str, Any]) -> dict[str, Any]:
    """A copy of an executed notebook (nbformat JSON) without papermill's run times and paths: the notebook's
    ``papermill`` record keeps only its parameters and version, cells lose their timing metadata, and the
    parameters cell papermill injects gets a fixed id. Widget state is dropped (its model ids are random per run,
    and a static page cannot run widgets); a widget's output keeps its ``text/plain`` form."""
    notebook = copy.deepcopy(notebook)
    notebook.get("metadata", {}).pop("widgets", None)
    record = notebook.get("metadata", {}).get("papermill")
    if isinstance(record, dict):
        for key in VOLATILE_NOTEBOOK_METADATA:
            record.pop(key, None)
    for cell in notebook.get("cells", []):
        for key in VOLATILE_CELL_METADATA:
            cell.get("metadata", {}).pop(key, None)
        for output in cell.get("outputs", []):
            output.get("data", {}).pop(WIDGET_VIEW, None)
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            cell["id"] = "injected-parameters"  # papermill gives the cell it adds a random id
    return notebook


def run_notebook(name: str, root: Path | None = None) -> Path:
    """Execute notebook ``name`` with its params.yaml parameters into ``reports/`` (:func:`publishable`);
    returns the executed copy's path."""
    import tempfile

    import papermill

    from xaiimg.report import write_atomic

    root = root or repo_root()
    source = notebook_source(name, root)
    output = root / REPORTS / source.name
    output.parent.mkdir(parents=True, exist_ok=True)
    declared = set(papermill.inspect_notebook(str(source)))
    parameters = notebook_parameters(name, load_params(root / "params.yaml"), declared)
    with tempfile.TemporaryDirectory() as scratch:
        executed = Path(scratch) / source.name
        try:
            papermill.execute_notebook(str(source), str(executed), parameters=parameters,
                                       cwd=str(root / "notebooks"), kernel_name="python3", progress_bar=False)
        except Exception as error:  # keep the partly executed notebook for the reader, outside the committed folder
            if executed.is_file():
                failed = root / "artifacts" / "failed_notebooks" / source.name
                failed.parent.mkdir(parents=True, exist_ok=True)
                failed.write_bytes(executed.read_bytes())
                error.add_note(f"the partly executed notebook is {failed}")
            raise
        notebook = publishable(json.loads(executed.read_text(encoding="utf-8")))
    write_atomic(output, json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
    return output
