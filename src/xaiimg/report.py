"""Tables and run records: CSV / JSON / LaTeX (booktabs) tables and a self-describing results store.

Every file is written atomically (temporary file + rename), so an interrupted run leaves nothing half-written.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

VERSIONED_PACKAGES = ("xaiimg", "torch", "torchvision", "timm", "captum", "numpy")


def write_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", newline="") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def package_versions(packages: Iterable[str] = VERSIONED_PACKAGES) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _jsonable(value: Any) -> Any:
    """Plain JSON types from tensors, numpy values, paths and dataclasses (NaN becomes null)."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "__dataclass_fields__"):
        return _jsonable(asdict(value))
    return value


def to_json(value: Any) -> str:
    return json.dumps(_jsonable(value), indent=2, sort_keys=False) + "\n"


# ------------------------------------------------------------------------------------------------ tables
def _latex_escape(text: str) -> str:
    for raw, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("$", r"\$"), ("#", r"\#"),
                         ("_", r"\_"), ("{", r"\{"), ("}", r"\}"), ("~", r"\textasciitilde{}"), ("^", r"\^{}")):
        text = text.replace(raw, escaped)
    return text


def _format_cell(value: Any, digits: int) -> str:
    if isinstance(value, float):
        return "--" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def latex_table(rows: Sequence[Mapping[str, Any]], caption: str = "", label: str = "", digits: int = 3,
                bold_best: Mapping[str, str] | None = None) -> str:
    """A booktabs ``table`` from rows of equal keys. ``bold_best`` maps a column to ``"max"`` or ``"min"``."""
    if not rows:
        raise ValueError("cannot write a table with no rows")
    columns = list(rows[0])
    best = {}
    for column, direction in (bold_best or {}).items():
        values = [r[column] for r in rows if isinstance(r[column], (int, float)) and math.isfinite(r[column])]
        if values:
            best[column] = max(values) if direction == "max" else min(values)
    lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{" + "l" + "r" * (len(columns) - 1) + "}",
             r"\toprule", " & ".join(_latex_escape(str(c)) for c in columns) + r" \\", r"\midrule"]
    for row in rows:
        cells = []
        for column in columns:
            cell = _latex_escape(_format_cell(row[column], digits))
            if column in best and row[column] == best[column]:
                cell = r"\textbf{" + cell + "}"
            cells.append(cell)
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(r"\caption{" + _latex_escape(caption) + "}")
    if label:
        lines.append(r"\label{" + label + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def markdown_table(rows: Sequence[Mapping[str, Any]], digits: int = 3) -> str:
    """A GitHub-flavoured Markdown table from rows of equal keys (floats to ``digits`` places, text left-aligned,
    numbers right-aligned)."""
    if not rows:
        raise ValueError("cannot write a table with no rows")
    columns = list(rows[0])
    numeric = {c: all(isinstance(r[c], (int, float)) and not isinstance(r[c], bool) for r in rows) for c in columns}
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---:" if numeric[c] else "---" for c in columns) + "|"]
    lines += ["| " + " | ".join(_format_cell(r[c], digits) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _jsonable(v) for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def write_table(rows: Sequence[Mapping[str, Any]], stem: str | Path, caption: str = "", label: str = "",
                digits: int = 3, bold_best: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Write ``stem.csv``, ``stem.json`` and ``stem.tex`` (booktabs) from the same rows."""
    stem = Path(stem)
    return {
        "csv": write_atomic(stem.with_suffix(".csv"), csv_text(rows)),
        "json": write_atomic(stem.with_suffix(".json"), to_json(list(rows))),
        "tex": write_atomic(stem.with_suffix(".tex"), latex_table(rows, caption, label, digits, bold_best)),
    }


# ------------------------------------------------------------------------------------------ results store
@dataclass
class RunRecord:
    """A self-describing experiment record: what ran, on what, with which parameters, what it measured."""

    kind: str
    method: str
    model: str
    data: str
    parameters: dict[str, Any]
    metrics: dict[str, Any]
    versions: dict[str, str] = field(default_factory=package_versions)
    time: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="microseconds"))
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])


class ResultsStore:
    """A folder of ``<time>_<run_id>.json`` records, listable and exportable (CSV or JSON)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def add(self, record: RunRecord) -> Path:
        stamp = record.time.replace(":", "").replace("-", "").replace("+0000", "Z")
        return write_atomic(self.root / f"{stamp}_{record.run_id}.json", to_json(record))

    def records(self) -> list[RunRecord]:
        if not self.root.is_dir():
            return []
        out = []
        for path in sorted(self.root.glob("*.json")):
            try:
                out.append(RunRecord(**json.loads(path.read_text())))
            except (json.JSONDecodeError, TypeError) as error:
                raise ValueError(f"results store {self.root}: {path.name} is not a run record ({error})") from None
        return out

    def flat_rows(self) -> list[dict[str, Any]]:
        """One row per record: identity columns, then ``param.*`` and ``metric.*`` columns (union over records)."""
        rows = []
        for record in self.records():
            row = {"time": record.time, "run_id": record.run_id, "kind": record.kind, "method": record.method,
                   "model": record.model, "data": record.data}
            row.update({f"param.{k}": _jsonable(v) for k, v in record.parameters.items()})
            row.update({f"metric.{k}": _jsonable(v) for k, v in record.metrics.items()
                        if not isinstance(_jsonable(v), (list, dict))})
            rows.append(row)
        columns = list(dict.fromkeys(key for row in rows for key in row))
        return [{c: row.get(c, "") for c in columns} for row in rows]

    def export(self, path: str | Path) -> Path:
        """Write all records to ``path``: ``.csv`` (flat rows) or ``.json`` (full records)."""
        path = Path(path)
        if path.suffix == ".csv":
            rows = self.flat_rows()
            if not rows:
                raise ValueError(f"results store {self.root} holds no records to export")
            return write_atomic(path, csv_text(rows))
        if path.suffix == ".json":
            return write_atomic(path, to_json([asdict(r) for r in self.records()]))
        raise ValueError(f"export format must be .csv or .json, got {path.suffix!r}")
