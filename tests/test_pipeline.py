"""params.yaml -> papermill parameters: every notebook's values are ones its parameters cell declares; dvc.yaml's
stages run the command line and depend on the whole package and their own notebook; notebooks are found by name."""
import copy
from pathlib import Path

import papermill
import pytest
import yaml

from xaiimg.pipeline import PROFILES, load_params, notebook_parameters, notebook_source

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
    return problems


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_stage_depends_on_the_package_and_its_notebook(name):
    stage = STAGES[name]
    assert stage_problems(stage.get("do", stage)) == []      # a foreach stage's template is its "do" block


def test_stage_check_catches_missing_dependencies():
    notebook_stage = {"cmd": NOTEBOOK_COMMAND + "02_cam_attention",
                      "deps": ["notebooks/02_cam_attention.ipynb", "src/xaiimg"]}
    assert stage_problems(notebook_stage) == []
    assert stage_problems({**notebook_stage, "deps": ["notebooks/02_cam_attention.ipynb", "src/xaiimg/viz.py"]}) == [
        "does not depend on src/xaiimg"]
    assert stage_problems({**notebook_stage, "deps": ["notebooks/03_lrp.ipynb", "src/xaiimg"]}) == [
        "does not depend on its notebook notebooks/02_cam_attention.ipynb"]
    assert stage_problems({"cmd": "python -m xaiimg.models.synthetic --out x", "deps": ["src/xaiimg"]}) == [
        "runs 'python -m xaiimg.models.synthetic --out x', not the command line"]


def test_notebook_stages_cover_every_notebook():
    commands = {stage.get("do", stage)["cmd"] for stage in STAGES.values()}
    assert {NOTEBOOK_COMMAND + path.stem for path in (ROOT / "notebooks").glob("*.ipynb")} <= commands


def test_notebooks_are_looked_up_by_name_never_joined_into_a_path():
    assert notebook_source("03_lrp", ROOT) == ROOT / "notebooks" / "03_lrp.ipynb"
    for name in ("../README", "03_lrp.ipynb", "notebooks/03_lrp", "/etc/passwd", "99_missing"):
        with pytest.raises(ValueError, match="no notebook"):
            notebook_source(name, ROOT)
