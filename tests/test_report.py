"""Tables (CSV/JSON/booktabs) and the results store."""
from __future__ import annotations

import csv
import json

import pytest

from xaiimg.report import ResultsStore, RunRecord, latex_table, markdown_table, write_atomic, write_table


def test_write_table_three_formats(tmp_path):
    rows = [{"method": "grad_cam", "AUC ins": 0.61234, "AUC del": 0.1},
            {"method": "msg-cam", "AUC ins": 0.7, "AUC del": float("nan")}]
    paths = write_table(rows, tmp_path / "t", caption="Insertion & deletion", label="tab:x",
                        bold_best={"AUC ins": "max"})
    assert list(csv.DictReader(paths["csv"].open()))[0]["AUC ins"] == "0.61234"
    assert json.loads(paths["json"].read_text())[1]["AUC del"] is None
    tex = paths["tex"].read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"grad\_cam & 0.612 & 0.100 \\" in tex
    assert r"\textbf{0.700}" in tex and r"Insertion \& deletion" in tex and "--" in tex


def test_empty_table_is_an_error():
    with pytest.raises(ValueError, match="no rows"):
        latex_table([])


def test_atomic_write_leaves_nothing_on_error(tmp_path):

    with pytest.raises(TypeError):
        write_atomic(tmp_path / "x.txt", 3)  # not text
    assert list(tmp_path.iterdir()) == []


def test_results_store_round_trip_and_export(tmp_path):
    store = ResultsStore(tmp_path / "runs")
    path = store.add(RunRecord("explain", "grad-cam", "efficientnet_lite0", "chelsea", {"layer": "bn2"}, {"ins": 0.5}))
    assert path.parent == tmp_path / "runs" / "records" and json.loads(path.read_text())["schema_version"] == 1
    store.add(RunRecord("evaluate", "rise", "efficientnet_lite0", "coffee", {"seed": 0}, {"del": 0.2, "curve": [1, 2]}))
    records = store.records()
    assert [r.method for r in records] == ["grad-cam", "rise"] and records[0].versions["torch"]
    rows = list(csv.DictReader(store.export(tmp_path / "all.csv").open()))
    assert rows[0]["param.layer"] == "bn2" and rows[1]["metric.del"] == "0.2" and "metric.curve" not in rows[0]
    assert json.loads(store.export(tmp_path / "all.json").read_text())[1]["metrics"]["curve"] == [1, 2]
    with pytest.raises(ValueError, match="csv or .json"):
        store.export(tmp_path / "all.xlsx")


def test_markdown_table_golden():
    rows = [{"method": "a", "auc": 0.12345, "n": 3}, {"method": "b", "auc": float("nan"), "n": 4}]
    assert markdown_table(rows, digits=2) == ("| method | auc | n |\n|---|---:|---:|\n| a | 0.12 | 3 |\n"
                                              "| b | -- | 4 |\n")
    with pytest.raises(ValueError, match="no rows"):
        markdown_table([])
