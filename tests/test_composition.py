"""Synthetic composition benchmark: known score function, masks, rendering, votes, determinism."""
from __future__ import annotations

import math

import pytest
import torch

from xaiimg.data.composition import (
    CompositionConfig,
    Scene,
    gaussian_votes,
    make_composition_set,
    render_scene,
    scene_score,
    scene_terms,
    shape_mask,
)
from xaiimg.models.zoo import ModelSpec

CONFIG = CompositionConfig(size=64)


def scene(**changes) -> Scene:
    values = dict(shape="disk", centre=(1 / 3, 2 / 3), radius=0.15, background_blur=1.0, subject_blur=0.0,
                  subject_luminance=0.8, background_luminance=0.2, subject_tint=(0.1, 0.0, -0.1),
                  background_tint=(0.0, 0.2, 0.0), texture_period=0.05, texture_angle=0.3)
    values.update(changes)
    return Scene(**values)


def test_score_is_the_documented_function_of_the_scene():
    best = scene()
    assert scene_terms(best, CONFIG) == {"placement": 1.0, "depth_of_field": 1.0, "contrast": 1.0}
    assert scene_score(best, CONFIG) == pytest.approx(10.0)
    centred = scene(centre=(0.5, 0.5), background_blur=0.5, subject_blur=0.5, subject_luminance=0.5,
                    background_luminance=0.35)
    distance = math.sqrt(2) / 6                                  # centre to (1/3, 1/3)
    placement = math.exp(-distance**2 / (2 * 0.08**2))
    terms = scene_terms(centred, CONFIG)
    assert terms["placement"] == pytest.approx(placement)
    assert terms["depth_of_field"] == pytest.approx(0.25)
    assert terms["contrast"] == pytest.approx(0.15 / 0.6)
    assert scene_score(centred, CONFIG) == pytest.approx(1 + 9 * (0.4 * placement + 0.35 * 0.25 + 0.25 * 0.25))
    worst = scene(centre=(0.15, 0.15), background_blur=0.0, subject_luminance=0.4, background_luminance=0.4)
    assert scene_score(worst, CONFIG) < 1.5


def test_gaussian_votes():
    scores = torch.tensor([1.0, 3.2, 5.5, 9.9])
    votes = gaussian_votes(scores, sd=1.0)
    assert votes.shape == (4, 10) and torch.allclose(votes.sum(1), torch.ones(4))
    assert votes.argmax(1).tolist() == [0, 2, 4, 9]              # peak at the bin nearest the score
    bins = torch.arange(1, 11, dtype=torch.float32)
    assert (votes[2] * bins).sum().item() == pytest.approx(5.5, abs=1e-6)  # symmetric around 5.5
    means = (gaussian_votes(torch.linspace(1, 10, 50)) * bins).sum(1)
    assert (means.diff() > 0).all()                              # monotone: ranks of scores are kept
    expected = torch.tensor([math.exp(-(i - 3.2) ** 2 / 2) for i in range(1, 11)])
    assert torch.allclose(votes[1], expected / expected.sum(), atol=1e-6)


def test_shape_masks():
    disk = shape_mask("disk", (0.5, 0.5), 0.25, 200)
    assert disk.sum().item() == pytest.approx(math.pi * 50**2, rel=0.01)
    diamond = shape_mask("diamond", (0.5, 0.5), 0.25, 200)
    assert diamond.sum().item() == pytest.approx(2 * 50**2, rel=0.02)
    triangle = shape_mask("triangle", (0.5, 0.5), 0.2, 200)      # equilateral, side r*sqrt(3): area 3*sqrt(3)/4 r^2
    assert triangle.sum().item() == pytest.approx(3 * math.sqrt(3) / 4 * 40**2, rel=0.03)
    rows = triangle.any(1).nonzero().flatten()
    assert (rows.min().item(), rows.max().item()) == (60, 118)      # rows 0.3 to 0.6 of 200: centre - r .. + r/2
    assert triangle[60].sum() > 60 and triangle[118].sum() < 5     # apex down: wide base on top
    assert not disk[0, 0] and disk[100, 100]
    with pytest.raises(ValueError, match="unknown shape"):
        shape_mask("hexagon", (0.5, 0.5), 0.2, 16)


def test_rendering_subject_and_background_blur():
    sharp = scene(background_blur=0.0)
    first, mask = render_scene(sharp, CONFIG, torch.Generator().manual_seed(1))
    second, mask2 = render_scene(sharp, CONFIG, torch.Generator().manual_seed(2))
    assert torch.equal(mask, mask2) and mask.shape == (1, 64, 64) and mask.dtype == torch.bool
    inside = mask.expand(3, -1, -1)
    assert torch.equal(first[inside], second[inside])            # a sharp subject does not depend on the background
    assert not torch.allclose(first[~inside], second[~inside])   # the background noise does
    assert first.min() >= 0 and first.max() <= 1
    assert first[inside].mean() > first[~inside].mean() + 0.4    # lighting: subject 0.8 vs background 0.2

    def high_frequency(image):
        return (image[:, :, 1:] - image[:, :, :-1]).abs()[~inside[:, :, 1:] & ~inside[:, :, :-1]].mean()

    blurred, _ = render_scene(scene(background_blur=1.0), CONFIG, torch.Generator().manual_seed(1))
    assert high_frequency(blurred) < 0.3 * high_frequency(first)


def test_set_is_seeded_and_consistent():
    first = make_composition_set(6, CONFIG, seed=3)
    again = make_composition_set(6, CONFIG, seed=3)
    other = make_composition_set(6, CONFIG, seed=4)
    assert torch.equal(first.images, again.images) and torch.equal(first.scores, again.scores)
    assert not torch.equal(first.images, other.images)
    assert first.images.shape == (6, 3, 64, 64) and first.masks.shape == (6, 1, 64, 64)
    assert torch.allclose(first.scores, torch.tensor([scene_score(s, CONFIG) for s in first.scenes]))
    assert ((first.scores >= 1) & (first.scores <= 10)).all()
    assert torch.allclose(first.distributions, gaussian_votes(first.scores, CONFIG.vote_sd))
    for image_mask, s in zip(first.masks, first.scenes):
        assert torch.equal(image_mask[0], shape_mask(s.shape, s.centre, s.radius, 64))
    spec = ModelSpec(name="t", input_size=64, resize_size=64, interpolation="bilinear", mean=(0.5,) * 3,
                     std=(0.5,) * 3, default_layer="x", layer_reason="")
    images, distributions = first.dataset(spec).tensors
    assert torch.allclose(images, first.images * 2 - 1) and torch.equal(distributions, first.distributions)


def test_bad_configuration_is_rejected():
    with pytest.raises(ValueError, match="sum to 1"):
        CompositionConfig(weights=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="size"):
        CompositionConfig(size=8)
    with pytest.raises(ValueError, match="n must be"):
        make_composition_set(0)
