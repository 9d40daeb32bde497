"""Class activation maps that weight a layer's channels by the target's gradients or classifier: CAM, Grad-CAM,
Grad-CAM++, XGrad-CAM. Each variant only says how it weights channels; the passes, ``M = ReLU(sum_c w_c A_c)``
and the layer conventions are :class:`~xaiimg.methods.cam_base.ChannelWeightedCAM`'s.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xaiimg.methods.base import register
from xaiimg.methods.cam_base import ChannelWeightedCAM
from xaiimg.nn import LayerPass, layer_name, resolve_layer

__all__ = ["CAM", "GradCAM", "GradCAMPlusPlus", "XGradCAM"]


def _safe_divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator`` with 0 where the denominator is 0."""
    nonzero = denominator != 0
    return torch.where(nonzero, numerator / torch.where(nonzero, denominator, torch.ones_like(denominator)),
                       torch.zeros_like(numerator))


@register("cam")
class CAM(ChannelWeightedCAM):
    """CAM (Zhou et al., CVPR 2016, eq. 2): ``w_c = W_{k,c}``, the classifier row of class ``k``.

    Exact only for networks whose logits are ``fc(GAP(A))`` at the chosen layer; ``fc_layer`` (name or module)
    defaults to the last ``nn.Linear`` of the model. The precondition is checked on the forward already made:
    ``fc(mean_hw A)`` must reproduce the logits, otherwise a ValueError names the layers. One forward, no backward.
    """

    uses_gradients = False

    def __init__(self, layer: str | nn.Module | None = None, fc_layer: str | nn.Module | None = None):
        super().__init__(layer)
        self.fc_layer = fc_layer

    def _classifier(self, model: nn.Module) -> nn.Linear:
        if self.fc_layer is None:
            linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
            if not linears:
                raise ValueError(f"CAM needs a global-average-pooling + linear head, but {type(model).__name__} "
                                 "has no nn.Linear; use grad-cam instead")
            return linears[-1]
        fc = resolve_layer(model, self.fc_layer)
        if not isinstance(fc, nn.Linear):
            raise ValueError(f"fc_layer must be an nn.Linear, got {type(fc).__name__}")
        return fc

    def _check_head(self, model: nn.Module, fc: nn.Linear, activation: torch.Tensor, logits: torch.Tensor) -> None:
        name = layer_name(model, fc)
        if fc.in_features != activation.shape[1]:
            raise ValueError(f"CAM needs the target layer's {activation.shape[1]} channels to feed the classifier "
                             f"{name!r} through global average pooling, but {name!r} takes {fc.in_features} "
                             "features; choose the last feature map before GAP, or use grad-cam")
        with torch.no_grad():
            pooled_logits = fc(activation.mean(dim=(2, 3)).to(fc.weight.dtype))
        # relative tolerance 1e-3, wider for half-precision activations (autocast): 8 units of their rounding
        relative = max(1e-3, 8 * torch.finfo(activation.dtype).eps)
        if pooled_logits.shape != logits.shape or \
                (pooled_logits - logits).abs().max() > relative * (1.0 + logits.abs().max()):
            raise ValueError(f"CAM needs logits = {name}(global average pool of the target layer), which does not "
                             "hold for this layer and model; choose the last feature map before GAP, or use grad-cam")

    def channel_weights(self, model: nn.Module, x: torch.Tensor, layer_pass: LayerPass) -> torch.Tensor:
        fc = self._classifier(model)
        self._check_head(model, fc, layer_pass.activations, layer_pass.logits)
        return fc.weight.detach()[layer_pass.targets].to(layer_pass.activations.dtype)


@register("grad-cam")
class GradCAM(ChannelWeightedCAM):
    """Grad-CAM (Selvaraju et al., ICCV 2017, eq. 1): ``w_c = mean_ij dY/dA_c,ij``."""

    def channel_weights(self, model: nn.Module, x: torch.Tensor, layer_pass: LayerPass) -> torch.Tensor:
        return layer_pass.gradients.mean(dim=(2, 3))


@register("grad-cam++")
class GradCAMPlusPlus(ChannelWeightedCAM):
    """Grad-CAM++ (Chattopadhay et al., WACV 2018, eq. 19 with ``Y = exp(S)``, so the exponential cancels):

    ``alpha_c,ij = g^2 / (2 g^2 + sum_ab A_c,ab * g^3 + eps)`` with ``g = dS/dA_c,ij`` the raw-logit gradient,
    ``w_c = sum_ij alpha_c,ij ReLU(g)``. Where the denominator is 0 (e.g. ``g = 0``), ``alpha = 0`` as in the
    authors' code. ``eps = 0`` (default) is the paper's formula; ``eps = 1e-6`` reproduces pytorch-grad-cam,
    whose stabiliser dominates for gradients below about 1e-3.
    """

    def __init__(self, layer: str | nn.Module | None = None, eps: float = 0.0):
        super().__init__(layer)
        self.eps = eps

    def channel_weights(self, model: nn.Module, x: torch.Tensor, layer_pass: LayerPass) -> torch.Tensor:
        activation, gradient = layer_pass.activations, layer_pass.gradients
        squared = gradient.pow(2)
        channel_sums = activation.sum(dim=(2, 3), keepdim=True)
        alpha = _safe_divide(squared, 2 * squared + channel_sums * squared * gradient + self.eps)
        return (alpha * F.relu(gradient)).sum(dim=(2, 3))


@register("xgrad-cam")
class XGradCAM(ChannelWeightedCAM):
    """XGrad-CAM (Fu et al., BMVC 2020, eq. 13): ``w_c = sum_ij (A_c,ij / (sum_ab A_c,ab + eps)) dY/dA_c,ij``.

    ``eps = 1e-7`` as in pytorch-grad-cam; a channel whose activations sum to ``-eps`` gets weight 0.
    """

    def __init__(self, layer: str | nn.Module | None = None, eps: float = 1e-7):
        super().__init__(layer)
        self.eps = eps

    def channel_weights(self, model: nn.Module, x: torch.Tensor, layer_pass: LayerPass) -> torch.Tensor:
        activation, gradient = layer_pass.activations, layer_pass.gradients
        return _safe_divide((activation * gradient).sum(dim=(2, 3)), activation.sum(dim=(2, 3)) + self.eps)
