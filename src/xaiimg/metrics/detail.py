"""Localisation measures of detail, for the claim that a map has "higher resolution / finer detail".

- Energy-based pointing game (Wang et al., Score-CAM, CVPR-W 2020, sec. 5.2): the share of the map's energy that
  falls inside the ground-truth region, ``sum_{p in mask} S(p) / sum_p S(p)``. Unlike the pointing game it rewards a
  map for keeping its mass on small or multiple objects, not only its maximum.
- Boundary F-score (Csurka, Larlus & Perronnin, BMVC 2013, the "BF score"; DAVIS's contour accuracy, Perazzi et al.,
  CVPR 2016): the map thresholded at its own mean (the segmentation protocol of Chefer et al.), the boundaries of
  that region and of the ground truth compared within a tolerance of ``tolerance`` pixels; ``F = 2PR / (P + R)``.

Both take maps ``[B,1,h,w]`` (non-negative, as ``xaiimg.explain`` returns them) and boolean masks ``[B,H,W]`` (or
``[B,1,H,W]``); a map of another size is bilinearly resized to the mask's. Scores are per image, in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from xaiimg.metrics.registry import register_metric
from xaiimg.metrics.results import MetricResult
from xaiimg.ops import upsample


def _maps_and_masks(saliency: torch.Tensor, masks) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B,H,W]`` float maps at the masks' size and ``[B,H,W]`` bool masks, with clear errors on bad input."""
    if not isinstance(saliency, torch.Tensor) or saliency.ndim != 4 or saliency.shape[1] != 1:
        raise ValueError(f"saliency must be a [B,1,H,W] tensor, got {getattr(saliency, 'shape', type(saliency))}")
    masks = torch.as_tensor(masks, device=saliency.device)
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.ndim != 3 or masks.shape[0] != saliency.shape[0]:
        raise ValueError(f"masks must be [B,H,W] with B={saliency.shape[0]}, got {tuple(masks.shape)}")
    if not torch.isfinite(saliency).all():
        raise ValueError("saliency contains NaN or infinite values")
    if (saliency < 0).any():
        raise ValueError("saliency must be non-negative (energy); normalise it first, e.g. xaiimg.explain's output")
    maps = saliency.double()
    if maps.shape[-2:] != masks.shape[-2:]:
        maps = upsample(maps, tuple(masks.shape[-2:]))
    return maps[:, 0], masks.bool()


@dataclass
class EnergyPointingResult(MetricResult):
    """Per-image share of map energy inside the ground truth."""

    metric: ClassVar[str] = "energy-pointing-game"
    higher_is_better: ClassVar[dict[str, bool]] = {"energy_inside": True}

    energy_inside: torch.Tensor

    def summary(self) -> dict[str, float]:
        return {"energy_inside": self.energy_inside.mean().item()}

    def per_sample(self) -> dict[str, list[float]]:
        return {"energy_inside": self.energy_inside.tolist()}


def energy_pointing_game(saliency: torch.Tensor, masks) -> EnergyPointingResult:
    """``sum_{p in mask} S(p) / sum_p S(p)`` per image (Wang et al. 2020); a map with no energy scores 0. A uniform
    map scores the mask's area fraction, the chance level to compare against."""
    maps, masks = _maps_and_masks(saliency, masks)
    total = maps.sum(dim=(1, 2))
    inside = (maps * masks).sum(dim=(1, 2))
    return EnergyPointingResult(torch.where(total > 0, inside / total.clamp_min(torch.finfo(total.dtype).tiny),
                                            torch.zeros_like(total)))


def region_boundary(regions: torch.Tensor) -> torch.Tensor:
    """The inner boundary of boolean regions ``[B,H,W]``: region pixels with a 4-neighbour outside the region (the
    image border counts as outside)."""
    padded = F.pad(regions[:, None].float(), (1, 1, 1, 1), value=0.0)
    cross = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]], device=regions.device)
    eroded = F.conv2d(padded, cross[None, None]) >= 5 - 0.5
    return regions & ~eroded[:, 0]


def _near(boundary: torch.Tensor, tolerance: int) -> torch.Tensor:
    """Pixels within Chebyshev distance ``tolerance`` of ``boundary`` ``[B,H,W]``."""
    if tolerance == 0:
        return boundary
    return F.max_pool2d(boundary[:, None].float(), 2 * tolerance + 1, stride=1, padding=tolerance)[:, 0] > 0


@dataclass
class BoundaryResult(MetricResult):
    """Per-image boundary precision, recall and F-score of the mean-thresholded map against the ground truth."""

    metric: ClassVar[str] = "boundary-f-score"
    higher_is_better: ClassVar[dict[str, bool]] = {"boundary_f": True, "boundary_precision": True,
                                                   "boundary_recall": True}

    precision: torch.Tensor
    recall: torch.Tensor
    tolerance: int

    @property
    def f_score(self) -> torch.Tensor:
        total = self.precision + self.recall
        return torch.where(total > 0, 2 * self.precision * self.recall / total.clamp_min(1e-300),
                           torch.zeros_like(total))

    def summary(self) -> dict[str, float]:
        return {"boundary_f": self.f_score.mean().item(), "boundary_precision": self.precision.mean().item(),
                "boundary_recall": self.recall.mean().item()}

    def per_sample(self) -> dict[str, list[float]]:
        return {"boundary_f": self.f_score.tolist(), "boundary_precision": self.precision.tolist(),
                "boundary_recall": self.recall.tolist()}


def boundary_f_score(saliency: torch.Tensor, masks, tolerance: int = 2) -> BoundaryResult:
    """Boundary F-score (Csurka et al. 2013): the region ``S > mean(S)`` per image; precision = share of its
    boundary pixels within ``tolerance`` px (Chebyshev) of the ground truth's boundary, recall = the converse;
    ``F = 2PR/(P+R)``. An empty boundary gives precision (or recall) 0; a flat map has no region and scores 0."""
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
    maps, masks = _maps_and_masks(saliency, masks)
    regions = maps > maps.mean(dim=(1, 2), keepdim=True)
    predicted, truth = region_boundary(regions), region_boundary(masks)

    def share(boundary: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        count = boundary.sum(dim=(1, 2)).double()
        matched = (boundary & _near(other, tolerance)).sum(dim=(1, 2)).double()
        return torch.where(count > 0, matched / count.clamp_min(1), torch.zeros_like(count))

    return BoundaryResult(share(predicted, truth), share(truth, predicted), int(tolerance))


@register_metric("energy-pointing-game", category="localisation", result=EnergyPointingResult,
                 ground_truth=("masks",),
                 paper="Wang, Wang, Du, Yang, Zhang, Ding, Mardziel & Hu, Score-CAM: Score-Weighted Visual "
                       "Explanations for Convolutional Neural Networks, CVPR-W 2020")
def _energy_pointing_metric(model, inputs, saliency, targets=None, *, masks) -> EnergyPointingResult:
    """:func:`energy_pointing_game` against ``masks=`` of the explained class; ``model``, ``inputs`` and ``targets``
    are not used."""
    return energy_pointing_game(saliency, masks)


@register_metric("boundary-f-score", category="localisation", result=BoundaryResult, ground_truth=("masks",),
                 paper="Csurka, Larlus & Perronnin, What is a good evaluation measure for semantic segmentation?, "
                       "BMVC 2013")
def _boundary_metric(model, inputs, saliency, targets=None, *, masks, tolerance: int = 2) -> BoundaryResult:
    """:func:`boundary_f_score` against ``masks=``; ``model``, ``inputs`` and ``targets`` are not used."""
    return boundary_f_score(saliency, masks, tolerance=tolerance)
