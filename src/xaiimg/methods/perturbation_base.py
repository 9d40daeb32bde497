"""Shared by the perturbation methods (Score-CAM, Group-CAM, MSG-CAM, CAMERAS, RISE): scoring masked inputs,
Group-CAM's grouping, denoising and blurred-baseline scoring (also MSG-CAM's), and the multi-scale passes of
CAMERAS and MSG-CAM.

Masked inputs are built one batch at a time (``batch_size`` images per forward pass), never all at once, and are
scored under ``torch.no_grad``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from xaiimg.nn import TargetLike, activations_and_gradients, select_scores
from xaiimg.ops import MINMAX_EPS, batches, gaussian_blur

DENOISE_MODES = (None, "feature", "input")
COMBINE_MODES = ("raw", "denoised")
NO_SCALE_POLICIES = ("original", "error")
TARGET_SCORES = ("probability", "logit")


# ------------------------------------------------------------------------------------------ masked inputs
def target_scores(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, score: str) -> torch.Tensor:
    """``softmax(model(inputs))[t]`` (``score="probability"``) or the raw logit ``model(inputs)[t]`` (``"logit"``)
    of each input's target ``t``: one forward, ``[n]``."""
    output = model(inputs)
    if score == "probability":
        output = F.softmax(output, dim=-1)
    return select_scores(output, targets)


def check_blur_fits(size: tuple[int, int], blur_kernel: int) -> None:
    """Reflect padding of the blur needs ``blur_kernel // 2 < H, W``."""
    if blur_kernel // 2 >= min(size):
        raise ValueError(f"blur_kernel={blur_kernel} is too large for a {size[0]}x{size[1]} input "
                         f"(reflect padding needs blur_kernel // 2 < {min(size)}); pass a smaller blur_kernel")


# ----------------------------------------------------------------------------------- Group-CAM pieces
def group_sums(maps: torch.Tensor, groups: int) -> torch.Tensor:
    """Sum ``[B,C,h,w]`` over ``groups`` groups of contiguous channels -> ``[B,groups,h,w]``.

    Group sizes differ by at most one (``torch.tensor_split``); when ``groups`` divides ``C`` this is exactly
    the official Group-CAM ``activations.chunk(groups, 1)``.
    """
    channels = maps.shape[1]
    if groups > channels:
        raise ValueError(f"groups={groups} exceeds the layer's {channels} channels")
    if channels % groups == 0:
        return maps.reshape(maps.shape[0], groups, channels // groups, *maps.shape[2:]).sum(2)
    return torch.stack([chunk.sum(1) for chunk in maps.tensor_split(groups, dim=1)], dim=1)


def percentile_denoise(maps: torch.Tensor, theta: float) -> torch.Tensor:
    """Keep the values of each ``[h,w]`` map strictly above its ``theta``-th percentile, zero the rest.

    The percentile interpolates linearly between order statistics, as ``np.percentile`` (default method).
    """
    flat = maps.reshape(*maps.shape[:-2], -1)
    count = flat.shape[-1]
    position = theta / 100 * (count - 1)
    low = math.floor(position)
    high = min(low + 1, count - 1)
    value_low = flat.kthvalue(low + 1, dim=-1).values
    value_high = flat.kthvalue(high + 1, dim=-1).values
    threshold = value_low + (value_high - value_low) * (position - low)
    return torch.where(maps > threshold[..., None, None], maps, torch.zeros_like(maps))


def minmax_per_map(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-max each ``[h,w]`` map of ``[B,R,h,w]`` to [0,1]; also return which maps were not flat ``[B,R]``."""
    flat = maps.reshape(*maps.shape[:2], -1)
    low = flat.min(-1, keepdim=True).values
    span = flat.max(-1, keepdim=True).values - low
    not_flat = span > MINMAX_EPS
    normalised = torch.where(not_flat, (flat - low) / span.clamp_min(MINMAX_EPS), torch.zeros_like(flat))
    return normalised.reshape(maps.shape), not_flat[..., 0]


def blended_scores(model: nn.Module, x: torch.Tensor, blurred: torch.Tensor, masks: torch.Tensor,
                   targets: torch.Tensor, batch_size: int, score: str = "probability") -> torch.Tensor:
    """The target score (:func:`target_scores`) of ``x*M + blur(x)*(1-M)`` for every mask of ``masks``
    ``[B,R,H,W]`` -> ``[B,R]``. The ``B*R`` blended images are built and scored ``batch_size`` at a time."""
    num_images, num_masks = masks.shape[:2]
    flat_masks = masks.reshape(num_images * num_masks, 1, *masks.shape[2:])
    scores = torch.empty(num_images * num_masks, dtype=x.dtype, device=x.device)
    with torch.no_grad():
        for part in batches(num_images * num_masks, batch_size):
            image = torch.arange(part.start, part.stop, device=x.device) // num_masks
            mask = flat_masks[part]
            blended = x[image] * mask + blurred[image] * (1 - mask)
            scores[part] = target_scores(model, blended, targets[image], score)
    return scores.reshape(num_images, num_masks)


def group_score_map(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor,
                    denoised: torch.Tensor, combine: str, batch_size: int, blur_kernel: int,
                    blur_sigma: float, score: str = "probability") -> torch.Tensor:
    """Score groups by blurred-baseline perturbation and combine them (Group-CAM eq. 4-6; MSG-CAM Alg. 1).

    ``masks`` M_r and ``denoised`` (percentile-thresholded M_r, or M_r itself) are ``[B,R,H,W]`` at input size.
    M'_r = minmax(denoised); I_r = I*M'_r + blur(I)*(1-M'_r);
    alpha_r = F_c(I_r) - F_c(blur(I)) with F_c the softmax probability (``score="probability"``, Group-CAM) or the
    raw logit (``"logit"``); map = ReLU(sum_r alpha_r * M_r) (``combine="raw"``) or ReLU(sum_r alpha_r * M'_r)
    (``combine="denoised"``). A flat M'_r gets alpha_r = 0, as the official code skips it. Passes: 1 baseline
    forward of ``B`` images, ``B*R`` blended images in batches.
    """
    normalised, not_flat = minmax_per_map(denoised)
    blurred = gaussian_blur(x, blur_kernel, blur_sigma, border="reflect")
    with torch.no_grad():
        baseline = target_scores(model, blurred, targets, score)
    blended = blended_scores(model, x, blurred, normalised, targets, batch_size, score)
    alpha = torch.where(not_flat, blended - baseline[:, None], torch.zeros_like(blended))
    combined = masks if combine == "raw" else normalised
    return F.relu((alpha[:, :, None, None] * combined).sum(1, keepdim=True))


# ------------------------------------------------------------------------------------------ multi-scale
def scaled_sizes(size: tuple[int, int], scales: Sequence[int], reference: int) -> list[tuple[int, int]]:
    """Input sizes ``round(H * s / reference), round(W * s / reference)`` for each scale ``s``."""
    return [(round(size[0] * s / reference), round(size[1] * s / reference)) for s in scales]


def multiscale_passes(model: nn.Module, x: torch.Tensor, layer: str | nn.Module | None,
                      sizes: Sequence[tuple[int, int]], target: TargetLike, image_mode: str):
    """One forward+backward of the whole batch per size (:func:`xaiimg.nn.activations_and_gradients`): activations
    and target-logit gradients at each scale, the keep mask ``[S,B]`` (top-1 at that scale == target) and the
    targets, resolved on ``sizes[0]``. Kept sets differ per sample, hence a mask rather than a loop over samples.

    A size equal to the input's uses the input itself; others resample it with ``image_mode``
    (``F.interpolate``, align_corners=False).
    """
    activations, gradients, keep = [], [], []
    targets = target
    for size in sizes:
        scaled = x if tuple(size) == tuple(x.shape[-2:]) else F.interpolate(
            x, size=tuple(size), mode=image_mode, align_corners=False)
        layer_pass = activations_and_gradients(model, scaled, layer, targets)
        targets = layer_pass.targets
        activations.append(layer_pass.activations)
        gradients.append(layer_pass.gradients)
        keep.append(layer_pass.logits.argmax(dim=-1) == targets)
    return activations, gradients, torch.stack(keep), targets


def scale_weights(keep: torch.Tensor, on_no_scale: str, dtype) -> torch.Tensor:
    """Averaging weights ``[S,B]`` over each sample's kept scales (1/n_kept, 0 elsewhere).

    A sample with no kept scale falls back to the original scale (``on_no_scale="original"``) or raises.
    """
    missing = ~keep.any(dim=0)
    if on_no_scale == "error" and missing.any():
        samples = missing.nonzero().flatten().tolist()
        raise ValueError(f"no scale has the target class as top-1 for samples {samples}; "
                         "pass on_no_scale='original' to fall back to the original scale")
    keep = keep.clone()
    keep[0] |= missing
    keep = keep.to(dtype)
    return keep / keep.sum(dim=0, keepdim=True)


def check_scales(scales, name: str) -> list[int]:
    scales = list(scales)
    if not scales or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in scales):
        raise ValueError(f"{name} must be a non-empty sequence of positive integers, got {scales!r}")
    if len(set(scales)) != len(scales):
        raise ValueError(f"{name} must not repeat a scale, got {scales!r}")
    return scales
