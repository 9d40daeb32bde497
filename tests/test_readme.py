"""The README's results section is generated from the committed pipeline outputs, not typed."""
import importlib.util

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
