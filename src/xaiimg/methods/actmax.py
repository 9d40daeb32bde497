"""Activation maximisation: class model visualisation (Simonyan, Vedaldi & Zisserman, "Deep Inside Convolutional
Networks", ICLR workshop 2014, sec. 2) and its unit variant (Erhan et al. 2009).

``I* = argmax_I S(I) - l2 * ||I||_2^2`` by gradient ascent on the input, where ``S`` is the unnormalised class score
(logit, as in the paper, not the softmax) or the mean activation of one channel of a layer. The image lives in the
model's normalised input space (zero = the normalisation mean, the paper's zero image before adding the mean).

Plain ascent on a modern network gives high-frequency patterns. The standard regularisers, all off by default
(Simonyan's plain version), make class images recognisable:

- ``decay``: L2 decay ``I <- (1 - decay) I`` after each step (Yosinski et al., "Understanding Neural Networks
  Through Deep Visualization", ICML DL workshop 2015, sec. 3);
- ``blur_every`` / ``blur_sigma``: Gaussian blur of the image every ``blur_every`` steps (Yosinski et al. 2015);
- ``jitter``: the objective is taken on the image rolled by a random offset of up to ``jitter`` pixels per step
  (transformation robustness; Olah, Mordvintsev & Schubert, "Feature Visualization", Distill 2017);
- ``octaves``: optimise at growing fractions of the size, upsampling the image bilinearly between them (multi-scale;
  Mordvintsev et al.'s DeepDream octaves, Olah et al. 2017), ``steps`` at each.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from xaiimg.nn import forward_to, frozen_parameters, num_classes_of, preserved_state, resolve_layer
from xaiimg.ops import gaussian_blur, upsample


@dataclass
class ActMaxResult:
    """``image``: ``[B, C, H, W]`` optimised inputs (normalised space), one per target/unit.
    ``history``: ``[octaves * steps + 1, B]`` objective ``S(J(I)) - l2 ||I||^2`` that each step ascended (on its
    jittered view ``J(I)``; row 0: the initial image), and last the returned image's, unjittered."""

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
                            channels: int = 3, decay: float = 0.0, blur_every: int = 0, blur_sigma: float = 0.5,
                            jitter: int = 0, octaves: Sequence[float] = (1.0,)) -> ActMaxResult:
    """Optimise one input per class ``target`` (logit) or per channel ``unit`` of ``layer`` (mean activation).

    Gradient ascent ``I <- I + lr * grad(S(J(I)) - l2 ||I||^2)`` for ``steps`` steps per octave, batched over the
    targets, from ``N(0, init_std^2)`` noise drawn from ``torch.Generator().manual_seed(seed)`` (``init_std=0``: the
    paper's zero image); ``J`` rolls the image by the step's jitter (identity when ``jitter=0``), then ``decay`` and
    the blur apply (module docstring). The first octave starts at ``octaves[0]`` times the size. Deterministic for a
    given seed on CPU. The model's parameters, their ``requires_grad`` and ``.grad`` and its train/eval modes are
    left as found; it runs in eval mode.
    """
    if (target is None) == (unit is None):
        raise ValueError("give exactly one of target (class logits) or unit (a channel of layer)")
    if steps < 0 or lr <= 0 or l2 < 0 or init_std < 0:
        raise ValueError(f"need steps >= 0, lr > 0, l2 >= 0, init_std >= 0; got {steps}, {lr}, {l2}, {init_std}")
    if not 0 <= decay < 1 or blur_every < 0 or blur_sigma <= 0 or jitter < 0:
        raise ValueError(f"need 0 <= decay < 1, blur_every >= 0, blur_sigma > 0, jitter >= 0; got {decay}, "
                         f"{blur_every}, {blur_sigma}, {jitter}")
    octaves = list(octaves)
    if not octaves or any(not 0 < o <= 1 for o in octaves) or octaves != sorted(octaves) or octaves[-1] != 1:
        raise ValueError(f"octaves must be increasing fractions in (0, 1] ending at 1, got {octaves}")
    indices = _as_list(target if unit is None else unit, "target" if unit is None else "unit")
    height, width = _image_size(model, size)
    parameter = next(model.parameters(), None)
    dtype = parameter.dtype if parameter is not None else torch.float32
    device = parameter.device if parameter is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(seed)
    sizes = [(max(1, round(height * o)), max(1, round(width * o))) for o in octaves]
    image = (torch.randn(len(indices), channels, *sizes[0], generator=generator, dtype=dtype) * init_std).to(device)
    selected = torch.tensor(indices, device=device).view(-1, 1)
    blur_kernel = 2 * round(3 * blur_sigma) + 1

    with preserved_state(model):
        module = resolve_layer(model, layer) if unit is not None else None
        classes = num_classes_of(model)
        if unit is None and classes is not None and not all(0 <= i < classes for i in indices):
            raise ValueError(f"target class index {indices} out of range for a model with {classes} classes")

        def objective(x: torch.Tensor, shift: tuple[int, int] = (0, 0)) -> torch.Tensor:
            seen = torch.roll(x, shifts=shift, dims=(2, 3)) if shift != (0, 0) else x
            if module is None:
                scores = model(seen)
            else:
                activation = forward_to(model, seen, module)
                scores = activation.reshape(activation.shape[0], activation.shape[1], -1).mean(dim=-1)
            if int(selected.min()) < 0 or int(selected.max()) >= scores.shape[1]:
                raise ValueError(f"{'target' if module is None else 'unit'} index {indices} out of range for "
                                 f"{scores.shape[1]} outputs")
            return scores.gather(1, selected).squeeze(1) - l2 * x.pow(2).flatten(1).sum(dim=1)

        history = []
        with frozen_parameters(model):
            for octave, octave_size in enumerate(sizes):
                if octave:
                    image = upsample(image, octave_size)
                for step in range(steps):
                    shift = (0, 0) if not jitter else tuple(
                        int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=generator))
                    x = image.requires_grad_(True)
                    value = objective(x, shift)
                    (grad,) = torch.autograd.grad(value.sum(), x)
                    history.append(value.detach())
                    image = x.detach() + lr * grad
                    if decay:
                        image = image * (1 - decay)
                    if blur_every and (step + 1) % blur_every == 0:
                        image = gaussian_blur(image, blur_kernel, blur_sigma, border="reflect")
            with torch.no_grad():
                history.append(objective(image))
    return ActMaxResult(image=image.detach(), history=torch.stack(history))
