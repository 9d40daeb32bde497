"""Class activation maps that weight a layer's channels: CAM, Grad-CAM, Grad-CAM++, XGrad-CAM.

Every variant computes ``M = ReLU(sum_c w_c A_c)`` from the target layer's activations ``A`` (``[B,C,h,w]``;
ViT tokens are folded onto the patch grid by :func:`~xaiimg.methods.base.to_spatial`) and differs only in how
it weights channels (:meth:`GradientCAM.channel_weights`), as in pytorch-grad-cam's ``BaseCAM``. The base
(:class:`~xaiimg.methods.base.Explainer`) then upsamples bilinearly (align_corners=False) and min-max normalises.

Passes: one forward of the batch; gradient variants add one backward that starts at the target logits (raw,
pre-softmax: PROTOCOLS "Common conventions") and stops at the target layer: the hook detaches the layer's output
into a leaf and ``torch.autograd.grad`` differentiates with respect to that leaf (as Captum's ``LayerGradCam``;
pytorch-grad-cam back-propagates to the input). Parameters are frozen during the pass, so the part of the
network below the layer runs without building an autograd graph. ``target=None`` takes the argmax of the same
forward's logits, at no extra pass.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from xaiimg.methods.base import (Explainer, TargetLike, frozen_parameters, layer_name, register,
                                 resolve_layer, resolve_targets, select_scores, to_spatial)

__all__ = ["CAM", "GradCAM", "GradCAMPlusPlus", "GradientCAM", "XGradCAM", "check_input_channels",
           "layer_activation_and_gradient"]


def check_input_channels(model: nn.Module, x: torch.Tensor) -> None:
    """Raise before any pass if ``x`` does not have the input channels of the model's first convolution."""
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is not None and x.shape[1] != first_conv.in_channels:
        raise ValueError(f"x has {x.shape[1]} channels but the model's first convolution expects "
                         f"{first_conv.in_channels} (shape {tuple(x.shape)})")


@contextmanager
def _layer_output_as_leaf(layer: nn.Module, requires_grad: bool) -> Iterator[list[torch.Tensor]]:
    """Record the layer's output as a detached leaf; with ``requires_grad`` the network continues from a copy of
    that leaf, so gradients can be taken with respect to it and in-place operations downstream (e.g.
    ``ReLU(inplace=True)``) cannot alter the recorded activation. The hook is always removed."""
    recorded: list[torch.Tensor] = []

    def hook(module, _inputs, output):
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"the target layer {type(module).__name__} returns {type(output).__name__}, "
                            "not a tensor; choose a layer with a single tensor output")
        leaf = output.detach().requires_grad_(requires_grad)
        recorded.append(leaf)
        return leaf.clone() if requires_grad else None

    handle = layer.register_forward_hook(hook)
    try:
        yield recorded
    finally:
        handle.remove()


def layer_activation_and_gradient(model: nn.Module, x: torch.Tensor, target: TargetLike, layer: nn.Module,
                                  with_gradient: bool = True
                                  ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """One forward (and, ``with_gradient``, one backward down to ``layer``).

    Returns the layer's activations and the gradients of the summed target logits with respect to them (both
    ``[B,C,h,w]`` after :func:`to_spatial`, detached), the per-sample targets ``[B]`` and the logits ``[B,K]``.
    Samples do not interact in an eval-mode network, so the gradient of the sum is each sample's own gradient.
    """
    name = layer_name(model, layer)
    with frozen_parameters(model), torch.set_grad_enabled(with_gradient), \
            _layer_output_as_leaf(layer, with_gradient) as recorded:
        logits = model(x)
        if len(recorded) != 1:
            raise ValueError(f"layer {name!r} ran {len(recorded)} times in one forward; a CAM needs a layer "
                             "that runs exactly once (pick a module on the forward path that is not shared)")
        targets = resolve_targets(target, logits)
        gradient = None
        if with_gradient:
            scores = select_scores(logits, targets).sum()
            if scores.requires_grad:
                (gradient,) = torch.autograd.grad(scores, recorded[0], allow_unused=True)
            if gradient is None:
                raise ValueError(f"the logits do not depend on layer {name!r}; choose a layer on the path "
                                 "from the input to the output")
    try:
        activation = to_spatial(recorded[0].detach(), model)
        gradient = to_spatial(gradient, model) if gradient is not None else None
    except ValueError as error:
        raise ValueError(f"layer {name!r}: {error}") from None
    return activation, gradient, targets, logits.detach()


class GradientCAM(Explainer):
    """Base of the channel-weighted CAM family: ``M = ReLU(sum_c w_c A_c)`` at ``layer``.

    ``layer``: a dotted module name, a submodule, or ``None`` for ``model.spec.default_layer``.
    Subclasses implement :meth:`channel_weights`; ``uses_gradients = False`` skips the backward pass.
    """

    uses_gradients: bool = True

    def __init__(self, layer: str | nn.Module | None = None):
        self.layer = layer

    def channel_weights(self, activation: torch.Tensor, gradient: torch.Tensor | None, targets: torch.Tensor,
                        model: nn.Module) -> torch.Tensor:
        """Weights ``[B,C]`` from activations and gradients ``[B,C,h,w]`` (gradient of the target logit)."""
        raise NotImplementedError

    def attribute(self, model: nn.Module, x: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        check_input_channels(model, x)
        layer = resolve_layer(model, self.layer)
        activation, gradient, targets, logits = layer_activation_and_gradient(
            model, x, target, layer, with_gradient=self.uses_gradients)
        self._check_head(model, activation, logits)
        weights = self.channel_weights(activation, gradient, targets, model)
        return F.relu((weights[:, :, None, None] * activation).sum(dim=1, keepdim=True))

    def _check_head(self, model: nn.Module, activation: torch.Tensor, logits: torch.Tensor) -> None:
        """Hook for variants with preconditions on the network head (CAM)."""


def _safe_divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator`` with 0 where the denominator is 0."""
    nonzero = denominator != 0
    return torch.where(nonzero, numerator / torch.where(nonzero, denominator, torch.ones_like(denominator)),
                       torch.zeros_like(numerator))


@register("cam")
class CAM(GradientCAM):
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

    def _check_head(self, model: nn.Module, activation: torch.Tensor, logits: torch.Tensor) -> None:
        fc = self._classifier(model)
        name = layer_name(model, fc)
        if fc.in_features != activation.shape[1]:
            raise ValueError(f"CAM needs the target layer's {activation.shape[1]} channels to feed the classifier "
                             f"{name!r} through global average pooling, but {name!r} takes {fc.in_features} "
                             "features; choose the last feature map before GAP, or use grad-cam")
        with torch.no_grad():
            pooled_logits = fc(activation.mean(dim=(2, 3)))
        tolerance = 1e-3 * (1.0 + logits.abs().max().item())
        if pooled_logits.shape != logits.shape or (pooled_logits - logits).abs().max().item() > tolerance:
            raise ValueError(f"CAM needs logits = {name}(global average pool of the target layer), which does not "
                             "hold for this layer and model; choose the last feature map before GAP, or use grad-cam")

    def channel_weights(self, activation, gradient, targets, model):
        return self._classifier(model).weight.detach()[targets].to(activation.dtype)


@register("grad-cam")
class GradCAM(GradientCAM):
    """Grad-CAM (Selvaraju et al., ICCV 2017, eq. 1): ``w_c = mean_ij dY/dA_c,ij``."""

    def channel_weights(self, activation, gradient, targets, model):
        return gradient.mean(dim=(2, 3))


@register("grad-cam++")
class GradCAMPlusPlus(GradientCAM):
    """Grad-CAM++ (Chattopadhay et al., WACV 2018, eq. 19 with ``Y = exp(S)``, so the exponential cancels):

    ``alpha_c,ij = g^2 / (2 g^2 + sum_ab A_c,ab * g^3 + eps)`` with ``g = dS/dA_c,ij`` the raw-logit gradient,
    ``w_c = sum_ij alpha_c,ij ReLU(g)``. Where the denominator is 0 (e.g. ``g = 0``), ``alpha = 0`` as in the
    authors' code. ``eps = 0`` (default) is the paper's formula; ``eps = 1e-6`` reproduces pytorch-grad-cam,
    whose stabiliser dominates for gradients below about 1e-3.
    """

    def __init__(self, layer: str | nn.Module | None = None, eps: float = 0.0):
        super().__init__(layer)
        self.eps = eps

    def channel_weights(self, activation, gradient, targets, model):
        squared = gradient.pow(2)
        channel_sums = activation.sum(dim=(2, 3), keepdim=True)
        alpha = _safe_divide(squared, 2 * squared + channel_sums * squared * gradient + self.eps)
        return (alpha * F.relu(gradient)).sum(dim=(2, 3))


@register("xgrad-cam")
class XGradCAM(GradientCAM):
    """XGrad-CAM (Fu et al., BMVC 2020, eq. 13): ``w_c = sum_ij (A_c,ij / (sum_ab A_c,ab + eps)) dY/dA_c,ij``.

    ``eps = 1e-7`` as in pytorch-grad-cam; a channel whose activations sum to ``-eps`` gets weight 0.
    """

    def __init__(self, layer: str | nn.Module | None = None, eps: float = 1e-7):
        super().__init__(layer)
        self.eps = eps

    def channel_weights(self, activation, gradient, targets, model):
        return _safe_divide((activation * gradient).sum(dim=(2, 3)), activation.sum(dim=(2, 3)) + self.eps)
