"""Base of the channel-weighted class activation maps (CAM, Grad-CAM, Grad-CAM++, XGrad-CAM, Score-CAM).

Every variant computes ``M = ReLU(sum_c w_c A_c)`` from the target layer's activations ``A`` (``[B,C,h,w]``; ViT
tokens are folded onto the patch grid by :func:`xaiimg.nn.to_spatial`) and differs only in how it weights channels
(:meth:`ChannelWeightedCAM.channel_weights`), as in pytorch-grad-cam's ``BaseCAM``. The
:class:`~xaiimg.methods.base.Explainer` base then upsamples bilinearly (align_corners=False) and min-max normalises.

Passes: one forward of the batch (:func:`xaiimg.nn.activations_and_gradients`); gradient variants add one backward
that starts at the target logits (raw, pre-softmax: PROTOCOLS "Common conventions") and stops at the target layer,
with parameters frozen. ``target=None`` takes the argmax of the same forward's logits, at no extra pass.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xaiimg.methods.base import Explainer
from xaiimg.nn import LayerPass, TargetLike, activations_and_gradients, check_input_channels


class ChannelWeightedCAM(Explainer):
    """``M = ReLU(sum_c w_c A_c)`` at ``layer``: a dotted module name, a submodule, or ``None`` for
    ``model.spec.default_layer``.

    Subclasses implement :meth:`channel_weights`; ``uses_gradients = False`` skips the backward pass.
    """

    uses_gradients: bool = True

    def __init__(self, layer: str | nn.Module | None = None):
        self.layer = layer

    def channel_weights(self, model: nn.Module, x: torch.Tensor, layer_pass: LayerPass) -> torch.Tensor:
        """Weights ``w`` ``[B,C]`` from the layer's activations and gradients of the target logit (``layer_pass``)."""
        raise NotImplementedError

    def attribute(self, model: nn.Module, x: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        check_input_channels(model, x)
        layer_pass = activations_and_gradients(model, x, self.layer, target, with_gradient=self.uses_gradients)
        weights = self.channel_weights(model, x, layer_pass)
        return F.relu((weights[:, :, None, None] * layer_pass.activations).sum(dim=1, keepdim=True))
