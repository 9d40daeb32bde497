"""Base of the methods that attribute to input pixels per channel (gradient, SmoothGrad, Integrated Gradients,
Guided Backprop, Occlusion, deconvnet): attributions ``a`` ``[B,C,H,W]`` reduced to one map ``[B,1,H,W]`` by
``channel_reduction``:

- ``"abs-max"``: ``max_c |a_c|`` (Simonyan et al., ICLR-W 2014, sec. 3.1), the default of gradient methods;
- ``"sum"``: ``sum_c a_c`` (signed), the default of Occlusion, whose attribution is equal on all channels;
- ``"abs-sum"``: ``sum_c |a_c|``.
"""
from __future__ import annotations

import torch
from torch import nn

from xaiimg.methods.base import Explainer
from xaiimg.nn import TargetLike, check_input_channels, frozen_parameters

CHANNEL_REDUCTIONS = ("abs-max", "sum", "abs-sum")


def reduce_channels(attributions: torch.Tensor, how: str) -> torch.Tensor:
    """``[B,C,H,W]`` -> ``[B,1,H,W]`` by ``"abs-max"``, ``"sum"`` or ``"abs-sum"`` over channels."""
    if how == "abs-max":
        return attributions.abs().amax(dim=1, keepdim=True)
    if how == "sum":
        return attributions.sum(dim=1, keepdim=True)
    if how == "abs-sum":
        return attributions.abs().sum(dim=1, keepdim=True)
    raise ValueError(f"channel_reduction must be one of {CHANNEL_REDUCTIONS}, got {how!r}")


class ChannelReduced(Explainer):
    """:meth:`input_attributions` ``[B,C,H,W]`` reduced by ``channel_reduction``.

    Parameters are frozen during the passes (input gradients only; the model's ``.grad`` is never written).
    """

    def __init__(self, channel_reduction: str = "abs-max"):
        if channel_reduction not in CHANNEL_REDUCTIONS:
            raise ValueError(f"channel_reduction must be one of {CHANNEL_REDUCTIONS}, got {channel_reduction!r}")
        self.channel_reduction = channel_reduction

    def input_attributions(self, model: nn.Module, x: torch.Tensor, target: TargetLike) -> torch.Tensor:
        """Attributions ``[B,C,H,W]`` to ``x`` (a leaf that requires grad) for the targets."""
        raise NotImplementedError

    def attribute(self, model: nn.Module, x: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        check_input_channels(model, x)
        with frozen_parameters(model), torch.enable_grad():
            attributions = self.input_attributions(model, x.detach().requires_grad_(), target)
        return reduce_channels(attributions.detach(), self.channel_reduction)
