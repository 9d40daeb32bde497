"""Energy-based pointing game and boundary F-score on constructed maps whose answers are known by hand."""
from __future__ import annotations

import pytest
import torch

from xaiimg.metrics import boundary_f_score, energy_pointing_game, get_metric
from xaiimg.metrics.detail import region_boundary


def square(size: int, top: int, left: int, side: int) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[top:top + side, left:left + side] = True
    return mask


def as_map(mask: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    return (mask.double() * scale)[None, None]


# ------------------------------------------------------------------------------------------- energy pointing
def test_energy_of_a_map_inside_the_mask_is_one_and_outside_zero():
    mask = square(20, 5, 5, 8)
    inside = energy_pointing_game(as_map(square(20, 6, 6, 4)), mask[None])
    outside = energy_pointing_game(as_map(square(20, 15, 15, 3)), mask[None])
    assert inside.energy_inside.tolist() == [1.0] and outside.energy_inside.tolist() == [0.0]


def test_energy_of_a_uniform_map_is_the_mask_area_and_halves_split_evenly():
    mask = square(20, 0, 0, 10)                                       # 100 of 400 pixels
    uniform = energy_pointing_game(torch.ones(1, 1, 20, 20), mask[None])
    assert uniform.energy_inside.item() == pytest.approx(0.25, abs=1e-12)
    half = torch.zeros(1, 1, 20, 20)
    half[0, 0, 0, 0], half[0, 0, 19, 19] = 3.0, 3.0                   # one peak in, one out
    assert energy_pointing_game(half, mask[None]).energy_inside.item() == pytest.approx(0.5, abs=1e-12)


def test_energy_resizes_the_map_and_scores_a_flat_zero_map_as_zero():
    mask = square(32, 0, 0, 16)
    small = torch.zeros(1, 1, 8, 8)
    small[..., :4, :4] = 1.0
    assert energy_pointing_game(small, mask[None]).energy_inside.item() > 0.9
    assert energy_pointing_game(torch.zeros(1, 1, 8, 8), mask[None]).energy_inside.tolist() == [0.0]


@pytest.mark.parametrize("bad,message", [(torch.full((1, 1, 4, 4), float("nan")), "NaN"),
                                         (-torch.ones(1, 1, 4, 4), "non-negative"),
                                         (torch.ones(1, 4, 4), r"\[B,1,H,W\]")])
def test_energy_rejects_bad_maps(bad, message):
    with pytest.raises(ValueError, match=message):
        energy_pointing_game(bad, torch.ones(1, 4, 4, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------- boundary F
def test_region_boundary_of_a_square_is_its_outline():
    boundary = region_boundary(square(8, 2, 2, 4)[None])[0]
    expected = square(8, 2, 2, 4) & ~square(8, 3, 3, 2)
    assert torch.equal(boundary, expected) and int(boundary.sum()) == 12


def test_boundary_f_is_one_for_the_mask_itself_and_within_tolerance():
    mask = square(40, 10, 10, 16)
    assert boundary_f_score(as_map(mask), mask[None]).f_score.tolist() == [1.0]
    shifted = square(40, 11, 12, 16)                                  # 1-2 px off: inside a 2 px tolerance
    assert boundary_f_score(as_map(shifted), mask[None], tolerance=2).f_score.tolist() == [1.0]
    exact = boundary_f_score(as_map(shifted), mask[None], tolerance=0)
    assert 0.0 < exact.f_score.item() < 0.6


def test_boundary_precision_and_recall_by_hand():
    """Truth: a 10x10 square (36 boundary pixels). Prediction: the same square and a far 4x4 blob (12 boundary
    pixels): every true boundary pixel is found (recall 1), 36 of 48 predicted ones are true (precision 0.75)."""
    truth = square(40, 2, 2, 10)
    predicted = truth | square(40, 30, 30, 4)
    result = boundary_f_score(as_map(predicted), truth[None], tolerance=1)
    assert result.recall.item() == 1.0 and result.precision.item() == pytest.approx(36 / 48)
    assert result.f_score.item() == pytest.approx(2 * 0.75 / 1.75)


def test_a_coarse_blob_scores_lower_than_a_sharp_map_and_a_flat_map_scores_zero():
    """A sharp map of a small object against the same object blurred to a 4x coarser grid and back: finer detail
    gives a higher boundary F (what the thesis's "higher resolution" claim predicts)."""
    truth = square(64, 20, 28, 10) | square(64, 40, 10, 6)
    sharp = as_map(truth)
    coarse = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(sharp, 16), size=(64, 64),
                                             mode="bilinear", align_corners=False)
    sharp_f = boundary_f_score(sharp, truth[None]).f_score.item()
    coarse_f = boundary_f_score(coarse, truth[None]).f_score.item()
    assert sharp_f == 1.0 and coarse_f < 0.5
    assert boundary_f_score(torch.ones(1, 1, 64, 64), truth[None]).f_score.tolist() == [0.0]


def test_registered_detail_metrics_take_the_uniform_order_and_declare_their_direction():
    mask = square(16, 4, 4, 6)[None]
    maps = as_map(mask[0])
    for name, score in (("energy-pointing-game", "energy_inside"), ("boundary-f-score", "boundary_f")):
        metric = get_metric(name)
        assert metric.category == "localisation" and metric.higher_is_better[score] is True
        assert metric.ground_truth == ("masks",) and not metric.per_image
        assert metric(None, torch.zeros(1, 3, 16, 16), maps, masks=mask).summary()[score] == 1.0
