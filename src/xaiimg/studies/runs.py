"""The layout of the folders the studies write and read back: training runs and a notebook's output folders.

Synthetic run (``xaiimg train-synthetic --out RUN``)::

    RUN/cnn.pt, RUN/vit.pt        checkpoints (xaiimg.models.synthetic.save_checkpoint)
    RUN/metrics.json              per model: held-out accuracy, losses
    RUN/timings.json              per model: measured seconds (kept out of the files DVC hashes)

Aesthetic run (``xaiimg train-aesthetic --out RUN`` on the composition benchmark, ``xaiimg train-ava --out RUN``)::

    RUN/summary.json              the data (benchmark config and seeds, or AVA files) and held-out metrics per variant
    RUN/timings.json              measured seconds (feature cache, training per variant)
    RUN/<variant>/last.pt         checkpoint of the last epoch     (variant: attention or plain)
    RUN/<variant>/best.pt         checkpoint of the best epoch on the validation split
    RUN/<variant>/metrics.json    per-epoch history (xaiimg.training.aesthetic.train_aesthetic)

Paths are built from these fixed names and checked kinds / variants only, never from other names. Measured
durations (keys ending in ``_seconds``) differ between runs of the same computation, so they are written to
``timings.json`` only: checkpoints, metrics and summaries of a seeded run are byte-identical when rerun.
"""
from __future__ import annotations

import json
from pathlib import Path

from xaiimg.models.synthetic import KINDS
from xaiimg.training.aesthetic import TrainingOutputs

VARIANTS = ("attention", "plain")
TIMINGS = "timings.json"


def split_timings(record: dict) -> tuple[dict, dict]:
    """``record`` without its measured durations (keys ending in ``_seconds``), and those durations."""
    timings = {key: value for key, value in record.items() if key.endswith("_seconds")}
    return {key: value for key, value in record.items() if key not in timings}, timings


def _write_json(path: Path, value: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n")
    return path


class SyntheticRun:
    """The folder of a synthetic-benchmark training run."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.metrics = self.root / "metrics.json"
        self.timings = self.root / TIMINGS

    def checkpoint(self, kind: str) -> Path:
        if kind not in KINDS:
            raise ValueError(f"unknown synthetic model kind {kind!r}; use one of {KINDS}")
        return self.root / f"{kind}.pt"

    def write_metrics(self, metrics: dict) -> Path:
        return _write_json(self.metrics, metrics)

    def write_timings(self, timings: dict) -> Path:
        return _write_json(self.timings, timings)


class AestheticRun:
    """The folder of an aesthetic-model training run (composition benchmark or AVA)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.summary = self.root / "summary.json"
        self.timings = self.root / TIMINGS

    def training_outputs(self, variant: str) -> TrainingOutputs:
        if variant not in VARIANTS:
            raise ValueError(f"unknown aesthetic variant {variant!r}; use one of {VARIANTS}")
        folder = self.root / variant
        return TrainingOutputs(last_checkpoint=folder / "last.pt", best_checkpoint=folder / "best.pt",
                               metrics=folder / "metrics.json")

    def best_checkpoint(self, variant: str) -> Path:
        return self.training_outputs(variant).best_checkpoint

    def read_summary(self) -> dict:
        return json.loads(self.summary.read_text())

    def write_summary(self, summary: dict) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        self.summary.write_text(json.dumps(summary, indent=2))
        return self.summary

    def write_timings(self, timings: dict) -> Path:
        return _write_json(self.timings, timings)


def output_folders(*folders: str | Path) -> list[Path]:
    """Create (if needed) and return a notebook's output folders (figures, results)."""
    paths = [Path(folder) for folder in folders]
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
    return paths
