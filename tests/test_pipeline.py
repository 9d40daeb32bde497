"""params.yaml -> papermill parameters: every notebook's values are ones its parameters cell declares."""
import copy
from pathlib import Path

import papermill
import pytest
import yaml

from xaiimg.pipeline import PROFILES, load_params, notebook_parameters

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


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
