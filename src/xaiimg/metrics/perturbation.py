"""Positive and negative perturbation (Chefer, Gur & Wolf, CVPR 2021, ``pertubation_eval_from_hdf5.py``).

At each fraction ``p`` of ``0.1..0.9`` the ``int(p*H*W)`` most salient pixels (positive) or least salient pixels
(negative: the same ranking of the negated map) are set to 0 in ``[0,1]`` image space, all channels, and the image
is normalised again. Each point scores top-1 correctness against the class predicted on the unperturbed image
(``reference="predicted"``) or a given label (``reference="label"``). With the unperturbed accuracy at ``x=0``,
``AUC = trapz(accuracy, x=[0, 0.1, ..., 0.9]) * 100``. Lower positive AUC and higher negative AUC are better;
``overall = AUC(negative) - AUC(positive)``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from xaiimg.metrics._common import (
    as_index_tensor,
    check_metric_inputs,
    forward_in_chunks,
    one_per_sample,
    prepare_saliency,
    score_jobs,
)
from xaiimg.metrics.registry import register_metric
from xaiimg.metrics.results import MetricResult
from xaiimg.nn import preserved_state
from xaiimg.ops import stable_descending_order

CHEFER_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class PerturbationResult(MetricResult):
    """Per-sample correctness ``[B, F+1]`` (column 0 unperturbed) for both polarities, accuracy curves, AUCs."""

    metric: ClassVar[str] = "positive_negative_perturbation"
    higher_is_better: ClassVar[dict[str, bool]] = {"positive_auc": False, "negative_auc": True, "overall": True}

    reference: str
    fractions: torch.Tensor
    classes: torch.Tensor
    positive_correct: torch.Tensor
    negative_correct: torch.Tensor

    @property
    def positive_accuracy(self) -> torch.Tensor:
        return self.positive_correct.double().mean(dim=0)

    @property
    def negative_accuracy(self) -> torch.Tensor:
        return self.negative_correct.double().mean(dim=0)

    @property
    def positive_auc(self) -> float:
        return torch.trapezoid(self.positive_accuracy, self.fractions).item() * 100

    @property
    def negative_auc(self) -> float:
        return torch.trapezoid(self.negative_accuracy, self.fractions).item() * 100

    @property
    def overall(self) -> float:
        return self.negative_auc - self.positive_auc

    def summary(self) -> dict[str, float]:
        return {"positive_auc": self.positive_auc, "negative_auc": self.negative_auc, "overall": self.overall}

    def per_sample(self) -> dict[str, list[float]]:
        """Each image's AUCs of its own correctness curve (the trapezoid is linear: they average to the AUCs)."""
        positive = torch.trapezoid(self.positive_correct.double(), self.fractions, dim=1) * 100
        negative = torch.trapezoid(self.negative_correct.double(), self.fractions, dim=1) * 100
        return {"positive_auc": positive.tolist(), "negative_auc": negative.tolist(),
                "overall": (negative - positive).tolist()}

    def to_dict(self) -> dict:
        return {**super().to_dict(), "positive_accuracy": self.positive_accuracy.tolist(),
                "negative_accuracy": self.negative_accuracy.tolist()}


def _unit_range_maps(model: nn.Module, mean, std) -> tuple[Callable, Callable]:
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither (then model.spec's are used)")
    if mean is not None:
        def shape(values, like):
            return torch.as_tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)

        def to_unit(x):
            return x * shape(std, x) + shape(mean, x)

        def from_unit(image):
            return (image - shape(mean, image)) / shape(std, image)

        return to_unit, from_unit
    spec = getattr(model, "spec", None)
    if spec is None:
        raise ValueError("the model has no spec; pass mean= and std= of its input normalisation, "
                         "or input_space='unit' with normalize=")
    return spec.to_unit_range, spec.from_unit_range


def positive_negative_perturbation(model: nn.Module, x: torch.Tensor, saliency: torch.Tensor,
                                   labels: Sequence[int] | torch.Tensor | None = None,
                                   reference: str = "predicted", fractions: Sequence[float] = CHEFER_FRACTIONS,
                                   input_space: str = "normalized", mean=None, std=None,
                                   normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
                                   batch_size: int = 64, progress: bool = False) -> PerturbationResult:
    """Chefer et al.'s positive/negative perturbation test (see the module docstring).

    ``x``: model inputs (``input_space="normalized"``; undone and redone with ``mean``/``std`` or ``model.spec``)
    or images in ``[0,1]`` (``input_space="unit"``; ``normalize`` maps them to model inputs, identity if ``None``).
    ``saliency``: ``[B,1,h,w]``, bilinear-resized to the image. ``reference``: ``"predicted"`` (argmax on the
    unperturbed image) or ``"label"`` (``labels`` required). Pixels removed at fraction ``p``: ``int(p*H*W)``.
    Forwards: ``B`` unperturbed plus ``2*F*B`` perturbed, batched across samples, fractions and polarities.
    """
    check_metric_inputs(model, x, None, batch_size)
    if reference not in ("predicted", "label"):
        raise ValueError(f"reference must be 'predicted' or 'label', got {reference!r}")
    if reference == "label" and labels is None:
        raise ValueError("reference='label' needs labels (one class index per image)")
    fraction_values = [float(p) for p in fractions]
    if not fraction_values or any(not 0 < p < 1 for p in fraction_values) or sorted(fraction_values) != fraction_values:
        raise ValueError(f"fractions must be increasing values in (0, 1), got {list(fractions)}")
    if input_space == "normalized":
        to_unit, from_unit = _unit_range_maps(model, mean, std)
    elif input_space == "unit":
        to_unit, from_unit = (lambda image: image), (normalize or (lambda image: image))
    else:
        raise ValueError(f"input_space must be 'normalized' or 'unit', got {input_space!r}")
    maps = prepare_saliency(saliency, x)
    x = x.detach()
    batch, _, height, width = x.shape
    num_pixels = height * width
    unit_images = to_unit(x)
    removed_counts = torch.tensor([int(num_pixels * p) for p in fraction_values], device=x.device)
    # rank[polarity, b, pixel]: position of the pixel in the removal order (positive: descending saliency;
    # negative: descending negated saliency), stable.
    orders = torch.stack([stable_descending_order(maps), stable_descending_order(-maps)])
    positions = torch.arange(num_pixels, device=x.device).expand_as(orders)
    rank = torch.empty_like(orders).scatter_(2, orders, positions)

    with preserved_state(model), torch.no_grad():
        model_input = x if input_space == "normalized" else from_unit(x)
        original_prediction = forward_in_chunks(model, model_input, batch_size).argmax(dim=-1)
        if reference == "label":
            classes = as_index_tensor(labels, batch, "labels", x.device)
        else:
            classes = original_prediction
        num_fractions = len(fraction_values)
        polarities = torch.arange(2, device=x.device).repeat_interleave(batch * num_fractions)
        samples = torch.arange(batch, device=x.device).repeat_interleave(num_fractions).repeat(2)
        counts = removed_counts.repeat(2 * batch)

        def build(chunk: slice) -> torch.Tensor:
            sample = samples[chunk]
            removed = (rank[polarities[chunk], sample] < counts[chunk].view(-1, 1)).view(-1, 1, height, width)
            return from_unit(unit_images[sample].masked_fill(removed, 0.0))

        def read(chunk: slice, logits: torch.Tensor) -> torch.Tensor:
            return logits.argmax(dim=-1) == classes[samples[chunk]]

        correct = score_jobs(model, polarities.numel(), build, read, batch_size, progress,
                             "positive/negative perturbation").view(2, batch, num_fractions)

    unperturbed = (original_prediction == classes).view(-1, 1)
    return PerturbationResult(
        reference=reference, fractions=torch.tensor([0.0, *fraction_values], dtype=torch.float64, device=x.device),
        classes=classes, positive_correct=torch.cat([unperturbed, correct[0]], dim=1),
        negative_correct=torch.cat([unperturbed, correct[1]], dim=1))


@register_metric("positive-negative-perturbation", category="faithfulness", result=PerturbationResult,
                 paper="Chefer, Gur & Wolf, Transformer Interpretability Beyond Attention Visualization, CVPR 2021")
def _perturbation_metric(model, inputs, saliency, targets=None, **options) -> PerturbationResult:
    """:func:`positive_negative_perturbation` in the registry's order. ``targets=None`` scores against the class
    predicted on the unperturbed image; given ``targets`` (an int or one per image) are the labels
    (``reference="label"``)."""
    if targets is None:
        return positive_negative_perturbation(model, inputs, saliency, **options)
    return positive_negative_perturbation(model, inputs, saliency, labels=one_per_sample(targets, len(inputs)),
                                          reference="label", **options)
