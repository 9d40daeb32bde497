"""Deconvnet projections (Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014).

A chosen activation is kept alone (all others zero) and mapped back to pixel space by the transposes of the forward
operations, which autograd already computes:

- convolution -> transposed convolution with the same filters (its gradient), strided and depthwise included;
- max pooling -> unpooling with the switches recorded in the forward pass (the gradient of max pooling is
  exactly that);
- rectification -> ``ReLU`` applied to the backward signal itself, ignoring where the forward ReLU was active
  (the deconvnet rule; plain gradients would apply the forward ReLU's mask instead). ``ReLU6`` gets the same rule.

Networks without pooling (EfficientNet-Lite): the role of unpooling is taken by the transposed strided
convolutions, which spread each signal over the stride-2 footprint of its filter. BatchNorm in eval mode is the
affine map ``x * g/sqrt(var+eps) + shift``, whose transpose multiplies the signal by ``g/sqrt(var+eps)``. A skip
connection ``y = f(x) + x`` is transposed into the sum of the signals of both paths.

Without max-pooling there are no switches, and nothing in the backward pass depends on the image: the projection
of a unit is a fixed pattern that only moves with the unit's position and scales with its value (EfficientNet-Lite's
top-9 projections are nine copies of one speck or checkerboard). ``rule="guided"`` is the remedy of Springenberg et
al. ("Striving for Simplicity: The All Convolutional Net", ICLR-W 2015, sec. 3.4), introduced for exactly such
networks: the rectified signal is also multiplied by where the forward activation was positive, so the image
selects the paths. For ``ReLU6`` the mask is the forward output ``> 0``: a unit at the cap fired (the strongest
units of a ReLU6 layer sit there) and passes the signal, where the clip's derivative (0) would silence it.

ReLUs must be ``nn.ReLU`` / ``nn.ReLU6`` modules (as for Captum's ``Deconvolution``); functional ReLUs inside a
``forward`` keep their ordinary gradient. Other activations (SiLU, GELU, ...) are passed with their gradient.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch
from torch import nn

from xaiimg.methods.base import register
from xaiimg.methods.input_attribution_base import ChannelReduced
from xaiimg.nn import (
    TargetLike,
    forward_to,
    frozen_parameters,
    preserved_state,
    resolve_layer,
    resolve_targets,
    select_scores,
)

RECTIFIED = (nn.ReLU, nn.ReLU6)
RULES = ("deconvnet", "guided")


class _RectifiedSignal(torch.autograd.Function):
    """Forward: the activation's output value. Backward: ``ReLU(signal) * active`` to the activation's input
    (``active``: all ones for the deconvnet rule, the forward output ``> 0`` for the guided rule)."""

    @staticmethod
    def forward(ctx, pre_activation, activation_value, active):
        ctx.save_for_backward(active)
        return activation_value.clone()

    @staticmethod
    def backward(ctx, signal):
        (active,) = ctx.saved_tensors
        return signal.clamp(min=0) * active, None, None


@contextmanager
def deconvnet_rules(model: nn.Module, rule: str = "deconvnet") -> Iterator[int]:
    """Inside the context, every ``nn.ReLU``/``nn.ReLU6`` of ``model`` passes ``ReLU(backward signal)`` to its input
    (``rule="deconvnet"``), masked by the forward output ``> 0`` with ``rule="guided"`` (module docstring).
    In-place activations run out of place meanwhile (their input must survive). Yields the number of modules hooked;
    hooks and ``inplace`` flags are restored on exit, also on error."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    activations = [m for m in model.modules() if isinstance(m, RECTIFIED)]
    if not activations:
        raise ValueError(f"{type(model).__name__} has no nn.ReLU / nn.ReLU6 modules: the deconvnet rule has nothing "
                         "to rectify (functional ReLUs cannot be hooked)")

    def rectify(_module, inputs, output):
        value = output.detach()
        active = (value > 0).to(value.dtype) if rule == "guided" else torch.ones_like(value)
        return _RectifiedSignal.apply(inputs[0], value, active)

    with ExitStack() as stack:
        for module in activations:
            if module.inplace:
                module.inplace = False
                stack.callback(setattr, module, "inplace", True)
            stack.callback(module.register_forward_hook(rectify).remove)
        yield len(activations)


def feature_maps(model: nn.Module, x: torch.Tensor, layer: str | nn.Module) -> torch.Tensor:
    """A layer's activations for display, ``[B, C, h, w]`` (or whatever the layer outputs), detached; the forward
    pass stops at the layer and the model's state is left as found."""
    module = resolve_layer(model, layer)
    with preserved_state(model), torch.no_grad():
        return forward_to(model, x, module).detach()


def _select_unit(activation: torch.Tensor, channel: int | None, location: tuple[int, int] | None) -> torch.Tensor:
    """Per-sample flat index into ``activation[b]`` of the unit to project: the given channel/location, the
    strongest location of the given channel, the strongest channel at the given location, or the overall maximum."""
    batch, channels = activation.shape[:2]
    spatial = activation.shape[2:]
    if channel is not None and not 0 <= channel < channels:
        raise ValueError(f"channel {channel} out of range for a layer with {channels} channels")
    if location is not None:
        if len(spatial) != 2:
            raise ValueError(f"location needs a spatial layer output [B,C,h,w]; got shape {tuple(activation.shape)}")
        row, col = location
        if not (0 <= row < spatial[0] and 0 <= col < spatial[1]):
            raise ValueError(f"location {tuple(location)} outside the layer's {spatial[0]}x{spatial[1]} grid")
    values = activation.detach().reshape(batch, channels, -1)
    positions = values.shape[-1]
    if location is not None:
        position = torch.full((batch,), location[0] * spatial[1] + location[1], device=values.device)
        if channel is None:
            chosen = values[:, :, location[0] * spatial[1] + location[1]].argmax(dim=1)
        else:
            chosen = torch.full((batch,), channel, device=values.device)
    elif channel is not None:
        chosen = torch.full((batch,), channel, device=values.device)
        position = values[:, channel].argmax(dim=1)
    else:
        flat = values.reshape(batch, -1).argmax(dim=1)
        chosen, position = flat // positions, flat % positions
    return chosen * positions + position


@register("deconvnet")
class DeconvProjection(ChannelReduced):
    """Deconvnet projection (Zeiler & Fergus 2014) of one activation, or of the target logit, to pixel space.

    ``layer``: the layer whose activation is projected; ``None`` projects the target class logit (seed 1, the
    convention of Captum's ``Deconvolution`` / Springenberg et al. 2015), otherwise ``target`` is ignored.
    ``channel``/``location``: the unit (see :func:`_select_unit`; default the layer's maximal activation per sample);
    the kept activation carries its own value, all others are zero, as in the paper.
    ``rule``: ``"deconvnet"`` (Zeiler & Fergus) or ``"guided"`` (Springenberg et al. 2015, for networks without
    max-pooling, where the deconvnet's projection does not depend on the image; module docstring).
    ``channel_reduction`` of the ``[B,3,H,W]`` projection to a map: ``"abs-max"`` (``max_c |a_c|``, Simonyan et al.
    2014), ``"sum"`` or ``"abs-sum"`` (:mod:`~xaiimg.methods.input_attribution_base`); :meth:`project` returns the
    projection itself for display.
    """

    def __init__(self, layer: str | nn.Module | None = None, channel: int | None = None,
                 location: Sequence[int] | None = None, channel_reduction: str = "abs-max", rule: str = "deconvnet"):
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        self.layer = layer
        self.channel = channel
        self.location = tuple(location) if location is not None else None
        self.rule = rule
        super().__init__(channel_reduction)

    def project(self, model: nn.Module, x: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        """The deconvnet reconstruction ``[B, C_in, H, W]`` in the input's (normalised) space."""
        with preserved_state(model), deconvnet_rules(model, self.rule), frozen_parameters(model):
            inputs = x.detach().requires_grad_(True)
            if self.layer is None:
                logits = model(inputs)
                score = select_scores(logits, resolve_targets(target, logits)).sum()
                (projection,) = torch.autograd.grad(score, inputs)
                return projection
            activation = forward_to(model, inputs, resolve_layer(model, self.layer))
            flat = activation.reshape(activation.shape[0], -1)
            index = _select_unit(activation, self.channel, self.location).view(-1, 1)
            seed = torch.zeros_like(flat).scatter_(1, index, flat.detach().gather(1, index))
            (projection,) = torch.autograd.grad(activation, inputs, grad_outputs=seed.view_as(activation))
            return projection

    def input_attributions(self, model: nn.Module, x: torch.Tensor, target: TargetLike) -> torch.Tensor:
        return self.project(model, x, target)
