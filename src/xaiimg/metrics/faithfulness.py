"""Insertion and deletion (Petsiuk et al., RISE, BMVC 2018), with the protocol presets of PROTOCOLS.md.

Pixels are ranked by saliency (stable sort, descending; ties keep raster order). Point ``i`` of the curves, for
``i = 0..N`` with ``N = ceil(H*W / step)``:

- deletion: the original with its ``i*step`` most salient pixels replaced by the deletion canvas;
- insertion: the insertion canvas with its ``i*step`` most salient pixels taken from the original.

Each point is scored by the softmax probability of the class (``target``, or the argmax on the original), and
``AUC = (sum_i a_i - a_0/2 - a_N/2) / N`` (the trapezoidal rule on ``[0,1]``, as eclique/RISE's ``auc``).
Higher insertion AUC and lower deletion AUC are better; ``overall = insertion - deletion``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from xaiimg.metrics._common import check_metric_inputs, original_logits_and_targets, prepare_saliency, score_jobs
from xaiimg.metrics.registry import register_metric
from xaiimg.metrics.results import MetricResult
from xaiimg.nn import preserved_state
from xaiimg.ops import gaussian_blur, stable_descending_order

Canvas = Callable[[torch.Tensor], torch.Tensor]


def rise_kernel1d(size: int = 11, sigma: float = 5.0, truncate: float = 4.0, dtype=torch.float64) -> torch.Tensor:
    """1-D factor of eclique/RISE's ``gkern(11, 5)``: ``scipy.ndimage.gaussian_filter`` (radius
    ``int(truncate*sigma + 0.5)``, border mode 'reflect') applied to a centred delta of length ``size``.

    The Gaussian's tails beyond the window are folded back by the reflection, so this is flatter than a truncated
    Gaussian; the 2-D kernel is the outer product of this factor with itself (the filter is separable).
    """
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=dtype)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    weights = weights / weights.sum()
    positions = torch.arange(size).view(-1, 1) + offsets.long().view(1, -1)
    period = positions.remainder(2 * size)
    reflected = torch.where(period >= size, 2 * size - 1 - period, period)
    return (weights * (reflected == size // 2)).sum(dim=1)


def rise_blur(x: torch.Tensor) -> torch.Tensor:
    """eclique/RISE's insertion canvas: ``conv2d(x, gkern(11, 5), padding=5)`` per channel, zero padding."""
    kernel = rise_kernel1d(dtype=torch.float64).to(device=x.device, dtype=x.dtype)
    channels, pad = x.shape[1], kernel.numel() // 2
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), padding=(0, pad), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), padding=(pad, 0), groups=channels)


def blur_51(x: torch.Tensor) -> torch.Tensor:
    """Gaussian blur, kernel 51, sigma 50, reflect border (kornia ``gaussian_blur2d`` as Group-CAM uses it)."""
    return gaussian_blur(x, kernel_size=51, sigma=50.0, border="reflect")


def zeros_canvas(x: torch.Tensor) -> torch.Tensor:
    """Zeros in the model's (normalised) input space."""
    return torch.zeros_like(x)


@dataclass(frozen=True)
class InsertionDeletionProtocol:
    """One paper's choices: pixels per step (``step``, or ``step_fraction`` of ``H*W`` rounded) and the two canvases."""

    name: str
    insertion_canvas: Canvas
    deletion_canvas: Canvas
    step: int | None = None
    step_fraction: float | None = None

    def pixels_per_step(self, num_pixels: int) -> int:
        if (self.step is None) == (self.step_fraction is None):
            raise ValueError(f"protocol {self.name!r} needs exactly one of step and step_fraction")
        step = self.step if self.step is not None else round(self.step_fraction * num_pixels)
        if step < 1:
            raise ValueError(f"protocol {self.name!r} gives {step} pixels per step for {num_pixels} pixels")
        return int(step)


PROTOCOLS: dict[str, InsertionDeletionProtocol] = {
    # eclique/RISE evaluation.py: CausalMetric(model, 'ins', 224, substrate_fn=blur) with blur = conv2d(gkern(11, 5),
    # padding=5); CausalMetric(model, 'del', 224, substrate_fn=torch.zeros_like).
    "rise": InsertionDeletionProtocol("rise", insertion_canvas=rise_blur, deletion_canvas=zeros_canvas, step=224),
    # thesis ch.3.3.4: 448 pixels per step at 224x224 (0.893% of the pixels); the blurred original is the canvas of
    # both insertion and deletion (blur of PROTOCOLS "Common conventions": 51 / 50 / reflect).
    "thesis": InsertionDeletionProtocol("thesis", insertion_canvas=blur_51, deletion_canvas=blur_51,
                                        step_fraction=448 / (224 * 224)),
    # Group-CAM utils: CausalMetric(model, 'ins', 224*2, substrate_fn=blur 51/50), ('del', 224*2, torch.zeros_like).
    "groupcam": InsertionDeletionProtocol("groupcam", insertion_canvas=blur_51, deletion_canvas=zeros_canvas, step=448),
}


def get_protocol(protocol: str | InsertionDeletionProtocol) -> InsertionDeletionProtocol:
    if isinstance(protocol, InsertionDeletionProtocol):
        return protocol
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown insertion/deletion protocol {protocol!r}; choose one of {sorted(PROTOCOLS)} "
                         "or pass an InsertionDeletionProtocol")
    return PROTOCOLS[protocol]


def trapezoid_auc(curves: torch.Tensor) -> torch.Tensor:
    """``(sum_i a_i - a_0/2 - a_N/2) / N`` along the last dim (N+1 evenly spaced points on [0,1])."""
    steps = curves.shape[-1] - 1
    return (curves.sum(-1) - curves[..., 0] / 2 - curves[..., -1] / 2) / steps


@dataclass
class InsertionDeletionResult(MetricResult):
    """Curves ``[B, N+1]`` of the class probability, their AUCs ``[B]``, the class scored and the protocol.

    ``fractions[i]`` is the fraction of the pixels inserted (or deleted) at point ``i``.
    """

    metric: ClassVar[str] = "insertion_deletion"
    higher_is_better: ClassVar[dict[str, bool]] = {"insertion_auc": True, "deletion_auc": False, "overall": True}

    protocol: str
    pixels_per_step: int
    targets: torch.Tensor
    fractions: torch.Tensor
    insertion_curve: torch.Tensor
    deletion_curve: torch.Tensor
    insertion_auc: torch.Tensor
    deletion_auc: torch.Tensor

    @property
    def overall(self) -> torch.Tensor:
        """``AUC(insertion) - AUC(deletion)`` per sample."""
        return self.insertion_auc - self.deletion_auc

    def summary(self) -> dict[str, float]:
        return {"insertion_auc": self.insertion_auc.mean().item(), "deletion_auc": self.deletion_auc.mean().item(),
                "overall": self.overall.mean().item()}

    def per_sample(self) -> dict[str, list[float]]:
        return {"insertion_auc": self.insertion_auc.tolist(), "deletion_auc": self.deletion_auc.tolist(),
                "overall": self.overall.tolist()}

    def to_dict(self) -> dict:
        return {**super().to_dict(), "overall": self.overall.tolist()}


def insertion_deletion(model: nn.Module, x: torch.Tensor, saliency: torch.Tensor, target=None,
                       protocol: str | InsertionDeletionProtocol = "rise", batch_size: int = 64,
                       progress: bool = False) -> InsertionDeletionResult:
    """Insertion and deletion curves and AUCs per sample (see the module docstring and ``PROTOCOLS``).

    ``x``: model inputs ``[B,C,H,W]`` (normalised space); ``saliency``: ``[B,1,h,w]`` maps, bilinear-resized to
    ``HxW`` before ranking; ``target``: ``None`` (argmax on the original), an int, or one int per sample.
    All ``B*(2N+1)`` forwards are batched across samples and steps, ``batch_size`` images at a time, and the
    perturbed images of one chunk only exist at once. The unperturbed forward gives the class, deletion point 0
    and insertion point N (both are the original image). ``x`` and ``saliency`` are not modified.
    """
    check_metric_inputs(model, x, target, batch_size)
    preset = get_protocol(protocol)
    maps = prepare_saliency(saliency, x)
    x = x.detach()
    batch, _, height, width = x.shape
    num_pixels = height * width
    step = preset.pixels_per_step(num_pixels)
    num_steps = math.ceil(num_pixels / step)

    order = stable_descending_order(maps)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(num_pixels, device=x.device).expand(batch, -1))

    with preserved_state(model), torch.no_grad():
        logits, targets = original_logits_and_targets(model, x, target, batch_size)
        original_scores = logits.softmax(dim=-1).gather(1, targets.view(-1, 1)).squeeze(1)
        # Kind 0 (insertion) goes from its canvas to x, kind 1 (deletion) from x to its canvas.
        starts = torch.stack([preset.insertion_canvas(x), x])
        finishes = torch.stack([x, preset.deletion_canvas(x)])
        if starts.shape != finishes.shape or starts.shape[1:] != x.shape:
            raise ValueError(f"protocol {preset.name!r}: a canvas changed the image shape {tuple(x.shape)}")

        # Jobs: insertion points 0..N-1 and deletion points 1..N of every sample (the rest is the original).
        points = torch.arange(num_steps, device=x.device)
        kinds = torch.arange(2, device=x.device).repeat_interleave(batch * num_steps)
        samples = torch.arange(batch, device=x.device).repeat_interleave(num_steps).repeat(2)
        counts = torch.cat([points.repeat(batch), (points + 1).repeat(batch)]) * step

        def build(chunk: slice) -> torch.Tensor:
            kind, sample = kinds[chunk], samples[chunk]
            replaced = (rank[sample] < counts[chunk].view(-1, 1)).view(-1, 1, height, width)
            return torch.where(replaced, finishes[kind, sample], starts[kind, sample])

        def read(chunk: slice, chunk_logits: torch.Tensor) -> torch.Tensor:
            return chunk_logits.softmax(dim=-1).gather(1, targets[samples[chunk]].view(-1, 1)).squeeze(1)

        scores = score_jobs(model, kinds.numel(), build, read, batch_size, progress,
                            f"insertion/deletion ({preset.name})").view(2, batch, num_steps)

    insertion = torch.cat([scores[0], original_scores.view(-1, 1)], dim=1)
    deletion = torch.cat([original_scores.view(-1, 1), scores[1]], dim=1)
    fractions = (torch.arange(num_steps + 1, dtype=torch.float64, device=x.device) * step
                 ).clamp(max=num_pixels) / num_pixels
    return InsertionDeletionResult(
        protocol=preset.name, pixels_per_step=step, targets=targets, fractions=fractions,
        insertion_curve=insertion, deletion_curve=deletion,
        insertion_auc=trapezoid_auc(insertion), deletion_auc=trapezoid_auc(deletion))


@register_metric("insertion-deletion", category="faithfulness", result=InsertionDeletionResult,
                 paper="Petsiuk, Das & Saenko, RISE: Randomized Input Sampling for Explanation of Black-box Models, "
                       "BMVC 2018")
def _insertion_deletion_metric(model, inputs, saliency, targets=None, **options) -> InsertionDeletionResult:
    """:func:`insertion_deletion` in the registry's order; ``options``: ``protocol``, ``batch_size``, ``progress``."""
    return insertion_deletion(model, inputs, saliency, target=targets, **options)
