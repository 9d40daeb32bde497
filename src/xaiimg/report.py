"""Tables and run records: CSV / JSON / LaTeX (booktabs) tables and a self-describing results store.

Every file is written atomically (a synced temporary file, then a rename or a link), so an interrupted run leaves
nothing half-written; files get the mode a plain ``open()`` would give them (``0o666`` less the umask).
"""
from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import platform
import re
import stat
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

VERSIONED_PACKAGES = ("xaiimg", "torch", "torchvision", "timm", "captum", "numpy")


def _write_temporary(path: Path, text: str | bytes) -> Path:
    """Write ``text`` (str as UTF-8, or bytes as they are; synced to disk) to a new hidden file beside ``path``,
    created as ``open()`` would."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with (os.fdopen(handle, "wb") if isinstance(text, bytes)
              else os.fdopen(handle, "w", encoding="utf-8", newline="")) as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def write_atomic(path: str | Path, text: str | bytes) -> Path:
    """Write ``text`` (or bytes) to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    temporary = _write_temporary(path, text)
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def _write_new(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically, never replacing an existing file (a hard link to a temporary file)."""
    temporary = _write_temporary(path, text)
    try:
        os.link(temporary, path)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "already exists, not replaced", str(path)) from None
    finally:
        temporary.unlink(missing_ok=True)
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



def write_timings(path: str | Path, seconds: Mapping[str, float]) -> Path:
    """Write measured wall-clock ``seconds`` per method to ``path`` (JSON, with the torch thread count and the
    machine), apart from the tables: timings differ on every run, so a table holding them would never rebuild
    byte-identical. The pipeline declares these files as uncached DVC metrics (``dvc metrics show``)."""
    import torch

    return write_atomic(path, to_json({"seconds": dict(seconds), "torch_threads": torch.get_num_threads(),
                                       "machine": platform.machine(), "processor": platform.processor()}))

# ------------------------------------------------------------------------------------------ results store
RECORD_SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})
_UNSAFE_NAME_CHARACTERS = re.compile(r"[^0-9A-Za-z_-]")
_JSON_TYPE_NAMES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "an integer",
                    float: "a number", type(None): "null"}


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
    time: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="microseconds"))
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    schema_version: int = RECORD_SCHEMA_VERSION


_RECORD_FIELD_TYPES: dict[str, type] = {
    "kind": str, "method": str, "model": str, "data": str, "parameters": dict, "metrics": dict, "versions": dict,
    "time": str, "run_id": str, "schema_version": int}


def _json_type(value: Any) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _record_from_json(data: Any, legacy: bool) -> RunRecord:
    """The record that parsed JSON ``data`` describes; ``ValueError`` with a short reason when it is not a valid one.

    ``legacy`` (a file of the old layout, in the store root) lets ``schema_version`` be absent: those are version 1.
    """
    if not isinstance(data, dict):
        raise ValueError(f"not a JSON object (it is {_json_type(data)})")
    if legacy:
        data = {"schema_version": 1, **data}
    version = data.get("schema_version")
    if type(version) is int and version not in SUPPORTED_SCHEMA_VERSIONS:
        newest = max(SUPPORTED_SCHEMA_VERSIONS)
        raise ValueError(f"schema version {version} is newer than this xaiimg reads ({newest})" if version > newest
                         else f"schema version {version} is not supported")
    missing = [name for name in _RECORD_FIELD_TYPES if name not in data]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(missing)}")
    unknown = sorted(name for name in data if name not in _RECORD_FIELD_TYPES)
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(unknown)}")
    for name, expected in _RECORD_FIELD_TYPES.items():
        if type(data[name]) is not expected:
            raise ValueError(f"field {name!r} is {_json_type(data[name])}, expected {_JSON_TYPE_NAMES[expected]}")
    return RunRecord(**data)


def _read_record(path: Path, legacy: bool) -> RunRecord:
    """The record in the file ``path``; ``ValueError`` with a short reason when it is not a valid one."""
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise ValueError("not a regular file")
        raw = path.read_bytes()
    except OSError as error:
        raise ValueError(f"cannot read it ({error.strerror or error})") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON ({error})") from None
    except RecursionError:
        raise ValueError("not valid JSON (nested too deeply)") from None
    return _record_from_json(data, legacy)


@dataclass(frozen=True)
class StoreContents:
    """What a scan of a results store found: the valid records (oldest first, by file name) and, for every other
    file, its name relative to the store root and why it is not a record."""

    records: list[RunRecord]
    unreadable: list[tuple[str, str]]


class ResultsStore:
    """A folder of run records, listable and exportable (CSV or JSON).

    Each record is ``<root>/records/<time>_<run_id>.json``, written atomically and never over another file, so
    processes can add records at once. Reading validates every file and skips (and names) the ones that are not
    records; hidden files (writes in progress) are ignored. ``<root>/*.json`` files of the old layout are read too.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def records_dir(self) -> Path:
        return self.root / "records"

    def add(self, record: RunRecord) -> Path:
        """Store ``record`` as a new file; ``ValueError`` if it is not a valid record, ``FileExistsError`` if one
        of the same time and run id is already stored."""
        data = _jsonable(record)
        try:
            _record_from_json(data, legacy=False)
        except ValueError as error:
            raise ValueError(f"not a valid run record: {error}") from None
        stamp = record.time.replace(":", "").replace("-", "").replace("+0000", "Z")
        name = _UNSAFE_NAME_CHARACTERS.sub("-", f"{stamp}_{record.run_id}")
        return _write_new(self.records_dir / f"{name}.json", to_json(data))

    def scan(self) -> StoreContents:
        """Every valid record, and every file where a record belongs that is not one, with the reason."""
        found: list[tuple[str, str, RunRecord]] = []
        unreadable: list[tuple[str, str]] = []
        for folder, legacy in ((self.root, True), (self.records_dir, False)):
            try:
                entries = list(folder.iterdir())
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as error:
                unreadable.append((self._name(folder), f"cannot list it ({error.strerror or error})"))
                continue
            for path in entries:
                if path.name.startswith(".") or (legacy and path.suffix != ".json"):
                    continue
                try:
                    found.append((path.name, self._name(path), _read_record(path, legacy)))
                except ValueError as error:
                    unreadable.append((self._name(path), str(error)))
        found.sort(key=lambda item: item[:2])
        return StoreContents([record for *_, record in found], sorted(unreadable))

    def records(self) -> list[RunRecord]:
        """The valid records, in time order (files that are not records are skipped: see :meth:`scan`)."""
        return self.scan().records

    def flat_rows(self, records: Sequence[RunRecord] | None = None) -> list[dict[str, Any]]:
        """One row per record (``records``, default the store's): identity columns, then ``param.*`` and
        ``metric.*`` columns (union over records)."""
        rows = []
        for record in self.records() if records is None else records:
            row = {"time": record.time, "run_id": record.run_id, "kind": record.kind, "method": record.method,
                   "model": record.model, "data": record.data}
            row.update({f"param.{k}": _jsonable(v) for k, v in record.parameters.items()})
            row.update({f"metric.{k}": _jsonable(v) for k, v in record.metrics.items()
                        if not isinstance(_jsonable(v), (list, dict))})
            rows.append(row)
        columns = list(dict.fromkeys(key for row in rows for key in row))
        return [{c: row.get(c, "") for c in columns} for row in rows]

    def export(self, path: str | Path) -> Path:
        """Write all valid records to ``path``, which must lie outside the store: ``.csv`` (flat rows) or ``.json``
        (full records)."""
        path = Path(path)
        root = self.root.resolve()
        target = path.resolve()
        if target == root or root in target.parents:
            raise ValueError(f"cannot export to {path}: it is inside the results store {self.root}; "
                             "choose a path outside it")
        if path.suffix == ".csv":
            rows = self.flat_rows()
            if not rows:
                raise ValueError(f"results store {self.root} holds no records to export")
            return write_atomic(path, csv_text(rows))
        if path.suffix == ".json":
            return write_atomic(path, to_json([asdict(r) for r in self.records()]))
        raise ValueError(f"export format must be .csv or .json, got {path.suffix!r}")

    def _name(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()
