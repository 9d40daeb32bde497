"""Regenerate the README's results section from the pipeline's outputs (figures/, results/), so that no number
in it is typed by hand: run after `make repro`, then commit README.md with figures/, results/ and dvc.lock.
`tests/test_readme.py` fails when the section and the committed results disagree.

    .venv/bin/python scripts/update_readme.py
"""
import json
import re
import sys
from pathlib import Path

from xaiimg.report import markdown_table

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- results:start -->", "<!-- results:end -->"


def results_section(repo: Path = REPO) -> str:
    """The Markdown between the README's results markers, built from the committed pipeline outputs."""
    faithfulness = json.loads((repo / "results" / "04_insertion_deletion.json").read_text())
    synthetic = json.loads((repo / "results" / "04_metrics.json").read_text())["synthetic_cnn_accuracy"]
    subject = json.loads((repo / "results" / "02_metrics.json").read_text())
    paired = subject["paired_difference"]
    columns = ("method", "insertion_auc", "deletion_auc", "overall", "seconds")
    rows = [{c: row[c] for c in columns if c in row} for row in faithfulness]
    return "\n".join([
        START,
        "![MSG-CAM beside the CAM baselines on EfficientNet-Lite0](figures/04_method_comparison.png)",
        "",
        "*`figures/04_method_comparison.png` (notebook 04, default profile): each method's map for the pip-shipped"
        " sample images.*",
        "",
        f"Insertion/deletion AUC (`thesis` preset; `results/04_insertion_deletion.csv`, {len(rows)} methods):",
        "",
        markdown_table(rows),
        f"Synthetic-benchmark CNN held-out accuracy: {synthetic:.3f}. Aesthetic study (notebook 02,"
        " `results/02_metrics.json`): share of CAM mass on the subject "
        + ", ".join(f"{name} {share:.3f}" for name, share in subject["subject_mass_share"].items())
        + f"; attention higher on {paired['attention_higher']} of {paired['count']} held-out images"
        f" (Wilcoxon p = {paired['wilcoxon_p']:.1e}).",
        END,
    ])


def updated_readme(text: str, section: str) -> str:
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise ValueError(f"README.md has no {START} ... {END} block")
    return pattern.sub(lambda _: section, text)


if __name__ == "__main__":
    readme = REPO / "README.md"
    new = updated_readme(readme.read_text(), results_section())
    readme.write_text(new)
    print("README results section updated", file=sys.stderr)
