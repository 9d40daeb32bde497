"""The results store under careless or hostile conditions: poisoned folders, exports aimed into the store, the
umask, unsafe record names and concurrent writers."""
from __future__ import annotations

import csv
import json
import os
import stat
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from xaiimg.report import ResultsStore, RunRecord, write_atomic, write_table

VERSIONS = {"python": "3.11"}  # explicit: the default looks up several installed packages, which is slow


def _record(method: str = "grad-cam", **changes) -> RunRecord:
    """A record of ``method``; tests that check the order pass ``time`` (two records may share a microsecond)."""
    return replace(RunRecord("explain", method, "tiny", "sample", {"layer": "features.3"}, {"ins": 0.5},
                             versions=VERSIONS), **changes)


def _listing(folder: Path) -> dict[str, bytes | None]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else None for p in folder.rglob("*")}


def test_poisoned_store_reads_every_good_record_and_names_each_bad_file(tmp_path):
    store = ResultsStore(tmp_path / "runs")
    good = store.add(_record("a", time="2024-01-01T00:00:01+00:00"))
    store.add(_record("b", time="2024-01-01T00:00:02+00:00",
                      metrics={"ins": float("nan"), "odd": {"nested": [1]}, "flag": True}))
    old_layout = {k: v for k, v in asdict(_record("legacy", time="2020-01-01T00:00:00+00:00")).items()
                  if k != "schema_version"}
    (store.root / "20200101T000000Z_legacy.json").write_text(json.dumps(old_layout))
    (store.root / "export.json").write_text(json.dumps([asdict(_record())]))
    (store.root / "export.csv").write_text("not a record, not a .json name: ignored\n")
    (store.root / "x.json").mkdir()
    records = store.records_dir
    (records / "latin1.json").write_bytes(json.dumps(asdict(_record("café"))).replace("\\u00e9", "\xe9")
                                          .encode("latin-1"))
    (records / "list_metrics.json").write_text(json.dumps({**asdict(_record()), "metrics": [1, 2]}))
    (records / "future.json").write_text(json.dumps({**asdict(_record()), "schema_version": 2}))
    (records / "truncated.json").write_text(good.read_text()[:40])
    (records / "unversioned.json").write_text(json.dumps(old_layout))
    (records / ".in-progress.json.0123.tmp").write_text("{")

    contents = store.scan()

    assert [r.method for r in contents.records] == ["legacy", "a", "b"]
    assert contents.records[0].schema_version == 1
    reasons = dict(contents.unreadable)
    assert list(reasons) == ["export.json", "records/future.json", "records/latin1.json", "records/list_metrics.json",
                             "records/truncated.json", "records/unversioned.json", "x.json"]
    assert reasons["export.json"] == "not a JSON object (it is an array)"
    assert reasons["x.json"] == "not a regular file"
    assert reasons["records/latin1.json"] == "not UTF-8 text"
    assert reasons["records/list_metrics.json"] == "field 'metrics' is an array, expected an object"
    assert reasons["records/future.json"] == "schema version 2 is newer than this xaiimg reads (1)"
    assert reasons["records/truncated.json"].startswith("not valid JSON (")
    assert reasons["records/unversioned.json"] == "missing field(s) schema_version"
    assert store.records() == contents.records
    rows = store.flat_rows()
    assert [row["method"] for row in rows] == ["legacy", "a", "b"]
    assert rows[2]["metric.ins"] is None and rows[2]["metric.flag"] is True and "metric.odd" not in rows[2]
    exported = list(csv.DictReader(store.export(tmp_path / "all.csv").open()))
    assert [row["method"] for row in exported] == ["legacy", "a", "b"]


@pytest.mark.parametrize("change,reason", [
    ({"kind": 3}, "field 'kind' is an integer, expected a string"),
    ({"parameters": None}, "field 'parameters' is null, expected an object"),
    ({"versions": "3.11"}, "field 'versions' is a string, expected an object"),
    ({"schema_version": True}, "field 'schema_version' is a boolean, expected an integer"),
    ({"schema_version": "1"}, "field 'schema_version' is a string, expected an integer"),
    ({"schema_version": 0}, "schema version 0 is not supported"),
    ({"comment": "extra"}, "unknown field(s) comment"),
])
def test_records_must_have_exactly_the_known_fields_and_types(tmp_path, change, reason):
    store = ResultsStore(tmp_path)
    store.add(_record("kept"))
    (store.records_dir / "bad.json").write_text(json.dumps({**asdict(_record()), **change}))
    contents = store.scan()
    assert [r.method for r in contents.records] == ["kept"] and contents.unreadable == [("records/bad.json", reason)]


def test_missing_fields_and_deep_nesting_are_reported(tmp_path):
    store = ResultsStore(tmp_path)
    record = asdict(_record())
    del record["metrics"], record["run_id"]
    (store.records_dir).mkdir()
    (store.records_dir / "short.json").write_text(json.dumps(record))
    (store.records_dir / "deep.json").write_text("[" * 100_000)
    assert store.scan().unreadable == [("records/deep.json", "not valid JSON (nested too deeply)"),
                                       ("records/short.json", "missing field(s) metrics, run_id")]


def test_unreadable_file_is_reported(tmp_path, monkeypatch):
    """A file the process may not read (simulated: root reads files whatever their mode, and CI runs as root)."""
    store = ResultsStore(tmp_path)
    locked = store.add(_record("locked"))
    store.add(_record("open"))
    read_bytes = Path.read_bytes

    def denied(path):
        if path == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", denied)
    contents = store.scan()
    assert [r.method for r in contents.records] == ["open"]
    assert contents.unreadable == [(f"records/{locked.name}", "cannot read it (Permission denied)")]


def test_adding_a_record_never_replaces_one_already_stored(tmp_path):
    store = ResultsStore(tmp_path)
    record = _record("first")
    path = store.add(record)
    stored = path.read_bytes()
    with pytest.raises(FileExistsError, match="not replaced"):
        store.add(replace(record, method="second"))
    assert path.read_bytes() == stored and [p.name for p in store.records_dir.iterdir()] == [path.name]
    assert json.loads(stored)["schema_version"] == 1 and store.records() == [record]


def test_add_writes_only_valid_records_inside_the_records_folder(tmp_path):
    store = ResultsStore(tmp_path / "runs")
    path = store.add(_record(run_id="../../escape", time="/etc/passwd"))
    assert path.parent == store.records_dir and [p.name for p in store.records_dir.iterdir()] == [path.name]
    assert store.records()[0].run_id == "../../escape"
    with pytest.raises(ValueError, match="not a valid run record: field 'metrics' is an array"):
        store.add(_record(metrics=[1, 2]))
    assert len(list(store.records_dir.iterdir())) == 1


@pytest.mark.parametrize("inside", ["export.json", "records/export.csv", "records/../export.csv", "link/export.csv",
                                    "."])
def test_export_inside_the_store_is_refused_and_writes_nothing(tmp_path, inside):
    store = ResultsStore(tmp_path / "runs")
    store.add(_record())
    (tmp_path / "link").symlink_to(store.root, target_is_directory=True)
    before = _listing(store.root)
    with pytest.raises(ValueError, match=r"^cannot export to .*: it is inside the results store .*runs; choose a "
                                         r"path outside it$"):
        store.export(store.root / inside if inside != "link/export.csv" else tmp_path / inside)
    assert _listing(store.root) == before and store.scan().unreadable == []


def test_export_outside_the_store_works(tmp_path):
    store = ResultsStore(tmp_path / "runs")
    store.add(_record("a", time="2024-01-01T00:00:01+00:00"))
    store.add(_record("b", time="2024-01-01T00:00:02+00:00"))
    beside = tmp_path / "runs-export.csv"
    assert [row["method"] for row in csv.DictReader(store.export(beside).open())] == ["a", "b"]
    assert store.flat_rows(store.records()[1:])[0]["method"] == "b"
    exported = json.loads(store.export(tmp_path / "elsewhere" / "all.json").read_text())
    assert [r["method"] for r in exported] == ["a", "b"] and exported[0]["schema_version"] == 1
    assert store.scan().unreadable == []


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        store = ResultsStore(tmp_path / "runs")
        store.add(_record())
        written = [*write_table([{"method": "a", "auc": 0.5}], tmp_path / "table").values(),
                   write_atomic(tmp_path / "plain.txt", "text"), store.export(tmp_path / "all.json"),
                   *store.records_dir.iterdir()]
    finally:
        os.umask(previous)
    assert {path.name: stat.S_IMODE(path.stat().st_mode) for path in written} == {path.name: mode for path in written}
    assert (tmp_path / "plain.txt").read_text() == "text"


WRITER = """
import sys
from xaiimg.report import ResultsStore, RunRecord

store, count, writer = ResultsStore(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
print("ready", flush=True)
sys.stdin.readline()
for index in range(count):
    store.add(RunRecord("explain", writer, "tiny", "sample", {"index": index}, {"score": index / count},
                        versions={"python": "3.11"}))
"""


def test_two_processes_adding_at_once_lose_no_record(tmp_path):
    store = ResultsStore(tmp_path / "runs")
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(store.root), "200", f"writer{n}"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for n in range(2)]
    try:
        assert [w.stdout.readline() for w in writers] == ["ready\n", "ready\n"]
        store.records_dir.mkdir(parents=True)
        (store.records_dir / "corrupt.json").write_text('{"kind": "explain", "metr')
        for w in writers:
            w.stdin.write("go\n")
            w.stdin.flush()
        while any(w.poll() is None for w in writers):  # a record being written is never visible half-done
            assert [name for name, _ in store.scan().unreadable] == ["records/corrupt.json"]
        assert [w.wait() for w in writers] == [0, 0]
    finally:
        for w in writers:
            w.kill()
            w.communicate()
    contents = store.scan()
    assert len(contents.records) == 400
    for n in range(2):
        indices = sorted(r.parameters["index"] for r in contents.records if r.method == f"writer{n}")
        assert indices == list(range(200))
    assert contents.unreadable == [("records/corrupt.json", "not valid JSON (Unterminated string starting at: "
                                                            "line 1 column 21 (char 20))")]
