"""Activation maximisation: class model visualisation (Simonyan, Vedaldi & Zisserman, "Deep Inside Convolutional
Networks", ICLR workshop 2014, sec. 2) and its unit variant (Erhan et al. 2009).

``I* = argmax_I S(I) - l2 * ||I||_2^2`` by gradient ascent on the input, where ``S`` is the unnormalised class score
(logit, as in the paper, not the softmax) or the mean activation of one channel of a layer. The image lives in the
model's normalised input space (zero = the normalisation mean, the paper's zero image before adding the mean).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from xaiimg.nn import forward_to, frozen_parameters, num_classes_of, preserved_state, resolve_layer


@dataclass
class ActMaxResult:
    """``image``: ``[B, C, H, W]`` optimised inputs (normalised space), one per target/unit.
    ``history``: ``[steps + 1, B]`` objective ``S(I) - l2 ||I||^2`` at every iterate (row 0: the initial image,
    last row: the returned image)."""

    image: torch.Tensor
    history: torch.Tensor


def _as_list(value: int | Sequence[int], name: str) -> list[int]:
    values = [value] if isinstance(value, int) else list(value)
    if not values or not all(isinstance(v, int) for v in values):
        raise TypeError(f"{name} must be an int or a non-empty sequence of ints, got {value!r}")
    return values


def _image_size(model: nn.Module, size) -> tuple[int, int]:
    if size is None:
        size = getattr(getattr(model, "spec", None), "input_size", None)
        if size is None:
            raise ValueError("no size given and the model has no spec.input_size; pass size=(H, W)")
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return height, width


def activation_maximisation(model: nn.Module, target: int | Sequence[int] | None = None,
                            unit: int | Sequence[int] | None = None, layer: str | nn.Module | None = None,
                            steps: int = 200, lr: float = 1.0, l2: float = 1e-3, seed: int = 0,
                            size: int | tuple[int, int] | None = None, init_std: float = 0.01,
                            channels: int = 3) -> ActMaxResult:
    """Optimise one input per class ``target`` (logit) or per channel ``unit`` of ``layer`` (mean activation).

    Plain gradient ascent ``I <- I + lr * grad(S(I) - l2 ||I||^2)`` for ``steps`` steps, batched over the targets,
    from ``N(0, init_std^2)`` noise drawn from ``torch.Generator().manual_seed(seed)`` (``init_std=0``: the
    paper's zero image). Deterministic for a given seed on CPU. The model's parameters, their ``requires_grad`` and
    ``.grad`` and its train/eval modes are left as found; it runs in eval mode.
    """
    if (target is None) == (unit is None):
        raise ValueError("give exactly one of target (class logits) or unit (a channel of layer)")
    if steps < 0 or lr <= 0 or l2 < 0 or init_std < 0:
        raise ValueError(f"need steps >= 0, lr > 0, l2 >= 0, init_std >= 0; got {steps}, {lr}, {l2}, {init_std}")
    indices = _as_list(target if unit is None else unit, "target" if unit is None else "unit")
    height, width = _image_size(model, size)
    parameter = next(model.parameters(), None)
    dtype = parameter.dtype if parameter is not None else torch.float32
    device = parameter.device if parameter is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(seed)
    image = (torch.randn(len(indices), channels, height, width, generator=generator, dtype=dtype) * init_std).to(device)
    selected = torch.tensor(indices, device=device).view(-1, 1)

    with preserved_state(model):
        module = resolve_layer(model, layer) if unit is not None else None
        classes = num_classes_of(model)
        if unit is None and classes is not None and not all(0 <= i < classes for i in indices):
            raise ValueError(f"target class index {indices} out of range for a model with {classes} classes")

        def objective(x: torch.Tensor) -> torch.Tensor:
            if module is None:
                scores = model(x)
            else:
                activation = forward_to(model, x, module)
                scores = activation.reshape(activation.shape[0], activation.shape[1], -1).mean(dim=-1)
            if int(selected.min()) < 0 or int(selected.max()) >= scores.shape[1]:
                raise ValueError(f"{'target' if module is None else 'unit'} index {indices} out of range for "
                                 f"{scores.shape[1]} outputs")
            return scores.gather(1, selected).squeeze(1) - l2 * x.pow(2).flatten(1).sum(dim=1)

        history = []
        with frozen_parameters(model):
            for _ in range(steps):
                x = image.requires_grad_(True)
                value = objective(x)
                (grad,) = torch.autograd.grad(value.sum(), x)
                history.append(value.detach())
                image = (x.detach() + lr * grad)
            with torch.no_grad():
                history.append(objective(image))
    return ActMaxResult(image=image.detach(), history=torch.stack(history))
