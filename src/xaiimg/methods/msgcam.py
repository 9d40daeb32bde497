"""MSG-CAM: multi-scale gradient Group-CAM (thesis ch. 3, Algorithm 1; PROTOCOLS.md "MSG-CAM").

The multi-scale passes (as CAMERAS'), grouping, percentile denoising and the blurred-baseline group scoring (as
Group-CAM's) come from :mod:`xaiimg.methods.perturbation_base`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from xaiimg.methods.base import Explainer, check_choice, check_percentile, check_positive_int, register
from xaiimg.methods.perturbation_base import (
    COMBINE_MODES,
    NO_SCALE_POLICIES,
    TARGET_SCORES,
    check_blur_fits,
    group_score_map,
    group_sums,
    multiscale_passes,
    percentile_denoise,
    scale_weights,
    scaled_sizes,
)
from xaiimg.nn import TargetLike
from xaiimg.ops import upsample

KEEP_SCALE_RULES = ("top1", "all")


def upsampled_mean(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Spatial mean ``[B,C]`` of ``upsample(maps, size)`` without building the upsampled maps.

    Bilinear resampling (align_corners=False) is separable, ``U = U_y (x) U_x``, so
    mean(U g) = sum_ij (1^T U_y)_i (1^T U_x)_j g_ij / (H W).
    """

    def column_means(length: int, out_length: int) -> torch.Tensor:
        identity = torch.eye(length, dtype=maps.dtype, device=maps.device)[:, None, :]
        if length != out_length:
            identity = F.interpolate(identity, size=out_length, mode="linear", align_corners=False)
        return identity.sum(-1)[:, 0] / out_length

    rows = column_means(maps.shape[-2], size[0])
    cols = column_means(maps.shape[-1], size[1])
    return torch.einsum("bchw,h,w->bc", maps, rows, cols)


@register("msg-cam")
class MSGCAM(Explainer):
    """MSG-CAM (thesis Algorithm 1).

    1. Scales zeta_t = zeta_0 + floor(zeta_max / N) * (t-1), t = 1..N; the input is resampled by
       zeta_t / zeta_0 per axis (``image_mode``, bicubic as CAMERAS); t = 1 is the input itself.
       Defaults: zeta_0 = the input height (224 for the zoo models), zeta_max = 800, N = 8, i.e.
       224, 324, ..., 924 at 224 input: the same scales as CAMERAS' ``range(224, 1000, 100)``.
    2. One forward+backward per scale (gradient of the raw target logit); a scale is kept for a sample only
       if its top-1 there equals the target (``keep_scales="top1"``, the thesis; target resolved at t = 1) or
       always (``"all"``, an ablation). If none is kept: ``on_no_scale="original"`` uses t = 1 alone,
       ``"error"`` raises. After a call, ``last_kept_scales`` ``[B,N]`` (bool, on the input's device) says which
       scales each image kept (before that fallback): the kept-scale histogram of a run.
    3. A_bar, G_bar = mean over kept scales of the activations / gradients bilinearly upsampled to the input
       size; W_c = spatial mean of G_bar_c; M = A_bar * W.
    4. ``groups`` groups of contiguous channels, M_r = ReLU(group sum); denoise: keep values strictly above
       the ``theta``-th percentile of M_r at input resolution (``denoise="input"``; ``None`` skips it);
       M'_r = minmax. Then Group-CAM's perturbation: I_r = I*M'_r + blur(I)*(1-M'_r), alpha_r =
       F_c(I_r) - F_c(blur(I)) with F_c the softmax probability (``alpha_score="probability"``, Group-CAM's
       alpha) or the pre-softmax score (``"logit"``, the thesis's F_c, sec. 3.2); map = ReLU(sum_r alpha_r M_r)
       (``combine="raw"``, as Algorithm 1) or with M'_r (``combine="denoised"``).

    The defaults are the thesis's literal choices: bilinear upsampling (``image_mode="bilinear"``, sec. 3.2),
    ``keep_scales="top1"`` and ``alpha_score="logit"``. ``image_mode="bicubic"`` (as CAMERAS) with
    ``alpha_score="probability"`` (as Group-CAM) are the ablations; notebook 04's default-profile table states
    them explicitly (params.yaml), as it was computed with them.

    Upsampling is linear and shared by all channels, so the group sums are formed at each scale's layer
    resolution and only ``groups`` maps per scale are upsampled; W uses :func:`upsampled_mean`. Both equal
    the literal computation at input size. Passes: N forward+backward (each of the whole batch), 1 baseline
    forward, ``B*groups`` blended images in batches of ``batch_size``.
    """

    def __init__(self, layer: str | nn.Module | None = None, zeta_0: int | None = None, zeta_max: int = 800,
                 num_scales: int = 8, image_mode: str = "bilinear", groups: int = 32, denoise: str | None = "input",
                 theta: float = 70.0, combine: str = "raw", on_no_scale: str = "original", batch_size: int = 32,
                 blur_kernel: int = 51, blur_sigma: float = 50.0, keep_scales: str = "top1",
                 alpha_score: str = "logit"):
        if zeta_0 is not None:
            check_positive_int(zeta_0, "zeta_0")
        if isinstance(zeta_max, bool) or not isinstance(zeta_max, int) or zeta_max < 0:
            raise ValueError(f"zeta_max must be a non-negative integer, got {zeta_max!r}")
        check_positive_int(num_scales, "num_scales")
        if num_scales > 1 and zeta_max // num_scales < 1:
            raise ValueError(f"zeta_max={zeta_max} and num_scales={num_scales} give a scale step "
                             f"floor(zeta_max/N) = 0: every scale would repeat the original")
        self.layer = layer
        self.zeta_0 = zeta_0
        self.zeta_max = zeta_max
        self.num_scales = num_scales
        self.image_mode = check_choice(image_mode, ("bicubic", "bilinear"), "image_mode")
        self.groups = check_positive_int(groups, "groups")
        self.denoise = check_choice(denoise, (None, "input"), "denoise")
        self.theta = check_percentile(theta)
        self.combine = check_choice(combine, COMBINE_MODES, "combine")
        self.on_no_scale = check_choice(on_no_scale, NO_SCALE_POLICIES, "on_no_scale")
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.blur_kernel = blur_kernel
        self.blur_sigma = blur_sigma
        self.keep_scales = check_choice(keep_scales, KEEP_SCALE_RULES, "keep_scales")
        self.alpha_score = check_choice(alpha_score, TARGET_SCORES, "alpha_score")
        self.last_kept_scales: torch.Tensor | None = None

    def scales(self, input_height: int) -> list[int]:
        """zeta_t = zeta_0 + floor(zeta_max / N) * (t - 1), t = 1..N."""
        zeta_0 = self.zeta_0 if self.zeta_0 is not None else input_height
        step = math.floor(self.zeta_max / self.num_scales)
        return [zeta_0 + step * t for t in range(self.num_scales)]

    def attribute(self, model: nn.Module, x: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        size = tuple(x.shape[-2:])
        check_blur_fits(size, self.blur_kernel)
        scales = self.scales(size[0])
        sizes = scaled_sizes(size, scales, scales[0])
        activations, gradients, keep, targets = multiscale_passes(model, x, self.layer, sizes, target, self.image_mode)
        if self.keep_scales == "all":
            keep = torch.ones_like(keep)
        self.last_kept_scales = keep.T.clone()
        if self.groups > activations[0].shape[1]:
            raise ValueError(f"groups={self.groups} exceeds the layer's {activations[0].shape[1]} channels")
        weights = scale_weights(keep, self.on_no_scale, x.dtype)
        channel_weights = sum(w[:, None] * upsampled_mean(g, size) for w, g in zip(weights, gradients))
        group_maps = torch.zeros(x.shape[0], self.groups, *size, dtype=x.dtype, device=x.device)
        for w, a in zip(weights, activations):
            scale_groups = group_sums(channel_weights[:, :, None, None] * a, self.groups)
            group_maps += w[:, None, None, None] * upsample(scale_groups, size)
        masks = F.relu(group_maps)
        denoised = percentile_denoise(masks, self.theta) if self.denoise == "input" else masks
        return group_score_map(model, x, targets, masks, denoised, self.combine, self.batch_size,
                               self.blur_kernel, self.blur_sigma, self.alpha_score)
