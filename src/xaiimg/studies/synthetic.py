"""The synthetic-benchmark study's runs: train the CNN and the ViT of :mod:`xaiimg.models.synthetic` on
:class:`~xaiimg.data.synthetic.SyntheticBenchmark` scenes, seeded, in minutes on two CPU cores, and measure them on
the benchmark's held-out ``test`` split.

:func:`train_synthetic_run` is ``xaiimg train-synthetic`` (the DVC ``synthetic`` stage): it writes a
:class:`~xaiimg.studies.runs.SyntheticRun` folder (``cnn.pt``, ``vit.pt``, ``metrics.json``).
:func:`synthetic_model` reads a model of such a run back for the notebooks.
"""
from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from xaiimg.data.synthetic import SyntheticBenchmark
from xaiimg.models.synthetic import (
    CNN_LAYERS,
    KINDS,
    VIT_CONFIG,
    VIT_STEM,
    build_synthetic_model,
    load_synthetic_model,
    save_checkpoint,
)
from xaiimg.studies.runs import SyntheticRun, split_timings
from xaiimg.training.classification import TrainConfig, fit, predict

# Training recipes of `xaiimg train-synthetic`. Measured (2026-11-22, seed 0, 224 px, on a shared 2-core machine):
# the CNN reached 83.5% held-out accuracy with 4 epochs and 96.7% with 7 (this recipe). Single-thread cost is about
# 15 CPU-ms per training image for the CNN and 25 for the ViT, so 7 epochs of 3,000 images are estimated at about
# 3.5 min (CNN) and 6 min (ViT) on an idle 2-core machine. metrics.json records what each run actually took.
DEFAULT_RECIPES = {
    "cnn": {"train_size": 3000, "train": TrainConfig(epochs=7, batch_size=64, lr=3e-3, weight_decay=5e-4)},
    "vit": {"train_size": 3000, "train": TrainConfig(epochs=7, batch_size=64, lr=1e-3, weight_decay=0.05)},
}


def train_synthetic_model(kind: str, seed: int = 0, size: int = 224, num_classes: int = 6,
                          train_size: int | None = None, train_config: TrainConfig | None = None,
                          test_size: int = 600, log=None) -> tuple[nn.Module, dict, dict]:
    """Generate the benchmark, train ``kind`` on its ``train`` split, measure accuracy on its ``test`` split.

    Returns ``(model, config, metrics)``; ``config`` rebuilds the model and the benchmark.
    """
    recipe = DEFAULT_RECIPES[kind] if kind in DEFAULT_RECIPES else None
    if recipe is None:
        raise ValueError(f"unknown synthetic model kind {kind!r}; use 'cnn' or 'vit'")
    train_size = recipe["train_size"] if train_size is None else train_size
    train_config = replace(recipe["train"] if train_config is None else train_config, seed=seed)
    benchmark = SyntheticBenchmark(size=size, num_classes=num_classes, seed=seed)
    start = time.perf_counter()
    train_set = benchmark.generate(train_size, split="train")
    generate_seconds = time.perf_counter() - start
    model = build_synthetic_model(kind, benchmark.class_names, size, seed)
    normalize = model.spec.from_unit_range
    history = fit(model, train_set.images_uint8, train_set.targets, train_config, normalize, log=log)
    test_single = benchmark.generate(test_size, split="test")
    test_multi = benchmark.generate(test_size // 2, multi_object=True, split="test")
    logits = predict(model, test_single.images_uint8, normalize)
    top2 = predict(model, test_multi.images_uint8, normalize).topk(2, dim=1).indices.sort(dim=1).values
    metrics = {
        "kind": kind,
        "test_accuracy": float((logits.argmax(1) == test_single.targets).float().mean()),
        "test_size": test_size,
        "multi_object_top2_accuracy": float((top2 == test_multi.labels.sort(dim=1).values).all(1).float().mean()),
        "multi_object_test_size": test_size // 2,
        "train_seconds": history["train_seconds"],
        "train_cpu_seconds": history["train_cpu_seconds"],
        "generate_seconds": generate_seconds,
        "train_size": train_size,
        "steps": history["steps"],
        "losses": history["losses"],
        "final_loss": sum(history["losses"][-20:]) / len(history["losses"][-20:]),
        "threads": torch.get_num_threads(),
        "torch": str(torch.__version__),
    }
    config = {"kind": kind, "size": size, "class_names": benchmark.class_names, "benchmark": benchmark.config,
              "train": train_config.to_dict(), "train_size": train_size,
              "architecture": list(CNN_LAYERS) if kind == "cnn" else dict(VIT_CONFIG, stem=list(VIT_STEM))}
    return model, config, metrics


def train_synthetic_run(out: str | Path, kinds: Sequence[str] = KINDS, seed: int = 0, size: int = 224,
                        num_classes: int = 6, train_size: int | None = None, epochs: int | None = None,
                        test_size: int = 600, threads: int | None = None,
                        log=functools.partial(print, flush=True)) -> dict:
    """Train each of ``kinds`` with its recipe (``train_size`` and ``epochs`` override the recipe's) and write
    the run folder ``out``; returns the per-model metrics. ``threads`` sets torch's CPU threads (default: torch's
    choice); ``log`` receives progress lines (``None``: silent)."""
    run, say = SyntheticRun(out), log or (lambda _line: None)
    if threads:
        torch.set_num_threads(threads)
    summary, timings = {}, {}
    for kind in kinds:
        recipe = DEFAULT_RECIPES[kind]["train"]
        train_config = recipe if epochs is None else replace(recipe, epochs=epochs)
        model, config, metrics = train_synthetic_model(
            kind, seed=seed, size=size, num_classes=num_classes, train_size=train_size, train_config=train_config,
            test_size=test_size, log=lambda line, k=kind: say(f"[{k}] {line}"))
        metrics, timings[kind] = split_timings(metrics)
        save_checkpoint(model, config, metrics, run.checkpoint(kind))
        summary[kind] = metrics
        say(f"[{kind}] test accuracy {metrics['test_accuracy']:.4f}, multi-object top-2 "
            f"{metrics['multi_object_top2_accuracy']:.4f}, trained in {timings[kind]['train_seconds']:.0f} s")
    run.write_metrics(summary)
    run.write_timings(timings)
    return summary


def synthetic_model(folder: str | Path, kind: str = "cnn", train_if_missing: bool = False, seed: int = 0,
                    size: int = 64, train_size: int = 1000, epochs: int = 3) -> nn.Module:
    """The trained ``kind`` model of the synthetic run in ``folder`` (the DVC ``synthetic`` stage writes it).

    With ``train_if_missing`` (notebooks' CI parameters), a missing checkpoint is trained with a quick recipe
    (``size`` px scenes, ``train_size`` images, ``epochs``) and saved there; its held-out accuracy is in
    ``model.synthetic_metrics`` (the notebooks print it).
    """
    path = SyntheticRun(folder).checkpoint(kind)
    if not path.is_file() and train_if_missing:
        recipe = replace(DEFAULT_RECIPES[kind]["train"], epochs=epochs)
        model, config, metrics = train_synthetic_model(kind, seed=seed, size=size, train_size=train_size,
                                                       train_config=recipe, test_size=200)
        save_checkpoint(model, config, split_timings(metrics)[0], path)
    return load_synthetic_model(path)
