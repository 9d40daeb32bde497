"""The per-layer response measure and the Zeiler & Fergus projections of xaiimg.studies.layer_response: golden values
on constructed layers (a copy of a colour channel, a copy of the subject mask, units unrelated to the image), the
verdicts of the depth claims, and the receptive-field crops of a one-layer network whose projection is its filter."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from xaiimg.studies import layer_response as lr
from xaiimg.studies.reproduction import NOT_REPRODUCED, REPRODUCED


class PooledFeatures(nn.Module):
    """A 'network' whose layer ``pool`` averages ``features(x)`` over ``stride x stride`` cells."""

    def __init__(self, features, stride: int):
        super().__init__()
        self.features = features
        self.pool = nn.AvgPool2d(stride)

    def forward(self, x):
        return self.pool(self.features(x)).mean((2, 3))


def smooth_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=generator)
    fine = torch.rand(n, 3, size, size, generator=generator) * 0.2
    return (nn.functional.interpolate(coarse, size=(size, size), mode="bilinear") * 0.8 + fine).clamp(0, 1)


def rectangle_masks(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, 1, size, size, dtype=torch.bool)
    for mask in masks:
        top, left = torch.randint(0, size // 2, (2,), generator=generator).tolist()
        height, width = torch.randint(4, size // 2, (2,), generator=generator).tolist()
        mask[:, top:top + height, left:left + width] = True
    return masks


def test_a_layer_that_copies_a_colour_channel_has_colour_association_one():
    images = smooth_images(6)
    copy = PooledFeatures(lambda x: torch.cat([x[:, :1] - x[:, 1:2], x[:, 2:]], 1), stride=4)
    response = lr.layer_response(copy, images, images, stages={"only": "pool"}, top_units=1)
    assert response.grids["only"] == (8, 8)
    torch.testing.assert_close(response.matched["only"]["colour"], torch.ones(6, dtype=torch.float64), atol=1e-5,
                               rtol=0)
    assert (response.chance["only"]["colour"] < 0.9).all()          # another image's colour is not copied
    assert response.properties == ["colour", "saturation", "texture", "edges"]


def test_a_layer_that_copies_the_subject_mask_has_subject_association_one():
    masks = rectangle_masks(6)
    images = masks.float().expand(-1, 3, -1, -1).clone()            # the image is its own mask
    copy = PooledFeatures(lambda x: x[:, :1], stride=4)
    response = lr.layer_response(copy, images, images, masks=masks, stages={"only": "pool"}, top_units=1)
    torch.testing.assert_close(response.matched["only"]["subject"], torch.ones(6, dtype=torch.float64), atol=1e-5,
                               rtol=0)
    assert float(response.specific("only", "subject").mean()) > 0.3


def test_rank_correlations_are_spearman_with_ties_and_zero_for_constant_maps():
    generator = torch.Generator().manual_seed(1)
    activations = torch.randint(0, 4, (2, 3, 5, 5), generator=generator).float()   # many ties
    properties = torch.rand(2, 2, 5, 5, generator=generator)
    activations[1, 2] = 0.0                                                          # a dead channel
    rho = lr.rank_correlations(activations, properties)
    for b in range(2):
        for c in range(2):
            for k in range(2):
                expected = spearmanr(activations[b, c].flatten(), properties[b, k].flatten()).statistic
                assert rho[b, c, k].item() == pytest.approx(expected, abs=1e-6)
    assert rho[1, 2].tolist() == [0.0, 0.0]


def test_held_out_choice_removes_the_channel_count_bias_of_the_best_unit():
    """Units unrelated to the property: with 512 channels on a 4x4 grid the best unit per image correlates
    strongly by chance, the held-out association stays at 0; with one channel per image both are small."""
    generator = torch.Generator().manual_seed(0)
    properties = torch.rand(40, 1, 4, 4, generator=generator)
    many = lr.rank_correlations(torch.randn(40, 512, 4, 4, generator=generator), properties)
    assert float(many.abs().amax(1).mean()) > 0.7
    assert abs(float(lr.held_out_association(many, top_units=5).mean())) < 0.05


def test_held_out_association_uses_the_sign_chosen_on_the_other_images():
    correlations = torch.tensor([[[0.8], [-0.9]], [[0.5], [-0.8]], [[-0.2], [0.2]]], dtype=torch.float64)
    # unit 1 is the most consistent (negatively) on the other images of each image, so it is chosen with the sign -:
    # image 2 (means 0.65 and -0.85 on images 0, 1) scores -0.2 there; images 0 and 1 score 0.9 and 0.8
    assert lr.held_out_association(correlations, top_units=1).tolist() == pytest.approx([0.9, 0.8, -0.2])
    assert lr.held_out_association(correlations, top_units=2).tolist() == pytest.approx([0.85, 0.65, -0.2])


def constructed_response(deep_low_level: float, deep_subject: float, n: int = 12) -> lr.LayerResponse:
    noise = torch.linspace(-0.05, 0.05, n, dtype=torch.float64)
    shallow = {prop: 0.5 + noise for prop in lr.PROPERTIES}
    deep = {**{prop: deep_low_level + noise.flip(0) for prop in lr.LOW_LEVEL},
            "edges": deep_subject + noise, "subject": deep_subject + noise}
    zero = {prop: torch.zeros(n, dtype=torch.float64) for prop in lr.PROPERTIES}
    return lr.LayerResponse(matched={"shallow": shallow, "deep": deep}, chance={"shallow": zero, "deep": zero},
                            layers={"shallow": "a", "deep": "b"}, grids={"shallow": (8, 8), "deep": (2, 2)},
                            unit_correlations={}, top_units=3)


def test_claims_reproduced_when_depth_trades_colour_for_subject_and_not_when_reversed():
    agreeing = constructed_response(deep_low_level=0.1, deep_subject=0.9)
    claims = lr.layer_claims(agreeing, agreeing, "toy", "photos", "scenes")
    assert [c.id for c in claims] == ["aesthetic/layers-colour-texture", "aesthetic/layers-contours",
                                      "aesthetic/layers-subject"]
    assert [c.verdict for c in claims] == [REPRODUCED] * 3
    assert claims[0].mean == pytest.approx(-0.4) and claims[2].mean == pytest.approx(0.4)
    assert claims[0].note.endswith("Highest at shallow (a): 0.50; at deep: 0.10.")
    assert claims[2].note.endswith("Highest at deep (b): 0.90.")
    reversed_ = constructed_response(deep_low_level=0.9, deep_subject=0.1)
    assert [c.verdict for c in lr.layer_claims(reversed_, reversed_, "toy", "p", "s")] == [NOT_REPRODUCED] * 3
    rows = lr.response_table({"scenes": agreeing})
    assert len(rows) == 2 * len(lr.PROPERTIES)
    assert {r["n"] for r in rows} == {12} and all(r["ci_low"] <= r["mean"] <= r["ci_high"] for r in rows)


def test_property_maps_golden_values():
    image = torch.zeros(1, 3, 32, 32)
    image[:, 0, :, :16] = 1.0                                    # left half pure red, right half black
    maps = lr.property_maps(image, (1, 2))
    assert maps["colour"][0, :, 0].tolist() == [[1.0, 0.0], [0.5, 0.0]]   # R-G and (R+G)/2-B per half
    assert maps["saturation"][0, 0, 0].tolist() == [1.0, 0.0]
    flat = lr.property_maps(torch.full((1, 3, 32, 32), 0.3), (2, 2))
    assert float(flat["texture"].abs().max()) < 1e-12 and float(flat["edges"].abs().max()) < 1e-12


@pytest.mark.parametrize("call, message", [
    (lambda m, x: lr.layer_response(m, x[:1], x[:1], stages={"only": "pool"}), "at least 2 images"),
    (lambda m, x: lr.layer_response(m, x, x[:, :, :16], stages={"only": "pool"}), "same shape"),
    (lambda m, x: lr.layer_response(m, x, x, masks=torch.ones(4, 1, 8, 8), stages={"only": "pool"}),
     "masks must have shape"),
    (lambda m, x: lr.layer_response(m, x, x, stages={"only": "missing"}), "missing"),
    (lambda m, x: lr.property_maps(x, (4, 4), properties=["subject"]), "needs masks"),
    (lambda m, x: lr.property_maps(x, (4, 4), properties=["shape"]), "unknown properties"),
    (lambda m, x: lr.property_maps(x[..., :8, :8], (4, 4)), "at least 10 pixels"),
    (lambda m, x: lr.held_out_association(torch.zeros(3, 2, 1), top_units=0), "top_units"),
])
def test_bad_input_is_named(call, message):
    model = PooledFeatures(lambda x: x, stride=4)
    with pytest.raises((ValueError, KeyError, AttributeError), match=message):
        call(model, smooth_images(4))


def test_top_activations_are_projected_back_to_the_filter_of_a_one_layer_network():
    """Conv 3x3 + ReLU: the deconvnet projection of a unit is its activation times the filter, placed on the
    unit's 3x3 receptive field, so a 3-pixel crop around the unit is exactly that."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten())
    patch = torch.rand(3, 3, 3)
    images = torch.zeros(5, 3, 12, 12)
    for index in range(5):
        images[index, :, 4 + index % 2:7 + index % 2, 5:8] = patch * (index + 1)   # brighter image, stronger unit
    channel = int(nn.functional.conv2d(patch[None], net[0].weight).flatten(1).argmax())
    (result,) = lr.top_activation_projections(net, images, images.clamp(0, 1), "1", channels=[channel], top=3,
                                              min_crop=3)
    assert result.images == [4, 3, 2] and result.crop == 3
    assert result.values == sorted(result.values, reverse=True)
    for rule in ("deconvnet", "guided"):       # one rectifier, at the unit itself: both rules give the filter
        for crop, value in zip(result.projection_crops[rule], result.values):
            torch.testing.assert_close(crop, value * net[0].weight[channel].detach())
    for crop, index in zip(result.image_crops, result.images):
        row, col = result.positions[result.images.index(index)]
        torch.testing.assert_close(crop, images[index, :, row - 1:row + 2, col - 1:col + 2].clamp(0, 1))


def test_contrast_normalised_keeps_sign_and_maps_zero_to_grey():
    projection = torch.zeros(3, 4, 4)
    projection[0, 0, 0], projection[1, 1, 1] = 2.0, -2.0
    shown = lr.contrast_normalised(projection, percentile=100)
    assert shown[0, 0, 0] == 1.0 and shown[1, 1, 1] == 0.0 and shown[2, 3, 3] == 0.5
    assert lr.contrast_normalised(torch.zeros(3, 2, 2)).unique().tolist() == [0.5]
    assert np.isclose(lr._mosaic(torch.rand(9, 3, 5, 5), tile=6).shape, (22, 22, 3)).all()


def test_following_units_rank_by_best_component_and_skip_excluded():
    response = constructed_response(0.1, 0.9)
    response.unit_correlations = {"deep": {"colour": torch.tensor([[0.1, 0.7], [0.5, 0.2], [0.6, -0.9]])}}
    assert lr.following_units(response, "deep", "colour", count=3) == [0, 2, 1]
    assert lr.following_units(response, "deep", "colour", exclude=[0]) == [2]


def test_figures_have_one_row_per_stage_and_one_line_per_property():
    rows = lr.response_table({"scenes": constructed_response(0.1, 0.9)})
    (axis,) = lr.response_profile_figure(rows).axes
    assert len(axis.lines) == len(lr.PROPERTIES) + 1 and axis.get_title() == "scenes (n=12)"  # + the zero line
    net = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.Flatten())
    images = smooth_images(4, size=16)
    results = lr.top_activation_projections(net, images, images, "1", channels=[0, 1], top=2)
    figure = lr.projection_figure({"a": results, "b": results[:1]}, {"a": ["x", "y"], "b": ["x"]})
    assert len(figure.axes) == 2 * 2 * 3 and [ax.get_title() for ax in figure.axes[1:3]] == ["deconvnet", "guided"]
