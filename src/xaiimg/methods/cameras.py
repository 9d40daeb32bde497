"""CAMERAS (Jalwana et al., CVPR 2021): multi-scale activations and gradients averaged over the scales where the
model still predicts the target (passes in :func:`xaiimg.methods.perturbation_base.multiscale_passes`, shared with
MSG-CAM).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from xaiimg.methods.base import Explainer, check_choice, check_positive_int, register
from xaiimg.methods.perturbation_base import (
    NO_SCALE_POLICIES,
    check_scales,
    multiscale_passes,
    scale_weights,
    scaled_sizes,
)
from xaiimg.nn import TargetLike
from xaiimg.ops import upsample


@register("cameras")
class CAMERAS(Explainer):
    """CAMERAS (Jalwana et al., CVPR 2021): map = ReLU(sum_c F_c * G_c), F and G the features and gradients
    averaged over the kept scales after bilinear resampling to a common size.

    ``resolutions`` (default ``range(224, 1000, 100)``): the first stands for the input as given; resolution
    r resamples the input (``image_mode``, default bicubic as the official code) by r / resolutions[0] per
    axis (for a 224x224 input: r x r). ``accumulate_at``: ``"input"`` (default; the official code resamples
    to 224x224, the input size) or ``"layer"`` (the layer's size at the original scale, then the map is
    upsampled; cheaper). Accumulation runs over ``channel_chunk`` channels at a time.

    Deviations from the official code (VisMIL/CAMERAS ``CAMERAS.py``): a scale is kept when its top-1 equals
    the target also for an explicit target (the official code then keeps every scale); with no kept scale
    the original scale is used (``on_no_scale``); any batch size, per-sample targets.
    Passes: one forward+backward per resolution.
    """

    def __init__(self, layer: str | nn.Module | None = None, resolutions: Sequence[int] = range(224, 1000, 100),
                 image_mode: str = "bicubic", accumulate_at: str = "input", on_no_scale: str = "original",
                 channel_chunk: int = 64):
        self.layer = layer
        self.resolutions = check_scales(resolutions, "resolutions")
        self.image_mode = check_choice(image_mode, ("bicubic", "bilinear"), "image_mode")
        self.accumulate_at = check_choice(accumulate_at, ("input", "layer"), "accumulate_at")
        self.on_no_scale = check_choice(on_no_scale, NO_SCALE_POLICIES, "on_no_scale")
        self.channel_chunk = check_positive_int(channel_chunk, "channel_chunk")

    def attribute(self, model: nn.Module, x: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        sizes = scaled_sizes(tuple(x.shape[-2:]), self.resolutions, self.resolutions[0])
        activations, gradients, keep, _ = multiscale_passes(model, x, self.layer, sizes, target, self.image_mode)
        weights = scale_weights(keep, self.on_no_scale, x.dtype)
        size = tuple(x.shape[-2:]) if self.accumulate_at == "input" else tuple(activations[0].shape[-2:])
        saliency = torch.zeros(x.shape[0], 1, *size, dtype=x.dtype, device=x.device)
        for start in range(0, activations[0].shape[1], self.channel_chunk):
            channels = slice(start, start + self.channel_chunk)
            features = sum(w[:, None, None, None] * upsample(a[:, channels], size)
                           for w, a in zip(weights, activations))
            grads = sum(w[:, None, None, None] * upsample(g[:, channels], size) for w, g in zip(weights, gradients))
            saliency += (features * grads).sum(1, keepdim=True)
        return F.relu(saliency)
