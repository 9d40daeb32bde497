"""The xaiimg command line: each command on sample images, and bad input (clear message, exit 2, nothing written)."""
from __future__ import annotations

import csv
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xaiimg.cli import main
from xaiimg.data import sample_images
from xaiimg.report import ResultsStore


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for name, image in zip(["chelsea", "coffee"], sample_images(["chelsea", "coffee"])):
        image.resize((256, 256)).save(folder / f"{name}.png")
    return folder


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def test_explain_writes_grid_and_maps(images, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["explain", str(images), "--method", "grad-cam", "--method", "gradient", "--out", str(out),
                 "--store", str(tmp_path / "runs")])
    assert code == 0
    assert _listing(out) == ["maps.pt", "saliency_grid.pdf", "saliency_grid.png"]
    saved = torch.load(out / "maps.pt", weights_only=True)
    assert saved["files"] == ["chelsea.png", "coffee.png"] and saved["maps"]["grad-cam"].shape == (2, 1, 224, 224)
    assert len(ResultsStore(tmp_path / "runs").records()) == 1
    assert str(out / "saliency_grid.png") in capsys.readouterr().out


def test_evaluate_and_compare_tables(images, tmp_path):
    out = tmp_path / "eval"
    assert main(["compare", str(images / "coffee.png"), "--method", "grad-cam", "--param",
                 "grad-cam.layer=\"blocks.6\"", "--protocol", "groupcam", "--out", str(out), "--formats", "png",
                 "--store", str(tmp_path / "runs")]) == 0
    assert _listing(out) == ["saliency_grid.png", "scores.csv", "scores.json", "scores.tex", "scores_per_image.csv"]
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert rows[0]["method"] == "grad-cam" and 0 <= float(rows[0]["insertion_auc"]) <= 1
    assert json.loads((out / "scores.json").read_text())["protocol"] == "groupcam"
    export = tmp_path / "all.csv"
    assert main(["export", "--store", str(tmp_path / "runs"), "--out", str(export)]) == 0
    exported = list(csv.DictReader(export.open()))
    assert exported[0]["kind"] == "evaluate" and exported[0]["metric.insertion_auc"] == rows[0]["insertion_auc"]


@pytest.mark.parametrize("make_args,message", [
    (lambda d, t: ["explain", str(t / "missing.jpg"), "--method", "grad-cam"], "no such image"),
    (lambda d, t: ["explain", str(d), "--method", "grad-kam"], "unknown method 'grad-kam'"),
    (lambda d, t: ["explain", str(t / "broken.jpg"), "--method", "grad-cam"], "not a readable image"),
    (lambda d, t: ["explain", str(d), "--method", "grad-cam", "--arch", "resnet18", "--checkpoint",
                   str(t / "pickled.pth")], "not a plain state_dict"),
    (lambda d, t: ["explain", str(d), "--method", "grad-cam", "--arch", "resnet18", "--checkpoint",
                   str(t / "linear.pth")], "does not fit architecture 'resnet18': missing keys ("),
    (lambda d, t: ["explain", str(d), "--method", "grad-cam", "--param", "grad-cam.layer=\"nope\""],
     "unknown layer 'nope'"),
    (lambda d, t: ["explain", str(d), "--method", "grad-cam", "--param", "rise.seed=1"], "not among --method"),
])
def test_bad_input_exits_2_and_writes_nothing(images, tmp_path, capsys, make_args, message):
    (tmp_path / "broken.jpg").write_text("not an image")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "pickled.pth")
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "linear.pth")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier result")
    code = main(make_args(images, tmp_path) + ["--out", str(out)])
    assert code == 2
    assert message in capsys.readouterr().err
    assert _listing(out) == ["keep.txt"]


def test_new_output_folder_is_removed_on_failure(images, tmp_path):
    out = tmp_path / "fresh"
    assert main(["compare", str(images), "--method", "grad-cam", "--target", "5000", "--out", str(out)]) == 2
    assert not out.exists()


@pytest.fixture
def tiny_model(monkeypatch, tiny_cnn):
    """``open_model`` gives the tiny CNN of conftest, so a command runs in a moment."""
    monkeypatch.setattr("xaiimg.compare.open_model", lambda *_args, **_kwargs: tiny_cnn)


def test_out_in_an_input_folder_only_when_allowed(images, tmp_path, tiny_model, capsys):
    folder = tmp_path / "photos"
    shutil.copytree(images, folder)
    command = ["explain", str(folder), "--method", "gradient", "--formats", "png", "--out", str(folder)]
    assert main(command) == 2
    assert "--allow-out-in-input" in capsys.readouterr().err and _listing(folder) == ["chelsea.png", "coffee.png"]
    assert main(command + ["--allow-out-in-input"]) == 0
    assert _listing(folder) == ["chelsea.png", "coffee.png", "maps.pt", "saliency_grid.png"]


def test_outputs_follow_the_umask(images, tmp_path, tiny_model):
    previous = os.umask(0o027)
    try:
        assert main(["explain", str(images), "--method", "gradient", "--out", str(tmp_path / "new" / "out"),
                     "--store", str(tmp_path / "runs")]) == 0
    finally:
        os.umask(previous)
    written = list(tmp_path.rglob("*"))
    assert {p.name for p in written} >= {"new", "out", "runs", "maps.pt", "saliency_grid.png", "saliency_grid.pdf"}
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == (0o750 if path.is_dir() else 0o640), path


def test_help_explains_every_option():
    result = subprocess.run([sys.executable, "-m", "xaiimg.cli", "compare", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for option in ["--method", "--param", "--model", "--arch", "--checkpoint", "--target", "--enhance", "--out",
                   "--store", "--allow-out-in-input", "--metric", "--protocol", "--formats"]:
        assert option in result.stdout


def test_methods_lists_registry(capsys):
    assert main(["methods"]) == 0
    listed = capsys.readouterr().out
    assert "grad-cam: layer=None" in listed


def test_one_command_line_runs_the_studies_and_the_pipeline(capsys):
    """`xaiimg` is the package's only entry point: training runs and notebook stages are its commands."""
    from xaiimg.models.aesthetic import BACKBONES, DualAttention

    with pytest.raises(SystemExit):
        main(["--help"])
    listed = capsys.readouterr().out
    for command in ["train-synthetic", "train-aesthetic", "train-ava", "focus-report", "notebook"]:
        assert command in listed
    for command in ["train-aesthetic", "train-ava"]:
        with pytest.raises(SystemExit):
            main([command, "--help"])
        helptext = capsys.readouterr().out
        assert all(name in helptext for name in (*BACKBONES, *DualAttention.AGGREGATIONS))
    package = Path(__file__).resolve().parents[1] / "src" / "xaiimg"
    entry_points = [p.relative_to(package) for p in package.rglob("*.py") if "__main__" in p.read_text()]
    assert entry_points == [Path("cli.py")]


@pytest.mark.parametrize("arguments,message", [
    (["train-aesthetic", "--backbone", "resnet18"], "--backbone must be one of efficientnet_lite0, efficientnet_lite2"),
    (["train-ava", "--aggregation", "mean", "--labels", "a", "--images", "b", "--test-labels", "c"],
     "--aggregation must be one of concat, sum"),
])
def test_training_options_are_checked_before_training(arguments, message, tmp_path, capsys):
    assert main(arguments + ["--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip() == f"xaiimg: error: {message}, got {arguments[2]!r}"
    assert not (tmp_path / "run").exists()


def test_notebook_command_refuses_an_unknown_name(capsys):
    assert main(["notebook", "../../README"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("xaiimg: error: no notebook '../../README' in ") and "04_msgcam_comparison" in error
