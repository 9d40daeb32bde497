"""Execute notebooks with their stored (CI) parameters and keep outputs only in `# NBVAL_CHECK_OUTPUT` cells.

nbval (`pytest --nbval-lax`) compares exactly those cells' outputs with what is stored, so after changing a
notebook or the code behind a checked output, rerun:  .venv/bin/python scripts/store_ci_outputs.py notebooks/04_*.ipynb
Every other cell is stored without outputs, which keeps the notebooks small.
"""
import sys
from pathlib import Path

import nbformat
import papermill

CHECK = "# NBVAL_CHECK_OUTPUT"


def number_checked_cells(notebook) -> None:
    """Give cells with stored outputs an execution count (nbval only compares cells marked as run) and clear the
    count of every other code cell."""
    for number, cell in enumerate((c for c in notebook.cells if c.cell_type == "code"), start=1):
        cell.execution_count = number if cell.outputs else None
        for output in cell.outputs:
            if output.output_type == "execute_result":
                output.execution_count = cell.execution_count


def store(path: Path) -> None:
    executed = papermill.execute_notebook(str(path), None, cwd=str(path.parent), kernel_name="python3",
                                          progress_bar=False)
    source = nbformat.read(path, as_version=4)
    for cell, ran in zip(source.cells, (c for c in executed.cells if "injected-parameters" not in
                                        c.metadata.get("tags", []))):
        if cell.cell_type != "code":
            continue
        keep = cell.source.lstrip().startswith(CHECK)
        cell.outputs = [nbformat.from_dict(o) for o in ran.outputs] if keep else []
        cell.metadata.pop("execution", None)
    number_checked_cells(source)
    nbformat.write(source, path)
    print(f"stored checked outputs of {path}")


if __name__ == "__main__":
    for name in sys.argv[1:]:
        store(Path(name))
