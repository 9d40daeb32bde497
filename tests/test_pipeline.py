"""params.yaml -> papermill parameters: every notebook's values are ones its parameters cell declares; dvc.yaml's
stages run the command line and depend on the whole package and their own notebook; notebooks are found by name."""
import copy
import json
from pathlib import Path

import papermill
import pytest
import yaml

from xaiimg.pipeline import (
    PROFILES,
    REPORT_LIMIT_BYTES,
    REPORTS,
    VOLATILE_CELL_METADATA,
    VOLATILE_NOTEBOOK_METADATA,
    load_params,
    notebook_parameters,
    notebook_source,
    publishable,
    run_notebook,
)

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
NOTEBOOK_COMMAND = "python -m xaiimg.cli notebook "


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("name", sorted(PARAMS["notebooks"]))
def test_params_yaml_sets_only_declared_parameters(name, profile):
    declared = set(papermill.inspect_notebook(str(ROOT / "notebooks" / f"{name}.ipynb")))
    params = copy.deepcopy(PARAMS)
    params["profile"] = profile
    params["datasets"] = {key: {"root": "/data"} for key in params["datasets"]}
    values = notebook_parameters(name, params, declared)
    assert set(values) <= declared
    assert values.get("profile", profile) == profile


def test_profile_and_datasets_reach_only_notebooks_declaring_them():
    params = {"profile": "default", "datasets": {"ava": None}, "notebooks": {"nb": {"default": {"shown": 2}}}}
    assert notebook_parameters("nb", params, {"shown", "profile", "datasets"}) == {
        "shown": 2, "profile": "default", "datasets": {"ava": None}}
    assert notebook_parameters("nb", params, {"shown"}) == {"shown": 2}


def test_undeclared_parameter_unknown_notebook_and_missing_dataset_are_errors(tmp_path):
    params = {"profile": "default", "datasets": {"ava": None}, "notebooks": {"nb": {"default": {"shwon": 2}}}}
    with pytest.raises(ValueError, match=r"sets \['shwon'\].*does not declare"):
        notebook_parameters("nb", params, {"shown"})
    with pytest.raises(ValueError, match="no notebooks.other section"):
        notebook_parameters("other", params, {"shown"})
    params["profile"], params["notebooks"]["nb"]["full"] = "full", {}
    with pytest.raises(ValueError, match=r"profile 'full' needs dataset paths .*\['ava'\]"):
        notebook_parameters("nb", params, {"shown"})
    (tmp_path / "params.yaml").write_text("profile: fast\n")
    with pytest.raises(ValueError, match="profile must be one of"):
        load_params(tmp_path / "params.yaml")


def stage_problems(stage: dict) -> list[str]:
    """What keeps a dvc.yaml stage from rerunning on every change it depends on."""
    deps = stage.get("deps", [])
    problems = [] if "src/xaiimg" in deps else ["does not depend on src/xaiimg"]
    if not stage["cmd"].startswith("python -m xaiimg.cli "):
        problems.append(f"runs {stage['cmd']!r}, not the command line")
    if stage["cmd"].startswith(NOTEBOOK_COMMAND):
        notebook = f"notebooks/{stage['cmd'][len(NOTEBOOK_COMMAND):]}.ipynb"
        if notebook not in deps:
            problems.append(f"does not depend on its notebook {notebook}")
        report = f"reports/{notebook.removeprefix('notebooks/')}"
        if {report: {"cache": False}} not in stage.get("outs", []):
            problems.append(f"does not write its executed copy {report} (cache: false, committed)")
    return problems


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_stage_depends_on_the_package_and_its_notebook(name):
    stage = STAGES[name]
    assert stage_problems(stage.get("do", stage)) == []      # a foreach stage's template is its "do" block


def test_stage_check_catches_missing_dependencies():
    notebook_stage = {"cmd": NOTEBOOK_COMMAND + "02_cam_attention",
                      "deps": ["notebooks/02_cam_attention.ipynb", "src/xaiimg"],
                      "outs": [{"reports/02_cam_attention.ipynb": {"cache": False}}]}
    assert stage_problems(notebook_stage) == []
    assert stage_problems({**notebook_stage, "outs": ["artifacts/notebooks/02_cam_attention.ipynb"]}) == [
        "does not write its executed copy reports/02_cam_attention.ipynb (cache: false, committed)"]
    assert stage_problems({**notebook_stage, "deps": ["notebooks/02_cam_attention.ipynb", "src/xaiimg/viz.py"]}) == [
        "does not depend on src/xaiimg"]
    assert stage_problems({**notebook_stage, "deps": ["notebooks/03_lrp.ipynb", "src/xaiimg"]}) == [
        "does not depend on its notebook notebooks/02_cam_attention.ipynb"]
    assert stage_problems({"cmd": "python -m xaiimg.models.synthetic --out x", "deps": ["src/xaiimg"]}) == [
        "runs 'python -m xaiimg.models.synthetic --out x', not the command line"]


def test_notebook_stages_cover_every_notebook():
    commands = {stage.get("do", stage)["cmd"] for stage in STAGES.values()}
    assert {NOTEBOOK_COMMAND + path.stem for path in (ROOT / "notebooks").glob("*.ipynb")} <= commands


def test_thesis_study_runs_one_stage_per_part_then_a_summary():
    """Each part is its own stage writing only its own file (so it reruns only when its settings change), and
    thesis_study summarises every part file and nothing else."""
    from xaiimg.studies.thesis_study import PART_NAMES

    for part in PART_NAMES:
        stage = STAGES[f"thesis_{part}"]
        assert stage["cmd"].endswith(f"--parts {part} --no-summary")
        assert stage["outs"] == [{f"results/thesis_study/{part}.json": {"cache": False}}]
        assert all(param.startswith("thesis_study.") and param.split(".", 1)[1] in PARAMS["thesis_study"]
                   for param in stage["params"])
    summary = STAGES["thesis_study"]
    assert summary["cmd"].endswith("--summary-only")
    assert {f"results/thesis_study/{part}.json" for part in PART_NAMES} <= set(summary["deps"])


def test_measured_timings_are_never_part_of_a_hashed_output():
    """A run's ``timings.json`` (measured seconds) inside a cached DVC output would change that output's hash on
    every rerun, so dvc.lock would change although the trained weights did not (issue 19 item 7)."""
    import subprocess
    import sys

    from xaiimg.studies.runs import TIMINGS

    cached = sorted({next(iter(out)) if isinstance(out, dict) else out for stage in STAGES.values()
                     for out in stage.get("do", stage).get("outs", [])
                     if not (isinstance(out, dict) and next(iter(out.values())).get("cache") is False)})
    folders = [out for out in cached if not Path(out).suffix]
    assert "artifacts/aesthetic_planted" in folders      # the study that writes RUN/timings.json
    dvc = Path(sys.executable).parent / "dvc"
    for folder in folders:
        check = subprocess.run([str(dvc), "check-ignore", f"{folder}/{TIMINGS}"], cwd=ROOT, capture_output=True,
                               text=True)
        assert check.returncode == 0, f"{folder}/{TIMINGS} would be hashed into {folder}'s dvc.lock entry"


def _declared(stage: dict, kind: str) -> dict[str, dict]:
    return {next(iter(out)) if isinstance(out, dict) else out: (next(iter(out.values())) if isinstance(out, dict)
                                                                else {}) for out in stage.get(kind, [])}


def test_measured_seconds_are_uncached_metrics_never_a_column_of_a_committed_table():
    """Tables rebuild byte-identical only without clock readings in them: the notebooks write measured seconds to
    ``results/NN_timings.json``, declared as uncached DVC metrics, and no committed results table has a
    ``seconds`` column or key (issue 19 item 7)."""
    timing_files = {path: options for stage in STAGES.values() for path, options in _declared(stage, "metrics").items()
                    if path.endswith("_timings.json")}
    assert set(timing_files) >= {"results/04_timings.json", "results/06_timings.json"}
    assert all(options.get("cache") is False for options in timing_files.values())
    tables = sorted(path for stage in STAGES.values() for path in _declared(stage, "outs")
                    if path.startswith("results/") and path.endswith((".csv", ".json")))
    assert "results/04_insertion_deletion.csv" in tables
    for path in tables:
        text = (ROOT / path).read_text()
        header = text.splitlines()[0].split(",") if path.endswith(".csv") else []
        assert "seconds" not in header and '"seconds"' not in text, f"{path} holds measured seconds"


def test_write_timings_records_seconds_and_threads(tmp_path):
    from xaiimg.report import write_timings

    written = json.loads(write_timings(tmp_path / "t.json", {"grad-cam": 0.5}).read_text())
    assert written["seconds"] == {"grad-cam": 0.5} and written["torch_threads"] >= 1


def test_notebooks_are_looked_up_by_name_never_joined_into_a_path():
    assert notebook_source("03_lrp", ROOT) == ROOT / "notebooks" / "03_lrp.ipynb"
    for name in ("../README", "03_lrp.ipynb", "notebooks/03_lrp", "/etc/passwd", "99_missing"):
        with pytest.raises(ValueError, match="no notebook"):
            notebook_source(name, ROOT)


def papermill_record(**extra) -> dict:
    cell = {"cell_type": "code", "source": "x = 1", "outputs": [], "execution_count": 1,
            "metadata": {"tags": ["parameters"], "execution": {"iopub.status.busy": "2026-12-07T04:00:00"},
                         "papermill": {"duration": 0.5, "status": "completed"}}}
    return {"cells": [cell], "nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": {"name": "python3"},
                         "papermill": {"parameters": {"shown": 2}, "version": "2.6.0", "duration": 3.2,
                                       "start_time": "2026-12-07T04:00:00", "end_time": "2026-12-07T04:00:03",
                                       "input_path": "/home/me/xaiimg/notebooks/nb.ipynb",
                                       "output_path": "/tmp/x/nb.ipynb", "environment_variables": {},
                                       "exception": None, **extra}}}


def test_publishable_drops_run_times_and_paths_and_keeps_the_rest():
    executed = papermill_record()
    published = publishable(executed)
    assert published["metadata"]["papermill"] == {"parameters": {"shown": 2}, "version": "2.6.0"}
    assert published["metadata"]["kernelspec"] == {"name": "python3"}
    assert published["cells"][0]["metadata"] == {"tags": ["parameters"]}
    injected = {"cell_type": "code", "id": "3f9ab2", "metadata": {"tags": ["injected-parameters"]}, "source": ""}
    assert publishable({**executed, "cells": [injected]})["cells"][0]["id"] == "injected-parameters"
    assert published["cells"][0]["source"] == "x = 1"
    assert executed["metadata"]["papermill"]["duration"] == 3.2  # the input is not modified
    assert publishable(papermill_record(duration=99.0)) == published  # two runs of a notebook: one file


def test_publishable_drops_widget_state_whose_model_ids_are_random_per_run():
    def run(model_id: str) -> dict:
        executed = papermill_record()
        executed["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {model_id: {}}}}
        executed["cells"][0]["outputs"] = [{"output_type": "execute_result", "execution_count": 1, "metadata": {},
                                            "data": {"application/vnd.jupyter.widget-view+json":
                                                     {"model_id": model_id, "version_major": 2},
                                                     "text/plain": "VBox(children=(HTML(value='Ready.'),))"}}]
        return publishable(executed)

    first = run("913bfa1ac2024aa98fe92caf1dc4d2ba")
    assert first == run("3d77cc1b16df4fe28ceec798f00c96f4")
    assert "widgets" not in first["metadata"]
    assert first["cells"][0]["outputs"][0]["data"] == {"text/plain": "VBox(children=(HTML(value='Ready.'),))"}


def write_notebook(path: Path, *cells: tuple[str, list[str]]) -> None:
    code = [{"cell_type": "code", "execution_count": None, "id": f"cell-{number}", "metadata": {"tags": tags},
             "outputs": [], "source": source} for number, (source, tags) in enumerate(cells)]
    path.write_text(json.dumps({"cells": code, "nbformat": 4, "nbformat_minor": 5, "metadata": {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}}))


@pytest.fixture
def tiny_checkout(tmp_path) -> Path:
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"profile": "default", "datasets": {}, "notebooks": {
        "01_tiny": {"default": {"points": 3}}, "02_broken": {"default": {}}}}))
    write_notebook(tmp_path / "notebooks" / "01_tiny.ipynb", ("points = 5", ["parameters"]),
                   ("import numpy as np\nfrom xaiimg import viz\n"
                    "viz.save_figure(viz.plot_curves({'a': np.linspace(0, 1, points)}), 'figure', dpi=40)\n"
                    "print('points', points)", []))
    write_notebook(tmp_path / "notebooks" / "02_broken.ipynb", ("print('started')", []),
                   ("raise RuntimeError('a failing cell')", []))
    return tmp_path


def test_run_notebook_commits_a_reproducible_report_with_its_figures(tiny_checkout):
    report = run_notebook("01_tiny", tiny_checkout)
    assert report == tiny_checkout / REPORTS / "01_tiny.ipynb"
    notebook = json.loads(report.read_text())
    assert notebook["metadata"]["papermill"]["parameters"] == {"points": 3}  # params.yaml's default profile
    outputs = [output for cell in notebook["cells"] for output in cell.get("outputs", [])]
    assert {"name": "stdout", "output_type": "stream", "text": ["points 3\n"]} in outputs
    assert any("image/jpeg" in output.get("data", {}) for output in outputs)  # the saved figure, shown inline
    assert (tiny_checkout / "notebooks" / "figure.png").is_file()  # run in notebooks/, as nbval runs it
    first = report.read_bytes()
    assert run_notebook("01_tiny", tiny_checkout).read_bytes() == first  # no times: a rerun is the same file


def test_a_failing_notebook_keeps_the_last_report_and_saves_the_partial_run(tiny_checkout):
    from papermill.exceptions import PapermillExecutionError

    (tiny_checkout / REPORTS).mkdir()
    (tiny_checkout / REPORTS / "02_broken.ipynb").write_text("the last good report")
    with pytest.raises(PapermillExecutionError, match="a failing cell") as failure:
        run_notebook("02_broken", tiny_checkout)
    partial = tiny_checkout / "artifacts" / "failed_notebooks" / "02_broken.ipynb"
    assert any(str(partial) in note for note in failure.value.__notes__)
    assert "started" in partial.read_text()
    assert (tiny_checkout / REPORTS / "02_broken.ipynb").read_text() == "the last good report"


@pytest.mark.parametrize("name", sorted(PARAMS["notebooks"]))
def test_committed_report_is_small_fresh_and_ran_with_the_default_profile(name):
    """reports/ is what a reader opens on GitHub: the default profile's executed notebook, under 1 MiB, without
    run times, run with today's params.yaml and without an error."""
    report = ROOT / REPORTS / f"{name}.ipynb"
    assert report.stat().st_size < REPORT_LIMIT_BYTES
    notebook = json.loads(report.read_text())
    declared = set(papermill.inspect_notebook(str(ROOT / "notebooks" / f"{name}.ipynb")))
    params = {**PARAMS, "profile": "default"}
    assert notebook["metadata"]["papermill"]["parameters"] == notebook_parameters(name, params, declared)
    assert not set(notebook["metadata"]["papermill"]) & set(VOLATILE_NOTEBOOK_METADATA)
    for cell in notebook["cells"]:
        assert not set(cell["metadata"]) & set(VOLATILE_CELL_METADATA)
        assert not [output for output in cell.get("outputs", []) if output["output_type"] == "error"]
