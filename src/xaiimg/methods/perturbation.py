"""Perturbation-weighted saliency: Score-CAM, Group-CAM and RISE.

Each method weights maps by how the model scores masked copies of the input; the masked forwards, Group-CAM's
grouping, denoising and blurred-baseline scoring are shared with MSG-CAM in :mod:`xaiimg.methods.perturbation_base`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from xaiimg.methods.base import Explainer, check_choice, check_percentile, check_positive_int, register
from xaiimg.methods.cam_base import ChannelWeightedCAM
from xaiimg.methods.perturbation_base import (
    COMBINE_MODES,
    DENOISE_MODES,
    TARGET_SCORES,
    check_blur_fits,
    group_score_map,
    group_sums,
    percentile_denoise,
    target_scores,
)
from xaiimg.nn import LayerPass, TargetLike, activations_and_gradients, resolve_targets
from xaiimg.ops import MINMAX_EPS, batches, minmax_normalize, upsample


def mirror_linear_matrix(length: int, out_length: int, dtype, device) -> torch.Tensor:
    """``[out_length, length]`` matrix of 1-D linear resampling with half-pixel centres and mirror borders
    (``d c b | a b c d``): skimage ``resize(order=1, mode="reflect", anti_aliasing=False)`` along one axis."""
    source = (torch.arange(out_length, dtype=torch.float64) + 0.5) * length / out_length - 0.5
    low = source.floor()
    fraction = source - low

    def mirror(index: torch.Tensor) -> torch.Tensor:
        index = index.abs()
        return torch.where(index > length - 1, 2 * (length - 1) - index, index).clamp(0, length - 1).long()

    matrix = torch.zeros(out_length, length, dtype=torch.float64)
    outputs = torch.arange(out_length)
    matrix.index_put_((outputs, mirror(low)), 1 - fraction, accumulate=True)
    matrix.index_put_((outputs, mirror(low + 1)), fraction, accumulate=True)
    return matrix.to(dtype=dtype, device=device)


# --------------------------------------------------------------------------------------------- methods
@register("score-cam")
class ScoreCAM(ChannelWeightedCAM):
    """Score-CAM (Wang et al., CVPR-W 2020, eq. 8): map = ReLU(sum_k w_k A_k) at the layer's resolution.

    Each channel A_k is upsampled to the input size (bilinear), min-max normalised to a mask H_k, and the
    masked input x*H_k is scored. ``weights``:

    - ``"probability"`` (default; the official Score-CAM code and PROTOCOLS "mask weights: softmax
      probability"): w_k = softmax over classes of model(x*H_k), at the target. A flat channel gets w_k = 0
      (the official code skips it). No baseline is subtracted (as in the official code).
    - ``"logit-softmax"`` (pytorch-grad-cam ``ScoreCAM``): w = softmax over channels of the target logits of
      the masked inputs; flat channels keep their weight.

    ``align_corners=True`` reproduces pytorch-grad-cam's ``UpsamplingBilinear2d`` for the masks; the default
    ``False`` is the project's (and the official code's) convention. Passes: 1 forward, then ``B*C`` masked
    images in batches of ``batch_size``.
    """

    uses_gradients = False

    def __init__(self, layer: str | nn.Module | None = None, batch_size: int = 32, weights: str = "probability",
                 align_corners: bool = False):
        super().__init__(layer)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.weights = check_choice(weights, ("probability", "logit-softmax"), "weights")
        self.align_corners = bool(align_corners)

    def channel_masks(self, activations: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Upsampled, min-max normalised channels ``[n,1,H,W]`` of ``activations`` ``[n,h,w]``; which were not flat."""
        masks = F.interpolate(activations[:, None], size=size, mode="bilinear", align_corners=self.align_corners)
        flat = masks.reshape(masks.shape[0], -1)
        not_flat = (flat.max(1).values - flat.min(1).values) > MINMAX_EPS
        return minmax_normalize(masks), not_flat

    @torch.no_grad()
    def channel_weights(self, model: nn.Module, x: torch.Tensor, layer_pass: LayerPass) -> torch.Tensor:
        activations, targets = layer_pass.activations, layer_pass.targets
        num_images, channels = activations.shape[:2]
        score = "probability" if self.weights == "probability" else "logit"
        scores = torch.empty(num_images * channels, dtype=x.dtype, device=x.device)
        not_flat = torch.empty(num_images * channels, dtype=torch.bool, device=x.device)
        flat_activations = activations.reshape(num_images * channels, *activations.shape[2:])
        for part in batches(num_images * channels, self.batch_size):
            image = torch.arange(part.start, part.stop, device=x.device) // channels
            masks, not_flat[part] = self.channel_masks(flat_activations[part], tuple(x.shape[-2:]))
            scores[part] = target_scores(model, x[image] * masks, targets[image], score)
        scores = scores.reshape(num_images, channels)
        if self.weights == "probability":
            return torch.where(not_flat.reshape(num_images, channels), scores, torch.zeros_like(scores))
        return F.softmax(scores, dim=1)


@register("group-cam")
class GroupCAM(Explainer):
    """Group-CAM (Zhang et al. 2021, arXiv:2103.13859), official code wofmanaf/Group-CAM ``cam/groupcam.py``.

    One forward+backward gives A and dY_c/dA (raw logit); W_k = spatial mean of the gradients; the channels
    of W*A are summed in ``groups`` contiguous groups, M_r = ReLU(group sum), upsampled (bilinear) to the
    input. ``denoise`` (keep values strictly above the ``theta``-th percentile, zero the rest):

    - ``"feature"`` (default): at feature resolution before upsampling, as the official code we could read
      (commit 0b61fdd, ``np.percentile(., 70)``; PROTOCOLS calls it the pre-2021-08 code);
    - ``"input"``: at input resolution (the thesis's variant);
    - ``None``: no percentile step (PROTOCOLS: the current official code).

    Then M'_r = minmax(denoised M_r), I_r = I*M'_r + blur(I)*(1-M'_r) with a Gaussian blur (kernel 51,
    sigma 50, reflect, on the normalised tensor), alpha_r = softmax_c(I_r) - softmax_c(blur(I)) and the map is
    ReLU(sum_r alpha_r * M'_r) (``combine="denoised"``, what the official code sums) or with the
    un-thresholded, un-normalised M_r upsampled to the input (``combine="raw"``, as MSG-CAM's Algorithm 1; the
    official code's commented-out alternative sums the thresholded M_r instead).
    Passes: 1 forward+backward, 1 baseline forward, ``B*groups`` blended images in batches of ``batch_size``.
    """

    def __init__(self, layer: str | nn.Module | None = None, groups: int = 32, denoise: str | None = "feature",
                 theta: float = 70.0, combine: str = "denoised", batch_size: int = 32, blur_kernel: int = 51,
                 blur_sigma: float = 50.0):
        self.layer = layer
        self.groups = check_positive_int(groups, "groups")
        self.denoise = check_choice(denoise, DENOISE_MODES, "denoise")
        self.theta = check_percentile(theta)
        self.combine = check_choice(combine, COMBINE_MODES, "combine")
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.blur_kernel = blur_kernel
        self.blur_sigma = blur_sigma

    def attribute(self, model: nn.Module, x: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        check_blur_fits(tuple(x.shape[-2:]), self.blur_kernel)
        activations, gradients, _, targets = activations_and_gradients(model, x, self.layer, target)
        channel_weights = gradients.mean(dim=(2, 3), keepdim=True)
        masks = F.relu(group_sums(channel_weights * activations, self.groups))
        size = tuple(x.shape[-2:])
        if self.denoise == "feature":
            denoised = upsample(percentile_denoise(masks, self.theta), size)
            masks = upsample(masks, size)
        else:
            masks = upsample(masks, size)
            denoised = percentile_denoise(masks, self.theta) if self.denoise == "input" else masks
        return group_score_map(model, x, targets, masks, denoised, self.combine, self.batch_size,
                               self.blur_kernel, self.blur_sigma)


@register("rise")
class RISE(Explainer):
    """RISE (Petsiuk et al., BMVC 2018): saliency = sum_i P_c(x * M_i) M_i / (N p).

    Masks as eclique/RISE ``generate_masks``: N binary ``s x s`` grids with P(1) = p, upsampled to
    ``(s+1) * ceil(H/s)`` per axis by linear interpolation with mirror borders (skimage ``resize(order=1,
    mode="reflect", anti_aliasing=False)``, see :func:`mirror_linear_matrix`) and cropped at a random shift
    in ``[0, ceil(H/s))`` per axis. Grids and shifts come from a ``torch.Generator`` seeded with ``seed`` (on
    the CPU, so a seed gives the same masks on any device; numpy's stream differs, so the masks are not
    eclique's own); masks are generated batch by batch and shared by all images. Same seed and
    ``batch_size`` -> bit-identical maps on CPU.

    Presets (explicit arguments override them):

    - ``"eclique"``: N=4000, s=8, p=0.5, score = softmax probability (eclique/RISE ``explanations.py``).
    - ``"groupcam"``: N=8000, s=7, p=0.1, score = raw logit (wofmanaf/Group-CAM ``cam/rise.py``: its
      ``RISE(N=8000, s=7, p1=0.1)`` scores ``self.model(mask * x)`` without a softmax).

    Passes: 1 forward (targets), then ``B*N`` masked images in batches of ``batch_size``.
    """

    PRESETS = {
        "eclique": dict(num_masks=4000, grid_size=8, p=0.5, score="probability"),
        "groupcam": dict(num_masks=8000, grid_size=7, p=0.1, score="logit"),
    }

    def __init__(self, preset: str = "eclique", num_masks: int | None = None, grid_size: int | None = None,
                 p: float | None = None, score: str | None = None, seed: int = 0, batch_size: int = 32):
        settings = dict(self.PRESETS[check_choice(preset, tuple(self.PRESETS), "preset")])
        overrides = dict(num_masks=num_masks, grid_size=grid_size, p=p, score=score)
        settings.update({k: v for k, v in overrides.items() if v is not None})
        self.preset = preset
        self.num_masks = check_positive_int(settings["num_masks"], "num_masks")
        self.grid_size = check_positive_int(settings["grid_size"], "grid_size")
        if not 0 < settings["p"] <= 1:
            raise ValueError(f"p (probability of a grid cell being kept) must lie in (0, 1], got {settings['p']!r}")
        self.p = float(settings["p"])
        self.score = check_choice(settings["score"], TARGET_SCORES, "score")
        if not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        self.seed = seed
        self.batch_size = check_positive_int(batch_size, "batch_size")

    def mask_recipe(self, size: tuple[int, int]):
        """Binary grids ``[N,s,s]``, crop shifts ``[N,2]`` and the upsampled grid size, from ``seed``."""
        generator = torch.Generator().manual_seed(self.seed)
        cell = (math.ceil(size[0] / self.grid_size), math.ceil(size[1] / self.grid_size))
        grids = torch.rand(self.num_masks, self.grid_size, self.grid_size, generator=generator) < self.p
        shifts = torch.stack([torch.randint(0, cell[0], (self.num_masks,), generator=generator),
                              torch.randint(0, cell[1], (self.num_masks,), generator=generator)], dim=1)
        up_size = ((self.grid_size + 1) * cell[0], (self.grid_size + 1) * cell[1])
        return grids, shifts, up_size

    @staticmethod
    def render_masks(grids: torch.Tensor, shifts: torch.Tensor, up_size: tuple[int, int],
                     size: tuple[int, int]) -> torch.Tensor:
        """Soft masks ``[n,1,H,W]``: each grid upsampled to ``up_size`` and cropped ``size`` at its shift.

        Only the cropped rows/columns of the separable upsampling are formed: mask = R_y[rows] grid R_x[cols]^T.
        """
        rows = shifts[:, 0, None] + torch.arange(size[0], device=grids.device)
        cols = shifts[:, 1, None] + torch.arange(size[1], device=grids.device)
        resample_rows = mirror_linear_matrix(grids.shape[1], up_size[0], grids.dtype, grids.device)[rows]
        resample_cols = mirror_linear_matrix(grids.shape[2], up_size[1], grids.dtype, grids.device)[cols]
        return (resample_rows @ grids @ resample_cols.transpose(1, 2))[:, None]

    def masks(self, size: tuple[int, int], dtype=torch.float32, device=None) -> torch.Tensor:
        """All N masks ``[N,1,H,W]`` (for inspection and tests; :meth:`attribute` renders them per batch)."""
        grids, shifts, up_size = self.mask_recipe(size)
        return self.render_masks(grids.to(device=device, dtype=dtype), shifts.to(device), up_size, size)

    def attribute(self, model: nn.Module, x: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        size = tuple(x.shape[-2:])
        grids, shifts, up_size = self.mask_recipe(size)
        grids, shifts = grids.to(device=x.device, dtype=x.dtype), shifts.to(x.device)
        num_images = x.shape[0]
        saliency = torch.zeros(num_images, 1, *size, dtype=x.dtype, device=x.device)
        with torch.no_grad():
            targets = resolve_targets(target, model(x))
            for part in batches(self.num_masks * num_images, self.batch_size):
                job = torch.arange(part.start, part.stop, device=x.device)
                mask_index, image = job // num_images, job % num_images
                first = part.start // num_images
                last = (part.stop - 1) // num_images + 1
                masks = self.render_masks(grids[first:last], shifts[first:last], up_size, size)
                masks = masks[mask_index - first]
                weights = target_scores(model, x[image] * masks, targets[image], self.score)
                saliency.index_add_(0, image, weights[:, None, None, None] * masks)
        return saliency / (self.num_masks * self.p)
