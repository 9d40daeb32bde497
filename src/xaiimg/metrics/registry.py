"""Metrics by name, each called in one order: ``metric(model, inputs, saliency_or_explainer, targets=None, **options)``.

Every metric module registers thin adapters with :func:`register_metric`; each declares what its scores mean
(their directions are its result class's ``higher_is_better``, as Quantus declares a direction per metric), its
category, its paper, and what it needs beyond ``(model, inputs, saliency)``: an explainer to run again
(``explains``) or ground truth given as options (``ground_truth``).
"""
from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from xaiimg.metrics.results import MetricResult
from xaiimg.nn import running_on

CATEGORIES = ("faithfulness", "localisation", "sanity", "robustness")

_REGISTRY: dict[str, Metric] = {}


@dataclass(frozen=True)
class Metric:
    """A registered metric: call it as ``metric(model, inputs, saliency_or_explainer, targets=None, **options)``.

    ``result``: the :class:`MetricResult` subclass it returns; ``explains``: the third argument is an explainer
    (a method name, an ``Explainer`` or ``f(model, x, targets) -> [B,1,H,W]``) that the metric runs on inputs or
    models of its own, not a saliency tensor; ``ground_truth``: option names of which one must carry the ground
    truth (e.g. ``("masks", "boxes")``).
    """

    name: str
    category: str
    paper: str
    result: type[MetricResult]
    compute: Callable[..., MetricResult]
    explains: bool = False
    ground_truth: tuple[str, ...] = ()

    @property
    def higher_is_better(self) -> dict[str, bool]:
        """Direction of each score (the keys of the result's ``summary()``)."""
        return dict(self.result.higher_is_better)

    @property
    def scores(self) -> tuple[str, ...]:
        return tuple(self.result.higher_is_better)

    @property
    def per_image(self) -> bool:
        """Whether it scores each image from ``(model, inputs, saliency)`` alone (no explainer, no ground truth):
        the metrics an experiment over a folder of images can run."""
        return not self.explains and not self.ground_truth

    def __call__(self, model, inputs, saliency_or_explainer, targets=None, device=None, autocast=None,
                 **options) -> MetricResult:
        """The metric's result. ``device`` (``None``: where ``inputs`` are) and ``autocast`` (``None``,
        ``"bfloat16"``, ``"float16"``): the model, inputs, maps, targets and ground truth are moved to ``device`` for
        the call (the model back after it) and the model's forwards run under autocast
        (:func:`xaiimg.nn.running_on`); the result's tensors come back on the inputs' device, half floats as
        float32."""
        if device is None and autocast is None:
            return self.compute(model, inputs, saliency_or_explainer, targets, **options)
        home = next((v.device for v in (inputs, saliency_or_explainer) if isinstance(v, torch.Tensor)), None)
        with running_on(model, device, autocast, default=home) as run_device:
            result = self.compute(model, *(moved(value, run_device) for value in
                                           (inputs, saliency_or_explainer, targets)),
                                  **{key: moved(value, run_device) for key, value in options.items()})
        return dataclasses.replace(result, **{field.name: moved(getattr(result, field.name), home or run_device, True)
                                              for field in dataclasses.fields(result)})


def moved(value, device: torch.device, half_to_float: bool = False):
    """``value`` with its tensors (also inside lists, tuples and dicts) on ``device``; with ``half_to_float``,
    bfloat16/float16 tensors become float32."""
    if isinstance(value, torch.Tensor):
        value = value.to(device)
        return value.float() if half_to_float and value.dtype in (torch.bfloat16, torch.float16) else value
    if isinstance(value, (list, tuple)):
        return type(value)(moved(item, device, half_to_float) for item in value)
    if isinstance(value, dict):
        return {key: moved(item, device, half_to_float) for key, item in value.items()}
    return value


def register_metric(name: str, *, category: str, paper: str, result: type[MetricResult], explains: bool = False,
                    ground_truth: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """Function decorator: register an adapter ``(model, inputs, saliency_or_explainer, targets, **options)`` under
    ``name`` (see :class:`Metric` for the declarations)."""
    if category not in CATEGORIES:
        raise ValueError(f"metric category must be one of {CATEGORIES}, got {category!r}")

    def decorate(compute: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name].compute is not compute:
            raise ValueError(f"metric name {name!r} is already registered to {_REGISTRY[name].compute.__name__}")
        _REGISTRY[name] = Metric(name, category, paper, result, compute, explains, tuple(ground_truth))
        return compute

    return decorate


def available_metrics() -> list[str]:
    """Registered metric names, sorted."""
    return sorted(_REGISTRY)


def get_metric(name: str) -> Metric:
    """The registered metric called ``name``."""
    if not isinstance(name, str):
        raise TypeError(f"metric must be a registered name, got {type(name).__name__}")
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise ValueError(f"unknown metric {name!r}{hint} (available: {', '.join(available_metrics())})")
    return _REGISTRY[name]
