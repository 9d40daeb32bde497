"""Positive / negative perturbation (Chefer et al.): hand-computed AUCs, normalisation handling, batching."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from xaiimg.metrics import positive_negative_perturbation
from xaiimg.models.zoo import ModelSpec, attach_spec
from xaiimg.passes import count_passes

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def spec(num_classes: int = 2) -> ModelSpec:
    return ModelSpec(name="toy", input_size=10, resize_size=10, interpolation="bilinear", mean=MEAN, std=STD,
                     default_layer="", layer_reason="", class_names=[f"c{i}" for i in range(num_classes)])


class MajorityKeptModel(nn.Module):
    """Class 0 when more than half of ``region``'s pixels are nonzero in [0,1] space (not removed), else class 1."""

    def __init__(self, region: torch.Tensor):
        super().__init__()
        self.register_buffer("region", region)

    def forward(self, x):
        mean = torch.tensor(MEAN, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(STD, dtype=x.dtype).view(1, 3, 1, 1)
        kept = ((x * std + mean).abs() > 1e-6).all(dim=1) & self.region
        fraction = kept.flatten(1).sum(1).double() / self.region.sum()
        return torch.stack([fraction - 0.5, torch.zeros_like(fraction)], dim=1)


class ConstantModel(nn.Module):
    def __init__(self, label: int, num_classes: int = 3):
        super().__init__()
        self.label, self.num_classes = label, num_classes

    def forward(self, x):
        return nn.functional.one_hot(torch.full((x.shape[0],), self.label), self.num_classes).double()


def images(batch: int, size: int = 10, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    unit = 0.2 + 0.8 * torch.rand(batch, 3, size, size, generator=generator, dtype=torch.float64)
    return (unit - channels(MEAN)) / channels(STD)


def channels(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).view(1, 3, 1, 1)


def scattered_region(pixels: int, size: int = 10, seed: int = 1) -> torch.Tensor:
    region = torch.zeros(size * size, dtype=torch.bool)
    region[torch.randperm(size * size, generator=torch.Generator().manual_seed(seed))[:pixels]] = True
    return region.view(1, size, size)


def test_hand_computed_aucs():
    """100 pixels, region of 45, map = region. Positive removes the region first: class kept while fewer than 22.5
    region pixels are gone -> correct at p = 0, .1, .2 -> AUC = 100 * .1 * (1/2 + 1 + 1) = 25. Negative removes the
    55 others first -> correct up to p = .7 -> AUC = 100 * .1 * (1/2 + 7) = 75. Overall 50."""
    region = scattered_region(45)
    model = attach_spec(MajorityKeptModel(region), spec())
    result = positive_negative_perturbation(model, images(1), region.double().unsqueeze(1))
    assert result.positive_correct[0].tolist() == [True] * 3 + [False] * 7
    assert result.negative_correct[0].tolist() == [True] * 8 + [False] * 2
    assert result.positive_auc == pytest.approx(25.0)
    assert result.negative_auc == pytest.approx(75.0)
    assert result.overall == pytest.approx(50.0)
    assert result.fractions.tolist() == pytest.approx([0, .1, .2, .3, .4, .5, .6, .7, .8, .9])


def test_constant_accuracy_model():
    """A model that always answers class 2: accuracy 1 at every fraction vs label 2 (AUC = 90), 0 vs label 0."""
    model = ConstantModel(2)
    x, saliency = images(2), torch.rand(2, 1, 5, 5, dtype=torch.float64)
    right = positive_negative_perturbation(model, x, saliency, labels=[2, 2], reference="label", mean=MEAN, std=STD)
    wrong = positive_negative_perturbation(model, x, saliency, labels=[0, 0], reference="label", mean=MEAN, std=STD)
    predicted = positive_negative_perturbation(model, x, saliency, mean=MEAN, std=STD)
    assert right.positive_auc == pytest.approx(90.0) and right.negative_auc == pytest.approx(90.0)
    assert wrong.positive_auc == 0.0 and wrong.negative_auc == 0.0 and wrong.overall == 0.0
    assert predicted.positive_auc == pytest.approx(90.0) and predicted.classes.tolist() == [2, 2]


def test_pixels_removed_are_zero_in_unit_space_all_channels():
    """Record the perturbed inputs: int(p*H*W) pixels (top of the map, stable ties) are 0 in [0,1] space."""
    seen = []

    class Recorder(nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return torch.zeros(x.shape[0], 2, dtype=x.dtype)

    x = images(1, size=10)
    saliency = torch.zeros(1, 1, 10, 10, dtype=torch.float64)  # all ties: raster order decides
    positive_negative_perturbation(attach_spec(Recorder(), spec()), x, saliency, fractions=[0.3], batch_size=100)
    perturbed = torch.cat(seen)[1:]  # [positive, negative]
    unit = perturbed * channels(STD) + channels(MEAN)
    removed = (unit.abs() < 1e-12).all(dim=1).flatten(1)
    expected = torch.zeros(100, dtype=torch.bool)
    expected[:30] = True
    assert torch.equal(removed[0], expected) and torch.equal(removed[1], expected)  # -map has the same ties
    assert torch.allclose(perturbed[0].flatten(1)[:, 30:], x[0].flatten(1)[:, 30:], atol=1e-12)


def test_unit_space_input_and_batching_give_the_same_answer():
    region = scattered_region(45)
    model = attach_spec(MajorityKeptModel(region), spec())
    x = images(3, seed=4)
    saliency = torch.rand(3, 1, 10, 10, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x_before = x.clone()
    reference = positive_negative_perturbation(model, x, saliency, batch_size=1)
    for size in (4, 1000):
        other = positive_negative_perturbation(model, x, saliency, batch_size=size)
        assert torch.equal(other.positive_correct, reference.positive_correct)
        assert torch.equal(other.negative_correct, reference.negative_correct)
    unit = model.spec.to_unit_range(x)
    from_unit = positive_negative_perturbation(model, unit, saliency, input_space="unit",
                                               normalize=model.spec.from_unit_range)
    assert torch.equal(from_unit.positive_correct, reference.positive_correct)
    assert torch.equal(x, x_before)
    with count_passes(model) as log:
        positive_negative_perturbation(model, x, saliency, batch_size=8)
    assert log.images_forwarded == 3 + 2 * 9 * 3 and max(log.forward_batches) == 8


def test_bad_inputs():
    model = ConstantModel(1)
    x, saliency = images(2), torch.rand(2, 1, 10, 10)
    with pytest.raises(ValueError, match="needs labels"):
        positive_negative_perturbation(model, x, saliency, reference="label", mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="has no spec"):
        positive_negative_perturbation(model, x, saliency)
    with pytest.raises(ValueError, match="fractions"):
        positive_negative_perturbation(model, x, saliency, fractions=[0.5, 0.2], mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="got 3 labels for 2"):
        positive_negative_perturbation(model, x, saliency, labels=[1, 1, 1], reference="label", mean=MEAN, std=STD)
