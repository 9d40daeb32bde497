"""Localisation against ground truth: the pointing game and saliency-as-segmentation.

Both are accumulators (:class:`PointingGame`, :class:`SegmentationScores`) so a dataset can be streamed in
batches of images of any size; :func:`pointing_game` and :func:`segmentation_scores` are one-call wrappers.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from xaiimg.metrics._common import one_per_sample
from xaiimg.metrics.registry import register_metric
from xaiimg.metrics.results import MetricResult
from xaiimg.ops import minmax_normalize, stable_descending_order, upsample

POINTING_PRESETS = ("torchray", "thesis-top100")


# ------------------------------------------------------------------------------------------ ground truth
def boxes_to_mask(boxes: torch.Tensor | Sequence[Sequence[float]], size: tuple[int, int]) -> torch.Tensor:
    """Union of boxes ``[K,4]`` = ``(xmin, ymin, xmax, ymax)`` in 0-based pixel coordinates, both ends inclusive,
    as a bool mask of ``size=(H, W)``. (PASCAL VOC XML is 1-based: subtract 1 from every coordinate first.)"""
    boxes = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    height, width = size
    rows = torch.arange(height, dtype=torch.float64).view(1, -1, 1)
    cols = torch.arange(width, dtype=torch.float64).view(1, 1, -1)
    xmin, ymin, xmax, ymax = (boxes[:, i].view(-1, 1, 1) for i in range(4))
    if (boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any():
        raise ValueError("boxes must be (xmin, ymin, xmax, ymax) with xmax >= xmin and ymax >= ymin, "
                         f"got {boxes.tolist()}")
    inside = (cols >= xmin) & (cols <= xmax) & (rows >= ymin) & (rows <= ymax)
    return inside.any(dim=0)


def _as_map(saliency, index: int) -> torch.Tensor:
    item = saliency[index]
    if not isinstance(item, torch.Tensor):
        raise TypeError(f"saliency[{index}] must be a torch.Tensor, got {type(item).__name__}")
    item = item.detach()
    if item.ndim == 3 and item.shape[0] == 1:
        item = item[0]
    if item.ndim != 2:
        raise ValueError(f"saliency[{index}] must be a map [h,w] or [1,h,w], got {tuple(item.shape)}")
    if not item.is_floating_point():
        item = item.float()
    if not torch.isfinite(item).all():
        raise ValueError(f"saliency[{index}] contains NaN or infinite values")
    return item


def _as_mask(region, index: int) -> torch.Tensor:
    if not isinstance(region, torch.Tensor) or region.ndim != 2:
        shape = tuple(region.shape) if isinstance(region, torch.Tensor) else type(region).__name__
        raise ValueError(f"masks[{index}] must be a 2-D mask [H,W] (or give boxes=), got {shape}")
    return region.bool() if region.dtype == torch.bool else region != 0


def _resized(saliency_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of one ``[h,w]`` map to the ground truth's size (float64 keeps ties from rounding apart)."""
    return upsample(saliency_map.double()[None, None], size)[0, 0]


# --------------------------------------------------------------------------------------- pointing game
@dataclass
class PointingGameResult(MetricResult):
    """Hit or miss per (image, class) entry, the points used, and class-averaged accuracies.

    ``accuracy`` = mean over classes of ``hits / (hits + misses)``; ``accuracy_difficult`` the same on the
    entries flagged difficult (NaN when there are none).
    """

    metric: ClassVar[str] = "pointing_game"
    higher_is_better: ClassVar[dict[str, bool]] = {"accuracy": True, "accuracy_difficult": True}

    preset: str
    tolerance: float
    hits: torch.Tensor
    points: torch.Tensor
    classes: torch.Tensor
    difficult: torch.Tensor

    @staticmethod
    def _class_mean(hits: torch.Tensor, classes: torch.Tensor) -> float:
        if hits.numel() == 0:
            return math.nan
        present = classes.unique()
        return torch.stack([hits[classes == c].double().mean() for c in present]).mean().item()

    @property
    def per_class_accuracy(self) -> dict[int, float]:
        return {int(c): self.hits[self.classes == c].double().mean().item() for c in self.classes.unique()}

    def summary(self) -> dict[str, float]:
        return {"accuracy": self._class_mean(self.hits, self.classes),
                "accuracy_difficult": self._class_mean(self.hits[self.difficult], self.classes[self.difficult])}


class PointingGame:
    """Pointing game accumulator (Zhang et al., ECCV 2016; TorchRay's ``PointingGame``).

    ``preset="torchray"``: the map is bilinear-resized to the ground truth's size and its first maximum (raster
    order) is the point; a hit when some ground-truth pixel lies at Euclidean distance strictly below ``tolerance``
    (15 px) from it. ``tolerance=1`` counts the point's own pixel only (Quantus ``PointingGame`` without ties).

    ``preset="thesis-top100"`` (thesis ch.3.3.5, defined here since no reference code exists): the ``top_k=100``
    largest values of the resized map, ranked by a stable descending sort (ties keep raster order); a hit when a
    strict majority of them (more than ``top_k/2``, i.e. at least 51 of 100) lie inside the ground-truth region.
    ``tolerance`` is not used by this preset. An empty region is always a miss.
    """

    def __init__(self, preset: str = "torchray", tolerance: float = 15, top_k: int = 100):
        if preset not in POINTING_PRESETS:
            raise ValueError(f"unknown pointing-game preset {preset!r}; choose one of {POINTING_PRESETS}")
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        self.preset, self.tolerance, self.top_k = preset, float(tolerance), int(top_k)
        self._hits: list[torch.Tensor] = []   # one tensor per update, on the maps' device
        self._points: list[torch.Tensor] = []
        self._classes: list[torch.Tensor] = []
        self._difficult: list[torch.Tensor] = []

    def update(self, saliency, masks=None, classes: Sequence[int] | torch.Tensor | None = None,
               difficult: Sequence[bool] | torch.Tensor | None = None, boxes=None,
               image_sizes: Sequence[tuple[int, int]] | None = None) -> torch.Tensor:
        """Score one batch of ``n`` (image, class) entries; returns their hits ``[n]`` (bool).

        ``saliency``: ``[n,1,h,w]``/``[n,h,w]`` or a list of ``[h,w]`` maps. Ground truth: ``masks`` (``[n,H,W]`` or
        a list of ``[H,W]``, nonzero = region), or ``boxes`` (a list of ``[K,4]`` boxes per entry, see
        :func:`boxes_to_mask`) with ``image_sizes`` (default: each map's own size). ``classes``: class id per entry
        (default all 0); ``difficult``: flags for TorchRay's difficult subset (default all False).
        """
        count = len(saliency)
        if (masks is None) == (boxes is None):
            raise ValueError("give exactly one of masks= and boxes=")
        regions = masks if masks is not None else boxes
        if len(regions) != count:
            raise ValueError(f"got {count} saliency maps and {len(regions)} ground-truth entries")
        classes = torch.zeros(count, dtype=torch.long) if classes is None else \
            torch.as_tensor(classes).reshape(-1).long()
        difficult = torch.zeros(count, dtype=torch.bool) if difficult is None else \
            torch.as_tensor(difficult).reshape(-1).bool()
        if len(classes) != count or len(difficult) != count:
            raise ValueError(f"classes and difficult need one value per entry ({count})")
        if image_sizes is not None and len(image_sizes) != count:
            raise ValueError(f"image_sizes needs one (H, W) per entry ({count})")
        if count == 0:
            return torch.empty(0, dtype=torch.bool)
        hits, points = [], []
        for index in range(count):
            saliency_map = _as_map(saliency, index)
            if boxes is not None:
                size = tuple(image_sizes[index]) if image_sizes is not None else tuple(saliency_map.shape)
                mask = boxes_to_mask(boxes[index], size)
            else:
                mask = _as_mask(regions[index], index)
            hit, point = self._score(_resized(saliency_map, tuple(mask.shape)), mask.to(saliency_map.device))
            hits.append(hit)
            points.append(point)
        hits = torch.stack(hits)
        self._hits.append(hits)
        self._points.append(torch.stack(points))
        self._classes.append(classes.to(hits.device))
        self._difficult.append(difficult.to(hits.device))
        return hits

    def _score(self, saliency_map: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hit (a 0-d bool tensor) and point ``[2]`` (row, col) of one map, on the map's device."""
        width = saliency_map.shape[1]
        if self.preset == "torchray":
            flat_index = torch.argmax(saliency_map.reshape(-1))
            row, col = flat_index // width, flat_index % width
            rows = torch.arange(mask.shape[0], device=mask.device, dtype=torch.float64).view(-1, 1)
            cols = torch.arange(mask.shape[1], device=mask.device, dtype=torch.float64).view(1, -1)
            disk = (rows - row) ** 2 + (cols - col) ** 2 < self.tolerance ** 2
            return (disk & mask).any(), torch.stack([row, col])
        top = stable_descending_order(saliency_map.reshape(1, -1))[0, : self.top_k]
        inside = mask.reshape(-1)[top].sum()
        return inside > top.numel() / 2, torch.stack([top[0] // width, top[0] % width])

    def result(self) -> PointingGameResult:
        if not self._hits:
            return PointingGameResult(
                preset=self.preset, tolerance=self.tolerance, hits=torch.empty(0, dtype=torch.bool),
                points=torch.empty(0, 2, dtype=torch.long), classes=torch.empty(0, dtype=torch.long),
                difficult=torch.empty(0, dtype=torch.bool))
        return PointingGameResult(
            preset=self.preset, tolerance=self.tolerance, hits=torch.cat(self._hits), points=torch.cat(self._points),
            classes=torch.cat(self._classes), difficult=torch.cat(self._difficult))


def pointing_game(saliency, masks=None, classes=None, difficult=None, preset: str = "torchray",
                  tolerance: float = 15, top_k: int = 100, boxes=None, image_sizes=None) -> PointingGameResult:
    """One-call :class:`PointingGame` over all entries (see :meth:`PointingGame.update` for the inputs)."""
    game = PointingGame(preset=preset, tolerance=tolerance, top_k=top_k)
    game.update(saliency, masks=masks, classes=classes, difficult=difficult, boxes=boxes, image_sizes=image_sizes)
    return game.result()


# ---------------------------------------------------------------------------------------- segmentation
def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Average precision ``sum_k (R_k - R_{k-1}) P_k`` over the distinct score thresholds, descending (as
    ``sklearn.metrics.average_precision_score``); 0 when there is no positive label."""
    scores, labels = scores.reshape(-1).double(), labels.reshape(-1).double()
    positives = labels.sum()
    order = torch.argsort(scores, descending=True, stable=True)
    sorted_scores, true_positives = scores[order], labels[order].cumsum(0)
    group_end = torch.ones_like(sorted_scores, dtype=torch.bool)
    group_end[:-1] = sorted_scores[1:] != sorted_scores[:-1]
    tp = true_positives[group_end]
    predicted = torch.arange(1, scores.numel() + 1, dtype=torch.float64, device=scores.device)[group_end]
    recall = tp / positives
    recall_step = recall - torch.cat([recall.new_zeros(1), recall[:-1]])
    precision_sum = (recall_step * tp / predicted).sum()
    return torch.where(positives > 0, precision_sum, torch.zeros_like(precision_sum))   # no positive: 0, not NaN


@dataclass
class SegmentationResult(MetricResult):
    """Pixel accuracy and IoU (background, foreground) pooled over the dataset, and per-image AP averaged."""

    metric: ClassVar[str] = "segmentation"
    higher_is_better: ClassVar[dict[str, bool]] = {"pixel_accuracy": True, "miou": True, "mean_ap": True}

    correct_pixels: int
    labelled_pixels: int
    intersection: torch.Tensor
    union: torch.Tensor
    average_precisions: torch.Tensor

    @property
    def pixel_accuracy(self) -> float:
        return self.correct_pixels / self.labelled_pixels if self.labelled_pixels else math.nan

    @property
    def iou(self) -> torch.Tensor:
        """IoU of background (0) and foreground (1); a class absent from both prediction and truth gives NaN."""
        return self.intersection.double() / self.union.double()

    @property
    def miou(self) -> float:
        return self.iou.mean().item()

    @property
    def mean_ap(self) -> float:
        return self.average_precisions.mean().item() if self.average_precisions.numel() else math.nan

    def summary(self) -> dict[str, float]:
        return {"pixel_accuracy": self.pixel_accuracy, "miou": self.miou, "mean_ap": self.mean_ap}


def _class_overlaps(foreground: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel counts ``[..., 2]`` (background, foreground) of the intersection and the union of a thresholded map
    and a boolean mask, both ``[..., H, W]``."""
    predicted, truth = torch.stack([~foreground, foreground], -3), torch.stack([~truth, truth], -3)
    return (predicted & truth).sum(dim=(-2, -1)), (predicted | truth).sum(dim=(-2, -1))


class SegmentationScores:
    """Saliency as segmentation (Chefer et al. 2021, ``imagenet_seg_eval.py``), streamed over a dataset.

    Each map is bilinear-resized to its mask, min-max normalised and thresholded at its own mean (foreground where
    ``map > mean``). Correct pixels, and per class (background 0, foreground 1) intersections and unions are summed
    over all images; ``pixel_accuracy = correct / labelled`` and ``mIoU`` = mean of the two pooled IoUs. AP is per
    image on the unthresholded map: ``ap_average="macro"`` (Chefer: mean of the foreground AP scored by the map and
    the background AP scored by ``1 - map``) or ``"foreground"``; ``mean_ap`` averages it over images.
    """

    def __init__(self, ap_average: str = "macro"):
        if ap_average not in ("macro", "foreground"):
            raise ValueError(f"ap_average must be 'macro' or 'foreground', got {ap_average!r}")
        self.ap_average = ap_average
        self._correct = torch.zeros((), dtype=torch.long)   # counts follow the maps' device
        self._labelled = 0
        self._intersection = torch.zeros(2, dtype=torch.long)
        self._union = torch.zeros(2, dtype=torch.long)
        self._aps: list[torch.Tensor] = []

    def update(self, saliency, masks) -> torch.Tensor:
        """Add ``n`` images: maps ``[n,1,h,w]``/``[n,h,w]`` or a list of ``[h,w]``; masks ``[n,H,W]`` or a list of
        ``[H,W]`` (nonzero = foreground). Returns the images' APs ``[n]``."""
        if len(saliency) != len(masks):
            raise ValueError(f"got {len(saliency)} saliency maps and {len(masks)} masks")
        aps = []
        for index in range(len(saliency)):
            mask = _as_mask(masks[index], index)
            saliency_map = minmax_normalize(_resized(_as_map(saliency, index), tuple(mask.shape))[None])[0]
            mask = mask.to(saliency_map.device)
            foreground = saliency_map > saliency_map.mean()
            self._correct = self._correct.to(mask.device) + (foreground == mask).sum()
            self._labelled += mask.numel()
            intersection, union = _class_overlaps(foreground, mask)
            self._intersection = self._intersection.to(mask.device) + intersection
            self._union = self._union.to(mask.device) + union
            ap = average_precision(saliency_map, mask)
            if self.ap_average == "macro":
                ap = (ap + average_precision(1 - saliency_map, ~mask)) / 2
            aps.append(ap)
        self._aps += aps
        return torch.stack(aps) if aps else torch.empty(0, dtype=torch.float64)

    def result(self) -> SegmentationResult:
        return SegmentationResult(
            correct_pixels=int(self._correct), labelled_pixels=self._labelled, intersection=self._intersection.clone(),
            union=self._union.clone(),
            average_precisions=torch.stack(self._aps) if self._aps else torch.empty(0, dtype=torch.float64))


def segmentation_scores(saliency, masks, ap_average: str = "macro") -> SegmentationResult:
    """One-call :class:`SegmentationScores` over all images."""
    scores = SegmentationScores(ap_average=ap_average)
    scores.update(saliency, masks)
    return scores.result()


def per_image_segmentation_iou(saliency: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per image ``[n, 2]`` IoU of background and foreground of each map thresholded at its own mean, the map
    treated as :class:`SegmentationScores` treats it (bilinear resize to the mask in float64, min-max, ``map >
    mean``) but batched and without AP; ``.mean(1)`` is each image's mIoU. NaN where a class is absent from both
    the prediction and the mask. ``saliency`` ``[n,1,h,w]`` or ``[n,h,w]``; ``masks`` ``[n,H,W]`` (nonzero =
    foreground)."""
    if saliency.ndim == 4 and saliency.shape[1] == 1:
        saliency = saliency[:, 0]
    if saliency.ndim != 3 or masks.ndim != 3 or len(saliency) != len(masks):
        raise ValueError(f"need maps [n,1,h,w] or [n,h,w] and masks [n,H,W] of the same n, got "
                         f"{tuple(saliency.shape)} and {tuple(masks.shape)}")
    maps = minmax_normalize(upsample(saliency.detach().double()[:, None], tuple(masks.shape[-2:])))[:, 0]
    foreground = maps > maps.mean(dim=(1, 2), keepdim=True)
    intersection, union = _class_overlaps(foreground, masks.to(maps.device) != 0)
    return intersection.double() / union.double()


@register_metric("pointing-game", category="localisation", result=PointingGameResult, ground_truth=("masks", "boxes"),
                 paper="Zhang, Bargal, Lin, Brandt, Shen & Sclaroff, Top-down Neural Attention by Excitation Backprop, "
                       "ECCV 2016")
def _pointing_game_metric(model, inputs, saliency, targets=None, **options) -> PointingGameResult:
    """:func:`pointing_game` in the registry's order; ``model`` is not used. ``targets`` (an int or one per image)
    are the classes of the class-averaged accuracy; the ground truth is ``masks=`` or ``boxes=``, boxes in pixels
    of ``inputs`` (whose size is the default of ``image_sizes``)."""
    if "boxes" in options:
        options.setdefault("image_sizes", [tuple(inputs.shape[-2:])] * len(saliency))
    classes = None if targets is None else one_per_sample(targets, len(saliency))
    return pointing_game(saliency, classes=classes, **options)


@register_metric("segmentation", category="localisation", result=SegmentationResult, ground_truth=("masks",),
                 paper="Chefer, Gur & Wolf, Transformer Interpretability Beyond Attention Visualization, CVPR 2021 "
                       "(ImageNet-Segmentation protocol)")
def _segmentation_metric(model, inputs, saliency, targets=None, *, masks, **options) -> SegmentationResult:
    """:func:`segmentation_scores` of ``saliency`` against ``masks=``; ``model``, ``inputs`` and ``targets`` are not
    used (the masks outline the explained class)."""
    return segmentation_scores(saliency, masks, **options)
