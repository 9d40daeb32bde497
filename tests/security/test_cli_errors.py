"""Command-line mistakes about where outputs go (and which model to use): each is one ``xaiimg: error:`` line on
stderr with exit status 2, reported before any model is loaded or any store is read, with nothing on disk changed."""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

import xaiimg.compare
import xaiimg.models
import xaiimg.models.zoo
from xaiimg.cli import main
from xaiimg.data import sample_images
from xaiimg.report import ResultsStore, RunRecord


@pytest.fixture
def workspace(tmp_path) -> Path:
    """``images/`` (two sample photographs), ``alias`` (a link to it), ``file.txt``, a folder named ``table.csv``
    and a results store ``runs/`` holding one record."""
    images = tmp_path / "images"
    images.mkdir()
    for name, image in zip(["chelsea", "coffee"], sample_images(["chelsea", "coffee"])):
        image.resize((64, 64)).save(images / f"{name}.png")
    (tmp_path / "alias").symlink_to(images)
    (tmp_path / "file.txt").write_text("a file, not a folder")
    (tmp_path / "table.csv").mkdir()
    ResultsStore(tmp_path / "runs").add(RunRecord("explain", "grad-cam", "tiny", "images", {}, {"images": 2},
                                                  versions={"python": "3"}))
    return tmp_path


@pytest.fixture
def no_model_no_store(monkeypatch):
    """Loading a model or reading a results store fails the test: validation must come first."""
    def refuse(*_args, **_kwargs):
        raise AssertionError("a model was loaded or a store read before the arguments were checked")

    monkeypatch.setattr(xaiimg.compare, "open_model", refuse)
    for module in (xaiimg.models, xaiimg.models.zoo):
        monkeypatch.setattr(module, "load_model", refuse)
        monkeypatch.setattr(module, "load_checkpoint_model", refuse)
    monkeypatch.setattr(ResultsStore, "records", refuse)


def snapshot(root: Path) -> dict[str, tuple]:
    """Name -> (mode, size, mtime) of everything under ``root`` (links not followed), ``root`` included."""
    entries = {".": root.lstat()}
    for folder, names, files in os.walk(root):
        for name in names + files:
            path = Path(folder, name)
            entries[str(path.relative_to(root))] = path.lstat()
    return {name: (st.st_mode, st.st_size, st.st_mtime_ns) for name, st in entries.items()}


def without_folder_times(entries: dict[str, tuple]) -> dict[str, tuple]:
    return {name: (mode, size, None if stat.S_ISDIR(mode) else mtime) for name, (mode, size, mtime) in entries.items()}


def run(argv: list[str]) -> int:
    """``main(argv)``'s exit status, usage errors (``SystemExit``) included."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def assert_one_line_error(capsys, code: int, *fragments: str) -> str:
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("xaiimg: error: "), captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


EXPLAIN = ["explain", "{w}/images", "--method", "grad-cam"]
CASES = {
    "out is a file": (EXPLAIN + ["--out", "{w}/file.txt"], "--out {w}/file.txt exists and is a file"),
    "out's parent is a file": (EXPLAIN + ["--out", "{w}/file.txt/out"], "{w}/file.txt is a file, not a folder"),
    "out's ancestor is a file": (EXPLAIN + ["--out", "{w}/file.txt/a/b"], "{w}/file.txt is a file, not a folder"),
    "out is the input folder": (EXPLAIN + ["--out", "{w}/images"], "inside the input folder {w}/images"),
    "out is the input folder by a link": (EXPLAIN + ["--out", "{w}/alias"], "inside the input folder {w}/images"),
    "out is inside the input folder": (EXPLAIN + ["--out", "{w}/images/maps"], "--allow-out-in-input"),
    "evaluate out inside the input folder": (["evaluate", "{w}/alias", "--method", "gradient", "--out",
                                              "{w}/images/scores"], "inside the input folder {w}/alias"),
    "compare out is a file": (["compare", "{w}/images", "--method", "gradient", "--out", "{w}/file.txt"],
                              "exists and is a file"),
    "store is a file": (EXPLAIN + ["--out", "{w}/out", "--store", "{w}/file.txt"],
                        "--store {w}/file.txt exists and is a file"),
    "store's parent is a file": (EXPLAIN + ["--out", "{w}/out", "--store", "{w}/file.txt/runs"],
                                 "--store {w}/file.txt/runs cannot be created"),
    "store inside the input folder": (EXPLAIN + ["--out", "{w}/out", "--store", "{w}/images/runs"],
                                      "--store {w}/images/runs is inside the input folder"),
    "arch without checkpoint": (EXPLAIN + ["--arch", "resnet18", "--out", "{w}/out"],
                                "--arch resnet18 needs --checkpoint"),
    "model with checkpoint": (EXPLAIN + ["--model", "vgg16", "--arch", "resnet18", "--checkpoint", "{w}/file.txt",
                                         "--out", "{w}/out"], "--model names a zoo model"),
    "negative target": (EXPLAIN + ["--target", "-1", "--out", "{w}/out"], "argument --target"),
    "unknown device": (EXPLAIN + ["--device", "tpu", "--out", "{w}/out"], "--device: unknown device 'tpu'"),
    "absent device": (EXPLAIN + ["--device", "cuda:99", "--out", "{w}/out"], "--device: device 'cuda:99': "),
    "missing out": (EXPLAIN, "the following arguments are required: --out"),
    "export out is a folder": (["export", "--store", "{w}/runs", "--out", "{w}/table.csv"],
                               "--out {w}/table.csv exists and is a folder"),
    "export out under a file": (["export", "--store", "{w}/runs", "--out", "{w}/file.txt/all.csv"],
                                "{w}/file.txt is a file, not a folder"),
    "export wrong suffix": (["export", "--store", "{w}/runs", "--out", "{w}/all.txt"], "must end in .csv or .json"),
    "export store is a file": (["export", "--store", "{w}/file.txt", "--out", "{w}/all.csv"], "is not a folder"),
}


@pytest.mark.parametrize("case", CASES)
def test_mistake_is_one_line_exit_2_before_any_model_and_changes_nothing(workspace, no_model_no_store, capsys,
                                                                          case):
    argv, fragment = CASES[case]
    before = snapshot(workspace)
    code = run([item.format(w=workspace) for item in argv])
    assert_one_line_error(capsys, code, fragment.format(w=workspace))
    assert snapshot(workspace) == before


@pytest.fixture
def unwritable(workspace):
    """A folder this process may not create entries in: mode 0o555, or for root (whom permissions do not stop) a
    path under a regular file, which no process can create."""
    if os.geteuid() == 0:
        yield workspace / "file.txt"
        return
    locked = workspace / "locked"
    locked.mkdir(mode=0o555)
    yield locked
    locked.chmod(0o755)


@pytest.mark.parametrize("argv", [EXPLAIN + ["--out", "{u}/out"],
                                  EXPLAIN + ["--out", "{w}/out", "--store", "{u}/runs"],
                                  ["export", "--store", "{w}/runs", "--out", "{u}/all.json"]])
def test_unwritable_location_is_one_line_exit_2(workspace, unwritable, no_model_no_store, capsys, argv):
    before = snapshot(workspace)
    code = run([item.format(w=workspace, u=unwritable) for item in argv])
    assert_one_line_error(capsys, code, str(unwritable))
    assert snapshot(workspace) == before


@pytest.fixture
def tiny_model(monkeypatch, tiny_cnn):
    """``open_model`` gives the tiny CNN of conftest (5 classes), so commands run in a moment."""
    monkeypatch.setattr(xaiimg.compare, "open_model", lambda *_args, **_kwargs: tiny_cnn)


@pytest.mark.parametrize("out", ["out", "new/nested/out"])
def test_failed_write_is_one_line_naming_the_path(workspace, tiny_model, monkeypatch, capsys, out):
    def disk_full(_figure, stem, **_kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"{stem}.png")

    monkeypatch.setattr("xaiimg.viz.save_figure", disk_full)
    (workspace / "out").mkdir()
    before = snapshot(workspace)
    code = run(["explain", str(workspace / "images"), "--method", "gradient", "--out", str(workspace / out)])
    line = assert_one_line_error(capsys, code, "saliency_grid.png", os.strerror(errno.ENOSPC))
    assert str(workspace / out) in line
    assert without_folder_times(snapshot(workspace)) == without_folder_times(before)   # staging came and went


def test_failed_export_write_is_one_line_naming_the_path(workspace, monkeypatch, capsys):
    def read_only_file_system(_store, path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(ResultsStore, "export", read_only_file_system)
    code = run(["export", "--store", str(workspace / "runs"), "--out", str(workspace / "all.csv")])
    assert_one_line_error(capsys, code, f"{workspace / 'all.csv'}: {os.strerror(errno.EROFS)}")


def test_export_of_a_poisoned_store_names_each_skipped_file(workspace, capsys):
    runs = workspace / "runs"
    (runs / "records" / "broken.json").write_text("{not json")
    (runs / "export.json").write_text("[]")
    out = workspace / "all.csv"
    assert main(["export", "--store", str(runs), "--out", str(out)]) == 0
    warnings = capsys.readouterr().err.splitlines()
    assert sorted(warnings) == [f"xaiimg: warning: skipped {runs / 'export.json'}: not a JSON object (it is an array)",
                                f"xaiimg: warning: skipped {runs / 'records' / 'broken.json'}: "
                                "not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 "
                                "(char 1))"]
    assert len(out.read_text().splitlines()) == 2
