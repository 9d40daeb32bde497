"""The comparison system (thesis ch.5) as functions: the dashboard and the CLI are thin layers over these.

Pick a model (zoo name or user checkpoint), see the top-5 classes, explain with several methods side by side
(optionally with the sliding-window enhancement), segment an image by its top-k% salient pixels, and run
experiments (insertion/deletion, ...) over a folder of images, each run stored as a :class:`RunRecord`.
"""
from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from xaiimg.methods import available_methods, get_method, registry
from xaiimg.methods.base import Explainer
from xaiimg.metrics import available_metrics, get_metric
from xaiimg.nn import running_on
from xaiimg.report import ResultsStore, RunRecord

ENHANCEMENT = "sliding-window"
EXPERIMENT_METRICS = tuple(name for name in available_metrics() if get_metric(name).per_image)


def open_model(name: str | None = None, arch: str | None = None, checkpoint: str | Path | None = None):
    """A zoo model by ``name``, or a user model from ``arch`` + ``checkpoint`` (a state_dict file)."""
    from xaiimg.models import load_checkpoint_model, load_model

    if checkpoint is not None:
        if not arch:
            raise ValueError("a checkpoint needs its architecture name (torchvision or timm), e.g. arch='resnet18'")
        return load_checkpoint_model(arch, checkpoint)
    if not name:
        raise ValueError("give a zoo model name or an architecture + checkpoint")
    return load_model(name)


def method_parameters(method: str) -> dict[str, Any]:
    """The constructor parameters of a registered method with their defaults (for parameter panels, --help)."""
    if method not in available_methods():
        raise ValueError(f"unknown method {method!r}")
    signature = inspect.signature(registry()[method].__init__)
    return {name: (p.default if p.default is not inspect.Parameter.empty else None)
            for name, p in signature.parameters.items() if name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD}


def build_explainer(method: str, params: Mapping[str, Any] | None = None, enhance: bool = False,
                    enhance_params: Mapping[str, Any] | None = None) -> Explainer:
    """``method`` with ``params``; wrapped in the sliding-window enhancement when ``enhance``."""
    explainer = get_method(method, **dict(params or {}))
    if enhance:
        return get_method(ENHANCEMENT, wrapped=explainer, **dict(enhance_params or {}))
    return explainer


@dataclass
class MethodMaps:
    """Maps ``[B,1,H,W]`` per method label, and the seconds each method took for the whole batch."""

    maps: dict[str, torch.Tensor] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def explain_methods(model, x: torch.Tensor, methods: Mapping[str, Mapping[str, Any]], target=None,
                    enhance: bool = False, enhance_params: Mapping[str, Any] | None = None,
                    on_method: Callable[[str], None] | None = None, chunk_size: int | None = None,
                    device=None, autocast=None) -> MethodMaps:
    """Every method (registry name -> constructor parameters) on the same batch, timed; labels are the names,
    ``"<name> + sliding-window"`` when ``enhance``. ``chunk_size`` explains that many images at a time (a
    dataset-sized ``x``); the maps are the same, only the peak memory changes. ``device`` / ``autocast``: where and
    in which precision the passes run (:func:`xaiimg.nn.running_on`; the model moves there once and back after);
    the maps come back on ``x``'s device."""
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    step = chunk_size or len(x)
    targets = target if target is None or isinstance(target, int) else torch.as_tensor(target)
    out = MethodMaps()
    with running_on(model, device, autocast, default=x.device) as run_device:
        for method, params in methods.items():
            if on_method is not None:
                on_method(method)
            explainer = build_explainer(method, params, enhance, enhance_params)
            label = f"{method} + {ENHANCEMENT}" if enhance else method
            start = time.perf_counter()
            out.maps[label] = torch.cat([
                explainer(model, x[i:i + step].to(run_device),
                          target=targets if targets is None or isinstance(targets, int) else targets[i:i + step])
                for i in range(0, len(x), step)]).to(x.device)
            out.seconds[label] = time.perf_counter() - start
    return out


def score_images(metric: str, model, x: torch.Tensor, saliency: torch.Tensor, target=None, device=None,
                 autocast=None, **params) -> dict[str, list[float]]:
    """Per-image scores of a registered metric that scores each image from its maps alone (``EXPERIMENT_METRICS``),
    keyed by score name; ``target`` and ``params`` are the metric's ``targets`` and options; ``device`` /
    ``autocast`` as :meth:`xaiimg.metrics.Metric.__call__`."""
    scorer = get_metric(metric)
    if not scorer.per_image:
        needs = "an explainer" if scorer.explains else f"ground truth ({' or '.join(scorer.ground_truth)})"
        raise ValueError(f"metric {metric!r} needs {needs}, not per-image maps; experiment metrics: "
                         f"{', '.join(EXPERIMENT_METRICS)}")
    return scorer(model, x, saliency, target, device=device, autocast=autocast, **params).per_sample()


@dataclass
class Experiment:
    """One experiment: a method (and its parameters) scored by a metric over a set of images."""

    method: str
    metric: str
    method_params: Mapping[str, Any]
    metric_params: Mapping[str, Any]
    enhance: bool = False


def run_experiment(model, images: Sequence, experiment: Experiment, data_name: str, store: ResultsStore | None,
                   batch_size: int = 4, progress: Callable[[int, int], None] | None = None, device=None,
                   autocast=None) -> RunRecord:
    """Explain and score ``images`` (PIL images or paths) in batches; store and return the record. ``device`` /
    ``autocast``: where and in which precision the passes run (the model moves there once and back after)."""
    explainer = build_explainer(experiment.method, experiment.method_params, experiment.enhance)
    per_image: dict[str, list[float]] = {}
    with running_on(model, device, autocast) as run_device:
        for start in range(0, len(images), batch_size):
            x = model.preprocess(list(images[start:start + batch_size])).to(run_device)
            saliency = explainer(model, x)
            for key, values in score_images(experiment.metric, model, x, saliency,
                                            **experiment.metric_params).items():
                per_image.setdefault(key, []).extend(values)
            if progress is not None:
                progress(min(start + batch_size, len(images)), len(images))
    metrics: dict[str, Any] = {key: sum(v) / len(v) for key, v in per_image.items()}
    metrics["num_images"] = len(images)
    metrics["per_image"] = per_image
    record = RunRecord(kind="experiment", method=explainer.name if not experiment.enhance
                       else f"{experiment.method} + {ENHANCEMENT}", model=model.spec.name, data=data_name,
                       parameters={"method": dict(experiment.method_params), "metric": experiment.metric,
                                   "metric_params": dict(experiment.metric_params), "enhance": experiment.enhance},
                       metrics=metrics)
    if store is not None:
        store.add(record)
    return record
