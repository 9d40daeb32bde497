"""CAMERAS (Jalwana et al., CVPR 2021) and the multi-scale forward/backward passes it shares with MSG-CAM.

Each scale is one forward+backward of the whole batch on the input resampled to that scale; the target is
resolved on the first (original) scale, and a scale is kept for a sample only where the model's top-1 there
equals the sample's target. Per-sample kept sets differ, so they are carried as a ``[S,B]`` keep mask and
averaged with per-sample weights, not with a loop over samples.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from xaiimg.methods.base import Explainer, TargetLike, register, resolve_layer
from xaiimg.methods.perturbation import activations_and_gradients, check_choice, check_positive_int
from xaiimg.ops import upsample

NO_SCALE_POLICIES = ("original", "error")


def scaled_sizes(size: tuple[int, int], scales: Sequence[int], reference: int) -> list[tuple[int, int]]:
    """Input sizes ``round(H * s / reference), round(W * s / reference)`` for each scale ``s``."""
    return [(round(size[0] * s / reference), round(size[1] * s / reference)) for s in scales]


def multiscale_passes(model: nn.Module, layer: nn.Module, x: torch.Tensor, sizes: Sequence[tuple[int, int]],
                      target: TargetLike, image_mode: str):
    """One forward+backward per size: activations and target-logit gradients at each scale, the keep mask
    ``[S,B]`` (top-1 at that scale == target) and the targets, resolved on ``sizes[0]``.

    A size equal to the input's uses the input itself; others resample it with ``image_mode``
    (``F.interpolate``, align_corners=False).
    """
    activations, gradients, keep = [], [], []
    targets = target
    for size in sizes:
        scaled = x if tuple(size) == tuple(x.shape[-2:]) else F.interpolate(
            x, size=tuple(size), mode=image_mode, align_corners=False)
        layer_activations, layer_gradients, logits, targets = activations_and_gradients(model, layer, scaled, targets)
        activations.append(layer_activations)
        gradients.append(layer_gradients)
        keep.append(logits.argmax(dim=-1) == targets)
    return activations, gradients, torch.stack(keep), targets


def scale_weights(keep: torch.Tensor, on_no_scale: str, dtype) -> torch.Tensor:
    """Averaging weights ``[S,B]`` over each sample's kept scales (1/n_kept, 0 elsewhere).

    A sample with no kept scale falls back to the original scale (``on_no_scale="original"``) or raises.
    """
    missing = ~keep.any(dim=0)
    if missing.any():
        samples = missing.nonzero().flatten().tolist()
        if on_no_scale == "error":
            raise ValueError(f"no scale has the target class as top-1 for samples {samples}; "
                             "pass on_no_scale='original' to fall back to the original scale")
        keep = keep.clone()
        keep[0, missing] = True
    keep = keep.to(dtype)
    return keep / keep.sum(dim=0, keepdim=True)


def check_scales(scales, name: str) -> list[int]:
    scales = list(scales)
    if not scales or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in scales):
        raise ValueError(f"{name} must be a non-empty sequence of positive integers, got {scales!r}")
    if len(set(scales)) != len(scales):
        raise ValueError(f"{name} must not repeat a scale, got {scales!r}")
    return scales


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
        layer = resolve_layer(model, self.layer)
        sizes = scaled_sizes(tuple(x.shape[-2:]), self.resolutions, self.resolutions[0])
        activations, gradients, keep, _ = multiscale_passes(model, layer, x, sizes, target, self.image_mode)
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
