"""The README's results section is generated from the committed pipeline outputs, not typed."""
import importlib.util

import pytest

from tests_support import REPO_ROOT


def load_script():
    spec = importlib.util.spec_from_file_location("update_readme", REPO_ROOT / "scripts" / "update_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_results_section_matches_committed_results():
    script = load_script()
    readme = (REPO_ROOT / "README.md").read_text()
    assert script.updated_readme(readme, script.results_section()) == readme, \
        "README results differ from results/: run scripts/update_readme.py after make repro"
    assert (REPO_ROOT / "figures" / "04_method_comparison.png").is_file()


def test_updated_readme_replaces_only_the_marked_block():
    script = load_script()
    text = f"intro\n{script.START}\nold numbers\n{script.END}\noutro\n"
    assert script.updated_readme(text, f"{script.START}\nnew\n{script.END}") == \
        f"intro\n{script.START}\nnew\n{script.END}\noutro\n"


def test_readme_table_3_2_gives_n_and_an_interval_per_cell_and_names_a_missing_layer(tmp_path):
    script = load_script()
    study = tmp_path / "results" / "thesis_study"
    study.mkdir(parents=True)
    (study / "summary.csv").write_text(
        "table,metric,method,n,mean,ci_low,ci_high\n"
        "photos/m,insertion,grad-cam @L,20,0.5,0.4,0.6\n"
        "photos/m,overall,grad-cam @L,20,0.25,-0.01,0.5\n"
        "photos/m,overall,grad-cam @L + SW literal,20,0.9,0.8,1.0\n"
        "photos/other,overall,grad-cam @L,20,0.1,0.0,0.2\n")
    table, rows = script.table_3_2(tmp_path, "m", "L")
    assert table == "photos/m"
    assert rows == [{"method": "grad-cam", "n": 20, "insertion": "0.500 [0.400, 0.600]",
                     "overall": "0.250 [-0.010, 0.500]"}]
    with pytest.raises(ValueError, match="no photos/m rows at layer bn2"):
        script.table_3_2(tmp_path, "m", "bn2")
