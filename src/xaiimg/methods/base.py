"""What every saliency method shares: the :class:`Explainer` base, the registry, parameter checks, output maps.

A method subclasses :class:`Explainer` and implements :meth:`Explainer.attribute`, returning raw maps
``[B,1,h,w]`` (any resolution, any sign). :meth:`Explainer.__call__` validates the input, protects the model's
state, upsamples to the input size (bilinear, align_corners=False) and min-max normalises per sample.
Model helpers (targets, layers, hooks, layer passes, model state) live in :mod:`xaiimg.nn`, tensor operations in
:mod:`xaiimg.ops`; a family of methods shares its own base module (``*_base.py``).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

from xaiimg.nn import TargetLike, check_target_range, num_classes_of, preserved_state, running_on
from xaiimg.ops import check_images, minmax_normalize, upsample

_REGISTRY: dict[str, type[Explainer]] = {}


def register(name: str) -> Callable[[type[Explainer]], type[Explainer]]:
    """Class decorator: make a method available by ``name`` in :func:`xaiimg.explain`, params.yaml and the CLI."""

    def decorate(cls: type[Explainer]) -> type[Explainer]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method name {name!r} is already registered to {_REGISTRY[name].__name__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def registry() -> dict[str, type[Explainer]]:
    """Registered methods, name -> class (filled as their modules are imported)."""
    return _REGISTRY


# ------------------------------------------------------------------------------------ parameter checks
def check_positive_int(value, name: str) -> int:
    """``value`` if it is an int >= 1 (not a bool), else a ValueError naming the parameter."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_percentile(theta) -> float:
    """``theta`` as a float if it is a percentile in ``[0, 100]``."""
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not 0 <= theta <= 100:
        raise ValueError(f"theta is a percentile and must lie in [0, 100], got {theta!r}")
    return float(theta)


def check_choice(value, choices, name: str):
    """``value`` if it is one of ``choices``, else a ValueError listing them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


# ------------------------------------------------------------------------------------------- explainer
class Explainer:
    """Base class of every saliency method.

    Subclasses implement ``attribute(model, x, target) -> [B,1,h,w]`` raw maps, resolving ``target`` with
    :func:`xaiimg.nn.resolve_targets` from logits they compute anyway (so ``target=None`` costs no extra pass).
    """

    name: ClassVar[str] = ""

    def attribute(self, model: nn.Module, x: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, model: nn.Module, x: torch.Tensor, target: TargetLike = None, normalize: bool = True,
                 device: str | torch.device | None = None, autocast: str | torch.dtype | None = None) -> torch.Tensor:
        """Saliency ``[B,1,H,W]`` at the input's resolution; min-max per sample in ``[0,1]`` if ``normalize``.

        ``device``: where the passes run (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``; ``None``: the input's
        device); the model is moved there for the call and moved back after it. ``autocast``: ``None`` (off),
        ``"bfloat16"`` or ``"float16"`` for the model's forwards (:func:`xaiimg.nn.running_on`). The maps come back
        on the input's device in its dtype.
        """
        check_images(x, channels=None)
        num_classes = num_classes_of(model)
        if num_classes is not None:
            check_target_range(target, num_classes)
        with running_on(model, device, autocast, default=x.device) as run_device:
            inputs = x.detach().to(run_device)
            with preserved_state(model, x):
                maps = self.attribute(model, inputs, target)
        maps = upsample(maps.detach().to(x.dtype), x.shape[-2:])
        if maps.shape[1] != 1 or maps.shape[0] != x.shape[0]:
            raise RuntimeError(f"{type(self).__name__}.attribute returned shape {tuple(maps.shape)}")
        return (minmax_normalize(maps) if normalize else maps).to(x.device)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"
